"""The server's background loops (reconcilers, sweepers) wait for the first answered request,
or for `BACKGROUND_GRACE` when no request comes; the request path opens the gate."""

from __future__ import annotations

import asyncio

from dstack.server import app as server_app


def test_loops_start_after_the_first_answer() -> None:
    async def go() -> list[str]:
        events: list[str] = []
        gate = asyncio.Event()

        async def loop() -> None:
            events.append("loop")

        task = asyncio.create_task(server_app._after(gate, loop))
        await asyncio.sleep(0.05)
        events.append("answered")
        gate.set()
        await asyncio.wait_for(task, 5)
        return events

    assert asyncio.run(go()) == ["answered", "loop"]


def test_loops_start_after_the_grace_without_requests(monkeypatch) -> None:
    monkeypatch.setattr(server_app, "BACKGROUND_GRACE", 0.05)

    async def go() -> bool:
        ran = asyncio.Event()
        gate = asyncio.Event()

        async def loop() -> None:
            ran.set()

        timer = asyncio.create_task(server_app._open_after_grace(gate))
        await asyncio.wait_for(server_app._after(gate, loop), 5)
        await timer
        return ran.is_set()

    assert asyncio.run(go())


def test_an_api_answer_opens_the_gate() -> None:
    calls: list[str] = []

    async def inner(scope, receive, send) -> None:  # noqa: ANN001
        calls.append(scope["type"])

    def opened() -> None:
        calls.append("open")

    middleware = server_app.ProxyMiddleware(inner, proxy=None, on_answer=opened)  # type: ignore[arg-type]

    async def go() -> None:
        await middleware({"type": "lifespan"}, None, None)
        await middleware({"type": "http", "path": "/api/users/get_my_user"}, None, None)

    asyncio.run(go())
    assert calls == ["lifespan", "http", "open"]
