"""The proxy's upstream HTTP/1.1 client (`proxy/http1.py`) against real loopback servers that
each test scripts byte by byte: framing (sized, chunked, until close, HEAD/204/304, 1xx),
keep-alive reuse, the one retry of a dead idle connection, timeouts, streaming both ways and
backpressure. Each test runs on the standard asyncio loop and on uvloop (the server's)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dstack.server.proxy import http1
from dstack.server.proxy.http1 import ConnectFailed, Pool, ReadTimeout, ResponseFailed

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    """Run a test body on a fresh loop of the given kind, bounded so a hang fails."""

    def runner(coro: Awaitable[None]) -> None:
        factory = None
        if request.param == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as r:
            r.run(asyncio.wait_for(coro, 20))

    return runner


class Server:
    """A loopback server whose connections run `handler`; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_by_peer = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if reader.at_eof():
                self.closed_by_peer += 1
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[bytes, bytes], bytes]:
    """One request: its first line, headers (lowercased) and decoded body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        parts = []
        while size := int((await reader.readline()).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = b""
    return lines[0].decode(), headers, body


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra, body)


async def get(pool: Pool, port: int, method: str = "GET", body: Any = b"", timeout: float = 5):
    """(status, headers, body) of one request."""
    resp = await pool.request(method, "127.0.0.1", port, "/x?y=1", [(b"a", b"b")], body, timeout)
    return resp.status, resp.headers, b"".join([c async for c in resp.body])


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request with its first line and body, keep-alive."""
    while True:
        line, _, body = await read_request(reader)
        writer.write(ok(line.encode() + b"|" + body, b"x-thing: Mixed Case\r\n"))


def test_sized_answers_reuse_one_connection(run):
    async def main() -> None:
        async with Server(echo_forever) as srv:
            pool = Pool()
            for i in range(3):
                status, headers, body = await get(pool, srv.port, "POST", b"data%d" % i)
                assert status == 200
                assert body == b"POST /x?y=1 HTTP/1.1|data%d" % i
                assert (b"x-thing", b"Mixed Case") in headers  # names lowercased, values kept
            assert srv.connections == 1
            await pool.close()

    run(main())


def test_chunked_answer_and_streamed_request(run):
    async def handler(reader, writer) -> None:
        while True:
            _, headers, body = await read_request(reader)
            assert headers[b"transfer-encoding"] == b"chunked"
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 3):
                piece = body[i : i + 3]
                writer.write(b"%x;ext=1\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\nx-trailer: 1\r\n\r\n")

    async def upload() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"defgh", b"ij"):
            yield part

    async def main() -> None:
        async with Server(handler) as srv:
            pool = Pool()
            for _ in range(2):
                status, _, body = await get(pool, srv.port, "POST", upload())
                assert (status, body) == (200, b"abcdefghij")
            assert srv.connections == 1  # trailers consumed: the connection stayed usable

    run(main())


def test_server_sent_events_arrive_as_written(run):
    """Each event reaches the caller before the server writes the next one."""
    seen = None

    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        for i in range(3):
            event = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.wait_for(seen.wait(), 5)  # the client must have it before the next
            seen.clear()
        writer.write(b"0\r\n\r\n")

    async def main() -> None:
        nonlocal seen
        seen = asyncio.Event()
        async with Server(handler) as srv:
            resp = await Pool().request("GET", "127.0.0.1", srv.port, "/", [], b"", 5)
            got = []
            async for chunk in resp.body:
                got.append(chunk)
                seen.set()
            assert got == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]

    run(main())


def test_body_until_close_and_connection_close(run):
    async def until_close(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nsome ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"body")

    async def conn_close(reader, writer) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"bye", b"Connection: close\r\n"))

    async def main() -> None:
        pool = Pool()
        async with Server(until_close) as srv:
            for _ in range(2):
                assert (await get(pool, srv.port))[2] == b"some body"
            assert srv.connections == 2
        async with Server(conn_close) as srv:
            for _ in range(2):
                assert (await get(pool, srv.port))[2] == b"bye"
            assert srv.connections == 2
        assert not pool._idle.get(("127.0.0.1", srv.port))

    run(main())


def test_bodyless_answers_keep_the_connection(run):
    """HEAD (with the GET's Content-Length), 204 and 304 have no body; the next answer on the
    same connection is read correctly."""

    async def handler(reader, writer) -> None:
        while True:
            line, _, _ = await read_request(reader)
            if line.startswith("HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
            elif line.startswith("DELETE"):
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif line.startswith("PUT"):
                writer.write(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n")
            else:
                writer.write(ok(b"after"))

    async def main() -> None:
        async with Server(handler) as srv:
            pool = Pool()
            for method, status in (("HEAD", 200), ("DELETE", 204), ("PUT", 304)):
                assert await get(pool, srv.port, method) == (status, await_any(), b"")
                assert (await get(pool, srv.port))[2] == b"after"
            assert srv.connections == 1

    run(main())


class await_any:  # noqa: N801 - reads as a value in an assertion
    """Equal to anything (the headers, in a tuple comparison)."""

    def __eq__(self, other: object) -> bool:
        return True


def test_interim_answers_are_skipped(run):
    async def handler(reader, writer) -> None:
        while True:
            _, headers, body = await read_request(reader)
            assert headers[b"expect"] == b"100-continue"
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n")
            writer.write(ok(body))

    async def main() -> None:
        async with Server(handler) as srv:
            pool = Pool()
            for _ in range(2):
                resp = await pool.request(
                    "POST", "127.0.0.1", srv.port, "/", [(b"expect", b"100-continue")], b"up", 5
                )
                assert resp.status == 200
                assert [k for k, _ in resp.headers] == [b"content-length"]
                assert await resp.body.read() == b"up"
            assert srv.connections == 1

    run(main())


def dies_on_second_request(counter: list[int]) -> Handler:
    """First connection answers one request and then closes when the next arrives (a replica
    that dropped an idle connection); later connections answer normally."""

    async def handler(reader, writer) -> None:
        counter[0] += 1
        first = counter[0] == 1
        while True:
            await read_request(reader)
            if first and counter[1]:
                return  # closed without a byte of answer
            counter[1] += 1
            writer.write(ok(b"fine"))

    return handler


def test_dead_idle_connection_is_retried_once_when_replayable(run):
    async def main() -> None:
        counter = [0, 0]
        async with Server(dies_on_second_request(counter)) as srv:
            pool = Pool()
            assert (await get(pool, srv.port))[2] == b"fine"
            assert (await get(pool, srv.port, "POST", b"again"))[2] == b"fine"
            assert srv.connections == 2

    run(main())


def test_dead_idle_connection_with_a_streamed_body_fails(run):
    async def one() -> AsyncIterator[bytes]:
        yield b"once"

    async def main() -> None:
        counter = [0, 0]
        async with Server(dies_on_second_request(counter)) as srv:
            pool = Pool()
            await get(pool, srv.port)
            with pytest.raises(ResponseFailed):
                await get(pool, srv.port, "POST", one())
            assert srv.connections == 1

    run(main())


def test_connect_failure_is_not_a_response_failure(run):
    async def main() -> None:
        async with Server(echo_forever) as srv:
            port = srv.port
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectFailed):
            await get(Pool(), port)

    run(main())


def test_read_timeouts_for_the_head_and_mid_body(run):
    async def silent(reader, writer) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async def stalls(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"de")  # a byte in time restarts the clock
        await asyncio.sleep(30)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Server(silent) as srv:
            t0 = loop.time()
            with pytest.raises(ReadTimeout):
                await get(Pool(), srv.port, timeout=0.3)
            assert 0.25 < loop.time() - t0 < 2
        async with Server(stalls) as srv:
            resp = await Pool().request("GET", "127.0.0.1", srv.port, "/", [], b"", 0.3)
            t0 = loop.time()
            got = b""
            with pytest.raises(ReadTimeout):
                async for chunk in resp.body:
                    got += chunk
            assert got == b"abcde"
            assert 0.35 < loop.time() - t0 < 2

    run(main())


def test_a_slow_consumer_is_not_a_timeout(run):
    """The clock runs only while someone waits on the replica."""

    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"def")

    async def main() -> None:
        async with Server(handler) as srv:
            resp = await Pool().request("GET", "127.0.0.1", srv.port, "/", [], b"", 0.2)
            await asyncio.sleep(0.5)
            assert await resp.body.read() == b"abcdef"

    run(main())


def test_broken_mid_body_and_bad_heads_are_response_failures(run):
    async def short(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")

    async def garbage(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")

    async def main() -> None:
        async with Server(short) as srv:
            resp = await Pool().request("GET", "127.0.0.1", srv.port, "/", [], b"", 5)
            with pytest.raises(ResponseFailed):
                async for _ in resp.body:
                    pass
        async with Server(garbage) as srv:
            with pytest.raises(ResponseFailed):
                await get(Pool(), srv.port)

    run(main())


def test_large_body_applies_backpressure(run):
    """While the consumer does not read, the client buffers a bounded amount and the server's
    writes stall; then the whole body arrives intact and the connection is reused."""
    size = 16 * 1024 * 1024
    payload = hashlib.sha256(b"x").digest() * (size // 32)
    stalled = None

    async def handler(reader, writer) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            for i in range(0, size, 256 * 1024):
                writer.write(payload[i : i + 256 * 1024])
                try:
                    await asyncio.wait_for(writer.drain(), 0.3)
                except asyncio.TimeoutError:
                    stalled.set()
                    await writer.drain()

    async def main() -> None:
        nonlocal stalled
        stalled = asyncio.Event()
        async with Server(handler) as srv:
            pool = Pool()
            resp = await pool.request("GET", "127.0.0.1", srv.port, "/", [], b"", 5)
            await asyncio.wait_for(stalled.wait(), 5)
            assert resp.body.size <= http1.HIGH_WATER + 256 * 1024
            data = await resp.body.read()
            assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
            assert (await get(pool, srv.port))[0] == 200
            assert srv.connections == 1

    run(main())


def test_abandoned_body_closes_and_pool_is_bounded(run, monkeypatch):
    monkeypatch.setattr(http1, "IDLE_PER_HOST", 2)

    async def handler(reader, writer) -> None:
        while True:
            line, _, _ = await read_request(reader)
            if "big" in line:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npart")
            else:
                await asyncio.sleep(0.05)  # so the requests below overlap
                writer.write(ok())

    async def main() -> None:
        async with Server(handler) as srv:
            pool = Pool()
            resp = await pool.request("GET", "127.0.0.1", srv.port, "/big", [], b"", 5)
            assert await resp.body.__anext__() == b"part"
            await resp.body.aclose()
            assert not pool._idle.get(("127.0.0.1", srv.port))
            await asyncio.gather(*(get(pool, srv.port) for _ in range(4)))
            assert len(pool._idle[("127.0.0.1", srv.port)]) == 2
            await pool.close()
            await asyncio.sleep(0.1)
            assert srv.closed_by_peer == 5  # the abandoned one, two over the bound, two idle

    run(main())


def test_a_head_that_trickles_in_is_not_a_timeout(run):
    """Each byte of the head restarts the read timeout, like each byte of the body."""

    async def handler(reader, writer) -> None:
        await read_request(reader)
        for byte in ok(b"late"):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with Server(handler) as srv:
            assert (await get(Pool(), srv.port, timeout=0.2))[2] == b"late"

    run(main())


def test_a_long_upload_on_a_reused_connection_is_not_a_timeout(run):
    """The clock for the head starts when the request is out, not when it starts."""

    async def slow_upload() -> AsyncIterator[bytes]:
        for _ in range(6):
            await asyncio.sleep(0.1)
            yield b"x"

    async def main() -> None:
        async with Server(echo_forever) as srv:
            pool = Pool()
            await get(pool, srv.port, timeout=0.3)  # leaves the connection's timer running
            status, _, body = await get(pool, srv.port, "POST", slow_upload(), timeout=0.3)
            assert (status, body) == (200, b"POST /x?y=1 HTTP/1.1|xxxxxx")
            assert srv.connections == 1

    run(main())


def test_an_endless_head_is_a_response_failure(run):
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(10_000):
            writer.write(b"x-h%d: %b\r\n" % (i, b"v" * 100))
            await writer.drain()

    async def main() -> None:
        async with Server(handler) as srv:
            with pytest.raises(ResponseFailed, match="too large"):
                await get(Pool(), srv.port)

    run(main())
