"""The loopback HTTP client of the agent (server/agent_http.py) against small asyncio servers
that misbehave on purpose: closed kept-alive connections, silence, answers cut short."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from dstack.server.agent_client import AgentClient, AgentError, AgentUnreachableError
from dstack.server.agent_http import LoopbackHttp

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answer(status: int, payload: object, close: bool = False) -> bytes:
    body = json.dumps(payload).encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
    head += "Connection: close\r\n" if close else ""
    return head.encode() + b"\r\n" + body


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = 0
    for line in head.split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return head, await reader.readexactly(length)


async def serve(handler: Handler) -> tuple[asyncio.base_events.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def test_requests_reuse_a_connection_and_carry_token_params_and_body() -> None:
    seen: list[tuple[str, bytes]] = []
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(answer(200, {"n": len(seen)}))
        writer.close()

    async def main() -> None:
        server, url = await serve(handler)
        async with server, AgentClient(url, "tok") as client:
            await client.poll_logs("j1", 5)
            await client.stop_job("j1", abort=True)
        assert connections == 1
        head, body = seen[0]
        assert head.startswith("GET /api/jobs/j1/logs?offset=5 HTTP/1.1\r\n")
        assert "Authorization: Bearer tok\r\n" in head
        head, body = seen[1]
        assert head.startswith("POST /api/jobs/j1/stop HTTP/1.1\r\n")
        assert json.loads(body)["abort"] is True

    asyncio.run(main())


def test_a_connection_the_agent_closed_is_not_reused() -> None:
    """The agent answers and then closes (restarted, or said `Connection: close`): the next
    request opens a new connection instead of failing on the dead one."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(answer(200, {"ok": connections}))
        await writer.drain()
        writer.close()  # no Connection: close header: the client learns it from the stream

    async def main() -> None:
        server, url = await serve(handler)
        async with server:
            http = LoopbackHttp.for_url(url, {}, 5)
            assert http is not None
            assert (await http.request("GET", "/a"))[0] == 200
            await asyncio.sleep(0.05)  # the close reaches the client's event loop
            status, body = await http.request("GET", "/b")
            assert (status, json.loads(body)) == (200, {"ok": 2})
            await http.aclose()

    asyncio.run(main())


def test_silence_is_a_timeout_and_a_cut_answer_is_unreachable() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(200, {"long": "x" * 100})[:-10])
        await writer.drain()
        writer.close()

    async def main() -> None:
        for handler, what in ((silent, "timed out"), (cut, "unreachable")):
            server, url = await serve(handler)
            async with server, AgentClient(url, "tok", timeout=0.3) as client:
                with pytest.raises(AgentUnreachableError, match=what):
                    await client.healthcheck()

    asyncio.run(main())


def test_an_error_answer_keeps_the_agents_message() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(409, {"error": "job j1 exists with other commands"}))
        await writer.drain()

    async def main() -> None:
        server, url = await serve(handler)
        async with server, AgentClient(url, "tok") as client:
            with pytest.raises(AgentError) as err:
                await client.remove_job("j1")
        assert err.value.status_code == 409 and "other commands" in err.value.message

    asyncio.run(main())


def test_a_cancelled_request_leaves_no_half_read_connection() -> None:
    """A pass cancelled while waiting for its answer: the late answer must not be read as
    the answer to the next request on that connection."""
    calls = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            calls += 1
            mine = calls
            if mine == 1:
                await asyncio.sleep(0.2)
            writer.write(answer(200, {"call": mine}))
            await writer.drain()

    async def main() -> None:
        server, url = await serve(handler)
        async with server:
            http = LoopbackHttp.for_url(url, {}, 5)
            assert http is not None
            first = asyncio.ensure_future(http.request("GET", "/slow"))
            await asyncio.sleep(0.05)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            status, body = await http.request("GET", "/next")
            assert json.loads(body) == {"call": 2}
            await http.aclose()

    asyncio.run(main())


def test_only_plain_http_urls_without_a_path_go_direct() -> None:
    assert LoopbackHttp.for_url("http://127.0.0.1:8000", {}, 1) is not None
    assert LoopbackHttp.for_url("https://127.0.0.1:8000", {}, 1) is None
    assert LoopbackHttp.for_url("http://127.0.0.1:8000/prefix", {}, 1) is None
