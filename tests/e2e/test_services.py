"""Services behind the server's proxy, end to end: a real server, the local backend running
the test app (`apps/svc_app.py`) as processes on 127.0.0.1, and real HTTP and WebSocket
clients."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from .harness import Server, wait_until
from .services_util import (
    apply_detached,
    auth,
    proxy_url,
    service,
    service_dir,
    wait_serving,
)


@pytest.fixture(scope="module")
def web(srv: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One running service shared by the tests that only send it requests."""
    d = service_dir(tmp_path_factory.mktemp("web"))
    apply_detached(srv, d, "web", service("web", env={"APP_NAME": "web"}))
    wait_serving(srv, "web")
    return "web"


def test_reachable_with_a_token_and_refused_without(srv: Server, web: str):
    r = httpx.get(proxy_url(srv, web, "hello?x=1"), headers=auth(srv))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["app"] == "web"
    assert body["path"] == "/hello?x=1"  # the prefix is stripped, the query kept
    assert body["authorization"] is None  # the service does not see the user's token
    assert body["forwarded_prefix"] == "/proxy/services/main/web"
    r = httpx.get(proxy_url(srv, web, "hello"))
    assert r.status_code == 403
    assert "bearer" in r.text.lower()
    r = httpx.get(proxy_url(srv, web, "hello"), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403
    # Opting in forwards the token.
    r = httpx.get(
        proxy_url(srv, web, "x"),
        headers={**auth(srv), "X-Dstack-Forward-Authorization": "1"},
    )
    assert r.json()["authorization"] == f"Bearer {srv.token}"


def test_every_method_and_body(srv: Server, web: str):
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = httpx.request(method, proxy_url(srv, web, "echo"), headers=auth(srv), content=b"abc")
        assert r.status_code == 200, (method, r.text)
        assert r.json()["method"] == method
        assert r.json()["body"] == "abc"
    r = httpx.head(proxy_url(srv, web, "echo"), headers=auth(srv))
    assert r.status_code == 200

    def chunks():
        yield b"part1-"
        yield b"part2"

    r = httpx.post(proxy_url(srv, web, "echo"), headers=auth(srv), content=chunks())
    assert r.json()["body"] == "part1-part2"  # a chunked request body is streamed through


def test_bare_path_redirects_to_the_slash(srv: Server, web: str):
    r = httpx.get(f"{srv.url}/proxy/services/main/web", headers=auth(srv))
    assert r.status_code == 308
    assert r.headers["location"] == "/proxy/services/main/web/"


def test_streaming_response_arrives_chunk_by_chunk(srv: Server, web: str):
    arrivals = []
    with httpx.stream("GET", proxy_url(srv, web, "stream"), headers=auth(srv)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    # The app writes one event every 0.3 s: each arrives on its own, not all at the end.
    assert arrivals[-1] - arrivals[0] > 0.9


def test_websocket_echoes(srv: Server, web: str):
    from websockets.asyncio.client import connect

    async def talk() -> list[str]:
        url = proxy_url(srv, web, "ws").replace("http://", "ws://")
        async with connect(url, additional_headers=auth(srv)) as ws:
            out = []
            for msg in ("one", "two"):
                await ws.send(msg)
                out.append(await ws.recv())
            await ws.send(b"\x00\x01")
            out.append(repr(await ws.recv()))
            return out

    assert asyncio.run(talk()) == ["echo:one", "echo:two", repr(b"echo:\x00\x01")]

    async def refused() -> None:
        url = proxy_url(srv, web, "ws").replace("http://", "ws://")
        async with connect(url) as ws:
            await ws.recv()

    with pytest.raises(Exception):  # noqa: B017 - no token: the handshake is refused
        asyncio.run(refused())


def test_unknown_service_is_404_naming_it(srv: Server):
    r = httpx.get(proxy_url(srv, "no-such-svc", "x"), headers=auth(srv))
    assert r.status_code == 404
    assert "no-such-svc" in r.text


def test_body_over_the_limit_is_413(srv: Server, web: str):
    big = b"x" * (1024 * 1024 + 10)
    r = httpx.post(proxy_url(srv, web, "echo"), headers=auth(srv), content=big)
    assert r.status_code == 413

    def chunks():
        for _ in range(20):
            yield b"y" * 65536

    r = httpx.post(proxy_url(srv, web, "echo"), headers=auth(srv), content=chunks())
    assert r.status_code == 413


def test_slow_replica_is_504_after_the_timeout(srv: Server, web: str):
    started = time.monotonic()
    r = httpx.get(proxy_url(srv, web, "slow"), headers=auth(srv), timeout=30)
    assert r.status_code == 504
    assert "3s" in r.text
    assert time.monotonic() - started < 5.5


def test_apply_prints_the_service_url(srv: Server, tmp_path: Path):
    d = service_dir(tmp_path)
    (d / "s.dstack.yml").write_text(service("printed", extra="model: fake-model\nprobes: []\n"))
    proc = srv.cli_popen("apply", "-f", "s.dstack.yml", "-y", cwd=d)
    try:
        out = wait_until(
            lambda: (text := proc.read()) and "Model fake-model is published at" in text and text,
            timeout=60,
            what="apply to print the URLs",
        )
    finally:
        proc.stop()
    assert "Service is published at:" in out
    assert f"{srv.url}/proxy/services/main/printed/" in out
    assert f"{srv.url}/proxy/models/main/" in out
    srv.api("/api/project/main/runs/stop", {"runs_names": ["printed"], "abort": True})


def test_stopped_service_is_404(srv: Server, tmp_path: Path):
    d = service_dir(tmp_path)
    apply_detached(srv, d, "gone", service("gone"))
    wait_serving(srv, "gone")
    srv.api("/api/project/main/runs/stop", {"runs_names": ["gone"], "abort": True})
    srv.wait_status("gone", "terminated", "failed", "done")
    wait_until(
        lambda: httpx.get(proxy_url(srv, "gone", "x"), headers=auth(srv)).status_code == 404,
        timeout=10,
        what="the stopped service to disappear",
    )
    assert json.loads(srv.cli("ps", "--json").stdout)


def test_replica_that_resets_is_502_and_marked_unhealthy(srv: Server, web: str):
    import sqlite3

    r = httpx.get(proxy_url(srv, web, "reset"), headers=auth(srv), timeout=30)
    assert r.status_code == 502
    assert "web" in r.text
    db = sqlite3.connect(srv.server_dir / "data" / "sqlite.db")
    try:
        rows = db.execute(
            "SELECT unhealthy_at FROM jobs WHERE run_name = 'web' AND status = 'running'"
        ).fetchall()
    finally:
        db.close()
    assert rows and rows[0][0] is not None
    events = srv.api("/api/events/list", {"target_name": "web-0-0", "limit": 100}).json()
    assert any("out of rotation" in e["message"] for e in events)
    # Out of rotation for the cooldown (5 s here), then it serves again: the request is held.
    r = httpx.get(proxy_url(srv, web, "after"), headers=auth(srv), timeout=30)
    assert r.status_code == 200


def test_rate_limit_answers_429_over_the_limit(srv: Server, tmp_path: Path):
    d = service_dir(tmp_path)
    extra = (
        "rate_limits:\n  - prefix: /limited\n    rps: 1\n    burst: 2\n"
        "  - prefix: /by-key\n    rps: 1\n    key:\n      type: header\n      header: X-Key\n"
    )
    apply_detached(srv, d, "limited", service("limited", extra=extra))
    wait_serving(srv, "limited")
    codes = [
        httpx.get(proxy_url(srv, "limited", "limited/x"), headers=auth(srv)).status_code
        for _ in range(6)
    ]
    assert codes[:3] == [200, 200, 200]  # 1 + burst 2
    assert 429 in codes[3:]
    # Other paths are not limited; a header key limits each client on its own.
    assert httpx.get(proxy_url(srv, "limited", "free"), headers=auth(srv)).status_code == 200
    a = [
        httpx.get(
            proxy_url(srv, "limited", "by-key"), headers={**auth(srv), "X-Key": "a"}
        ).status_code
        for _ in range(2)
    ]
    b = httpx.get(proxy_url(srv, "limited", "by-key"), headers={**auth(srv), "X-Key": "b"})
    assert a == [200, 429] and b.status_code == 200
    srv.api("/api/project/main/runs/stop", {"runs_names": ["limited"], "abort": True})
