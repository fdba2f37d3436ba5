"""A lean HTTP/1.1 client for the proxy's hot path: pooled keep-alive connections, each an
`asyncio.Protocol` whose bytes go straight into `httptools`' response parser.

Why not asyncio streams: a StreamReader costs several awaits, buffer copies and one
`asyncio.timeout` per read, which made the upstream half of a proxied request cost more CPU than
uvicorn's whole request handling (bench/bench_proxy.py). Here a request is one
`transport.write`, the parser's callbacks (C-driven) fill in the answer from `data_received`, and
the caller awaits one future for the head; a small body is usually complete by then. The read
timeout is one `call_at` timer per connection that is re-armed only when it fires early, not
one context manager per read.

httptools is required, not optional: it is a declared server dependency (uvicorn uses it too),
and a second, pure-Python parser would be a second HTTP implementation to keep correct for a
case that does not occur in a server install. Probes, which are few, still use httpx.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httptools

MAX_HEAD = 64 * 1024  # bytes received before an answer's head is complete
IDLE_PER_HOST = 64
HIGH_WATER = 256 * 1024  # buffered body bytes at which reading from the replica pauses
LOW_WATER = 64 * 1024  # ... and at which it resumes
NO_BODY_STATUS = (204, 304)
BODYLESS_METHODS = ("GET", "HEAD", "DELETE", "OPTIONS")

Headers = list[tuple[bytes, bytes]]


class ConnectFailed(Exception):
    """No connection could be opened: the request was not sent."""


class ResponseFailed(Exception):
    """The connection broke after the request was (maybe) sent."""


class ReadTimeout(Exception):
    """The replica sent nothing for `timeout` seconds while an answer was awaited."""


@dataclass
class Response:
    status: int
    headers: Headers
    body: Body


class Body:
    """The answer's body as it arrives: an async iterator of chunks (consecutive buffered chunks
    are joined, so a slow consumer gets fewer, larger pieces). Holding more than HIGH_WATER
    bytes pauses reading from the replica until the consumer catches up (backpressure)."""

    __slots__ = ("conn", "chunks", "size", "done", "error", "waiter")

    def __init__(self, conn: Conn | None) -> None:
        self.conn = conn  # None once the answer is complete: the connection is no longer ours
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.done = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    # -- fed by the connection ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > HIGH_WATER and self.conn is not None:
            self.conn.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.done = True
        self.conn = None
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.conn = None
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the consumer -------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self.chunks:
                return self._take()
            if self.error is not None:
                raise self.error
            if self.done:
                raise StopAsyncIteration
            await self._wait()

    def _take(self) -> bytes:
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.size = 0
        if self.conn is not None:
            self.conn.resume_reading()
        return data

    async def _wait(self) -> None:
        conn = self.conn
        assert conn is not None  # not done and no error: the connection still feeds us
        self.waiter = conn.loop.create_future()
        conn.arm()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def read(self) -> bytes:
        """The whole body (for small sized answers, which are usually complete already)."""
        if self.done and len(self.chunks) <= 1:
            data = self.chunks.popleft() if self.chunks else b""
            self.size = 0
            return data
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Stop reading: a connection whose answer was not read to the end cannot be reused."""
        conn = self.conn
        if conn is not None and not self.done:
            self.conn = None
            conn.close()
        self.done = True
        self.chunks.clear()


class Conn(asyncio.Protocol):
    """One keep-alive connection to a replica, one request at a time. The parser callbacks
    (`on_header`, `on_headers_complete`, `on_body`, `on_message_complete`) run inside
    `data_received`; they complete the head future and feed the `Body`."""

    def __init__(self, pool: Pool, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.idle_in: list[Conn] | None = None  # the pool's idle list holding us, if any
        self.closed = False
        self.reused = False
        self.got_bytes = False  # any byte of the current answer (a dead idle conn has none)
        # the current exchange
        self.method = ""
        self.head: asyncio.Future[Response] | None = None
        self.sent = False  # the request is out: the head's wait (and its clock) has begun
        self.headers: Headers = []
        self.head_size = 0
        self.body: Body | None = None
        self.keep = True
        self.until_close = False  # body ends when the replica closes the connection
        self.complete = False
        # read timeout: one timer, re-armed only when it fires before the deadline
        self.timeout = 0.0
        self.stamp = 0.0  # last time a byte arrived or a wait began
        self.timer: asyncio.TimerHandle | None = None
        # flow control
        self.read_paused = False
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.stamp = self.loop.time()
        parser = self.parser
        if parser is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101 answer: its head is complete; the connection is not reused
        except httptools.HttpParserError as e:
            if self.complete:  # junk after a complete answer: keep the answer, drop the conn
                self.keep = False
                self._release()
                return
            self._fail(ResponseFailed(f"bad response from the replica: {e}"))
            return
        if self.complete:
            self._release()
        elif self.head is not None:  # still no head: bound it (llhttp does not)
            self.head_size += len(data)
            if self.head_size > MAX_HEAD:
                self._fail(ResponseFailed("response head too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_in is not None:
            self.idle_in.remove(self)
            self.idle_in = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(ResponseFailed(f"connection lost: {exc}"))
        body = self.body
        if body is not None and self.until_close and self.head is None and exc is None:
            self.body = None
            body.finish()
        else:
            self._fail(ResponseFailed(f"connection closed by the replica: {exc or 'EOF'}"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # -- parser callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.head is None or self.head.done():
            raise ValueError("an answer nobody asked for")
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # an interim answer (100 Continue, 103 Early Hints): skip it; its end is ignored
            # by on_message_complete since no body is open yet
            self.headers = []
            return
        headers = self.headers
        self.keep, self.until_close, bodyless = _framing(self.method, status, headers, parser)
        body = Body(self)
        self.body = body
        head, self.head = self.head, None
        head.set_result(Response(status, headers, body))
        if bodyless:
            self.parser = None  # llhttp might still expect a body (HEAD): a fresh one next time
            self.complete = True

    def on_body(self, data: bytes) -> None:
        if self.body is None or self.complete:
            raise ValueError("body bytes nobody asked for")
        self.body.feed(data)

    def on_message_complete(self) -> None:
        if self.body is not None:
            self.complete = True

    # -- the exchange -----------------------------------------------------------------------

    def start(self, method: str) -> asyncio.Future[Response]:
        """Prepare for one answer; returns the future its head will complete."""
        self.method = method
        self.headers = []
        self.head_size = 0
        self.complete = False
        self.until_close = False
        self.got_bytes = False
        self.sent = False
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        self.head = head = self.loop.create_future()
        return head

    def arm(self, timeout: float | None = None) -> None:
        """A wait for the replica begins (`timeout` given: the request is sent, the head is
        awaited): it may last `timeout` seconds without a byte."""
        if timeout is not None:
            self.timeout = timeout
            self.sent = True
        self.stamp = now = self.loop.time()
        deadline = now + self.timeout
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        body = self.body
        head_wait = self.head is not None and self.sent  # not while a body is still uploading
        if not head_wait and (body is None or body.waiter is None):
            return  # nobody is waiting on the replica now; the next wait re-arms
        left = self.stamp + self.timeout - self.loop.time()
        if left > 0:
            self.timer = self.loop.call_later(left, self._on_timer)
            return
        self._fail(ReadTimeout(f"no answer within {self.timeout:g}s"))

    def _release(self) -> None:
        """The answer is complete: hand its body the end, the connection back to the pool."""
        body, self.body = self.body, None
        self.complete = False
        if body is not None:
            body.finish()
        self.resume_reading()
        if self.keep and not self.closed and not self.transport.is_closing():  # type: ignore[union-attr]
            self.pool._put(self)
        else:
            self.close()

    def _fail(self, error: BaseException) -> None:
        head, self.head = self.head, None
        if head is not None and not head.done():
            head.set_exception(error)
        body, self.body = self.body, None
        if body is not None and not body.done:
            body.fail(error)
        self.close()

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self.closed:
            raise ResponseFailed("connection closed by the replica")
        if self.write_paused:
            self.drained = self.loop.create_future()
            try:
                await self.drained
            finally:
                self.drained = None

    def close(self) -> None:
        self.parser = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Pool:
    """Idle keep-alive connections per (host, port), most recently used first."""

    def __init__(self, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[Conn]] = {}

    async def request(
        self,
        method: str,
        host: str,
        port: int,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes],
        timeout: float,
    ) -> Response:
        """Send the request and return once the answer's head is in; the body streams from
        `Response.body`. A reused connection found dead before any byte of the answer is
        replaced once (only when the body can be sent again)."""
        key = (host, port)
        head = _request_head(method, host, port, target, headers, body)
        for attempt in (0, 1):
            # a retry takes a new connection: the other idle ones likely died with this one
            conn = (None if attempt else self._take(key)) or await self._connect(key)
            answer = conn.start(method)
            try:
                await _send(conn, head, body)
                conn.arm(timeout)
                return await answer
            except ResponseFailed:
                _forget(answer)
                conn.close()
                if attempt or not conn.reused or conn.got_bytes or not isinstance(body, bytes):
                    raise
            except BaseException:
                _forget(answer)
                conn.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self, key: tuple[str, int]) -> Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            conn.idle_in = None
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def _connect(self, key: tuple[str, int]) -> Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Conn(self, key, loop), *key), self.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectFailed(f"cannot connect to {key[0]}:{key[1]}: {e!r}") from e
        return conn

    def _put(self, conn: Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < IDLE_PER_HOST:
            idle.append(conn)
            conn.idle_in = idle
        else:
            conn.close()

    async def close(self) -> None:
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.close()
        self._idle.clear()


def _request_head(
    method: str, host: str, port: int, target: str, headers: Headers, body: object
) -> bytes:
    parts = [f"{method} {target} HTTP/1.1\r\nhost: {host}:{port}\r\n".encode()]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    if not isinstance(body, bytes):
        parts.append(b"transfer-encoding: chunked\r\n\r\n")
    elif body or method not in BODYLESS_METHODS:
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


async def _send(conn: Conn, head: bytes, body: bytes | AsyncIterator[bytes]) -> None:
    """Write the request; a streamed body goes chunked, waiting whenever the socket is full."""
    transport = conn.transport
    assert transport is not None
    if conn.closed:
        raise ResponseFailed("connection closed by the replica")
    if isinstance(body, bytes):
        transport.write(head + body if body else head)
        return
    transport.write(head)
    async for chunk in body:
        if chunk:
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await conn.drain()
    transport.write(b"0\r\n\r\n")


def _forget(answer: asyncio.Future[Response]) -> None:
    """The answer will not be awaited: cancel it, or mark its exception as seen."""
    if not answer.done():
        answer.cancel()
    elif not answer.cancelled():
        answer.exception()


def _framing(
    method: str, status: int, headers: Headers, parser: httptools.HttpResponseParser
) -> tuple[bool, bool, bool]:
    """(keep-alive, body ends at close, no body at all) for a final answer."""
    conn_hdr = b""
    sized = False
    for k, v in headers:
        if k == b"content-length":
            sized = True
        elif k == b"transfer-encoding":
            sized = sized or b"chunked" in v.lower()
        elif k == b"connection":
            conn_hdr = v.lower()
    if parser.get_http_version() == "1.1":
        keep = b"close" not in conn_hdr
    else:
        keep = b"keep-alive" in conn_hdr
    bodyless = method == "HEAD" or status in NO_BODY_STATUS or status == 101
    until_close = not bodyless and not sized
    return keep and not until_close and status != 101, until_close, bodyless
