"""The SSH relay endpoint (`/api/project/{p}/runs/{run}/ssh`) on a real SQLite database, with a
registered stream opener that points at an in-process TCP echo server: who is refused with
which status and message, that bytes go both ways, and that a relay the client closes closes
its stream (the SSH channel, on an SSH host)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from dstack.models.wire import utcnow
from dstack.server.app import GATE, install_error_handlers
from dstack.server.backends.base import Host
from dstack.server.backends.local import LocalBackend
from dstack.server.db import tables as t
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database
from dstack.server.routers import ssh_relay
from dstack.server.services.context import ServerContext
from dstack.server.services.crypto import hash_token

with warnings.catch_warnings():  # starlette would rather have httpx2 drive its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketDenialResponse

TOKEN, OUTSIDER = "tok-member", "tok-outsider"


class Echo:
    """A TCP echo server on its own loop thread (`bye` makes it hang up); counts the
    connections open right now."""

    def __init__(self) -> None:
        self.open = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._serve, daemon=True).start()
        self.ready.wait(5)

    def _serve(self) -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.open += 1
            try:
                while (data := await r.read(65536)) and data != b"bye":
                    w.write(data)
                    await w.drain()
            finally:
                self.open -= 1
                w.close()

        async def main() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            await asyncio.Event().wait()

        self.loop.run_until_complete(main())


def _rows(user_id: str, outsider_id: str, project_id: str, sshd_port: int) -> list[Any]:
    now = utcnow()
    inst = t.Instance(
        id=str(uuid.uuid4()), project_id=project_id, name="local-0", backend="local",
        status="busy", created_at=now, last_processed_at=now,
    )  # fmt: skip
    rows: list[Any] = [
        t.User(id=user_id, name="alice", token_hash=hash_token(TOKEN), created_at=now),
        t.User(id=outsider_id, name="bob", token_hash=hash_token(OUTSIDER), created_at=now),
        t.Project(id=project_id, name="main", owner_id=user_id, created_at=now),
        t.Member(project_id=project_id, user_id=user_id),
        inst,
    ]
    for name, status, job_status, ports in (
        ("web", "running", "running", {"10022": sshd_port}),
        ("gone", "terminated", "terminated", {"10022": sshd_port}),
        ("starting", "provisioning", "provisioning", {}),
        ("nossh", "running", "running", {}),
    ):
        run_id = str(uuid.uuid4())
        rows.append(
            t.Run(
                id=run_id, project_id=project_id, user_id=user_id, run_name=name, run_spec="{}",
                status=status, submitted_at=now, last_processed_at=now,
            )
        )  # fmt: skip
        rows.append(
            t.Job(
                id=str(uuid.uuid4()), project_id=project_id, run_id=run_id, run_name=name,
                job_name=f"{name}-0-0", job_spec="{}", status=job_status, instance_id=inst.id,
                job_runtime_data=json.dumps({"ports": ports}), submitted_at=now,
                last_processed_at=now,
            )
        )  # fmt: skip
    return rows


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[TestClient, Echo]]:
    echo = Echo()
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")

    async def setup() -> None:
        await migrate(db.engine)
        async with db.session() as s:
            user, outsider, project = (str(uuid.uuid4()) for _ in range(3))
            for row in _rows(user, outsider, project, echo.port):
                s.add(row)
                await s.flush()
            await s.commit()

    app = FastAPI(dependencies=GATE)  # the server's access gate, as create_app installs it
    install_error_handlers(app)
    ctx = ServerContext(settings=None, db=db, box=None)  # type: ignore[arg-type]

    class Loopback(LocalBackend):
        async def open_stream(self, host: Host, port: int) -> Any:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            echo.writers.append(writer)  # held here, so only the relay's close() can close it
            return reader, writer

    ctx.backends.shared.append(Loopback(tmp_path / "agent", "main"))
    app.state.ctx = ctx
    app.include_router(ssh_relay.router)
    with TestClient(app) as client:
        client.portal.call(setup)  # type: ignore[union-attr]
        yield client, echo


def _refusal(client: TestClient, path: str, token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connect = client.websocket_connect(path, headers=headers)
    with pytest.raises(WebSocketDenialResponse) as info, connect:
        pass
    response = info.value
    return response.status_code, response.json()["detail"][0]["msg"]


def test_refusals_say_why(relay: tuple[TestClient, Echo]) -> None:
    client, _ = relay
    assert _refusal(client, "/api/project/main/runs/web/ssh", None) == (
        403,
        "Missing bearer token: send `Authorization: Bearer <token>`",
    )
    assert _refusal(client, "/api/project/main/runs/web/ssh", "nope") == (403, "Invalid token")
    # Not a member: the same answer as for a project that does not exist (names do not leak).
    assert _refusal(client, "/api/project/main/runs/web/ssh", OUTSIDER) == (
        400,
        "Project main not found",
    )
    assert _refusal(client, "/api/project/other/runs/web/ssh") == (400, "Project other not found")
    assert _refusal(client, "/api/project/main/runs/nope/ssh") == (
        404,
        "Run nope not found in project main",
    )
    assert _refusal(client, "/api/project/main/runs/web/ssh?job_num=1") == (
        404,
        "Run web has no job 1 in replica 0",
    )
    assert _refusal(client, "/api/project/main/runs/gone/ssh") == (
        409,
        "Run gone is terminated; it no longer accepts SSH",
    )
    assert _refusal(client, "/api/project/main/runs/starting/ssh") == (
        409,
        "Job starting-0-0 of run starting is provisioning; SSH is available while it runs",
    )
    assert _refusal(client, "/api/project/main/runs/nossh/ssh") == (
        409,
        "Job nossh-0-0 of run nossh has no SSH server",
    )


def test_bytes_go_both_ways_and_a_client_close_closes_the_stream(
    relay: tuple[TestClient, Echo],
) -> None:
    client, echo = relay
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with client.websocket_connect("/api/project/main/runs/web/ssh", headers=headers) as ws:
        ws.send_bytes(b"SSH-2.0-test\r\n")
        assert ws.receive_bytes() == b"SSH-2.0-test\r\n"
        big = bytes(range(256)) * 1024
        ws.send_bytes(big)
        got = b""
        while len(got) < len(big):
            got += ws.receive_bytes()
        assert got == big
        assert echo.open == 1
        ws.close(1000)
        _wait(lambda: echo.open == 0, "the relayed stream to close after the client left")
        assert [w.is_closing() for w in echo.writers] == [True]


def test_the_job_side_closing_ends_the_websocket(relay: tuple[TestClient, Echo]) -> None:
    client, echo = relay
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with client.websocket_connect("/api/project/main/runs/web/ssh", headers=headers) as ws:
        ws.send_bytes(b"x")
        assert ws.receive_bytes() == b"x"
        ws.send_bytes(b"bye")  # the job's side closes the connection
        message = ws.receive()
        assert message["type"] == "websocket.close"


def test_an_empty_message_half_closes_and_the_answer_still_arrives(
    relay: tuple[TestClient, Echo],
) -> None:
    client, echo = relay
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with client.websocket_connect("/api/project/main/runs/web/ssh", headers=headers) as ws:
        ws.send_bytes(b"last words")
        ws.send_bytes(b"")  # end of input: the echo server sees EOF, answers, hangs up
        got = b""
        while (message := ws.receive())["type"] == "websocket.send":
            got += message["bytes"]
        assert got == b"last words"
        assert message["type"] == "websocket.close"
        _wait(lambda: echo.open == 0, "the stream to close")


def _wait(predicate: Any, what: str, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
