"""A lean HTTP/1.1 client for the proxy's hot path: pooled keep-alive connections over asyncio
streams, bodies streamed both ways, nothing parsed that the proxy does not need.

httpx costs about a millisecond per request in Python; this costs a fraction, which is most of
the proxy's added latency (bench/bench_proxy.py). Probes, which are few, still use httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

MAX_HEAD = 64 * 1024
IDLE_PER_HOST = 64
CHUNK = 64 * 1024


async def _within(aw, timeout: float):  # noqa: ANN001, ANN202
    """`await aw` with a timeout, without wait_for's extra task where asyncio.timeout exists."""
    if _timeout is None:
        return await asyncio.wait_for(aw, timeout)
    async with _timeout(timeout):
        return await aw


_timeout = getattr(asyncio, "timeout", None)


class ConnectFailed(Exception):
    """No connection could be opened: the request was not sent."""


class ResponseFailed(Exception):
    """The connection broke after the request was (maybe) sent."""


class ReadTimeout(Exception):
    pass


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[bytes]


class Pool:
    def __init__(self, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[Conn]] = {}

    async def _get(self, host: str, port: int) -> Conn:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                conn.reused = True
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_HEAD), self.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e}") from e
        return Conn(reader, writer)

    def _put(self, host: str, port: int, conn: Conn) -> None:
        idle = self._idle.setdefault((host, port), [])
        if len(idle) < IDLE_PER_HOST:
            idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def request(
        self,
        method: str,
        host: str,
        port: int,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
        timeout: float,
    ) -> Response:
        """Send the request; the response's body iterator returns the connection to the pool
        when it has been read to the end. A reused connection found dead before any byte of
        the answer is replaced once (only when the body can be sent again)."""
        for attempt in (0, 1):
            conn = await self._get(host, port)
            try:
                await self._send(conn, method, host, port, target, headers, body)
                status, resp_headers = await _within(_read_head(conn), timeout)
            except asyncio.TimeoutError as e:
                conn.close()
                raise ReadTimeout() from e
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as e:
                conn.close()
                if conn.reused and attempt == 0 and isinstance(body, bytes):
                    continue
                raise ResponseFailed(f"connection reset: {e}") from e
            return Response(
                status,
                resp_headers,
                self._body(conn, host, port, method, status, resp_headers, timeout),
            )
        raise ResponseFailed("connection reset")  # pragma: no cover - loop always returns

    async def _send(
        self,
        conn: Conn,
        method: str,
        host: str,
        port: int,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> None:
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}:{port}\r\n".encode()]
        lines += [k + b": " + v + b"\r\n" for k, v in headers]
        w = conn.writer
        if isinstance(body, bytes):
            if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                lines.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
            lines.append(b"\r\n")
            w.write(b"".join(lines) + body)
            await w.drain()
            return
        lines.append(b"transfer-encoding: chunked\r\n\r\n")
        w.write(b"".join(lines))
        async for chunk in body:
            w.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await w.drain()
        w.write(b"0\r\n\r\n")
        await w.drain()

    async def _body(
        self,
        conn: Conn,
        host: str,
        port: int,
        method: str,
        status: int,
        headers: list[tuple[bytes, bytes]],
        timeout: float,
    ) -> AsyncIterator[bytes]:
        r = conn.reader
        h = {k: v for k, v in headers}
        keep = h.get(b"connection", b"").lower() != b"close"
        done = False
        try:
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                done = True
            elif b"chunked" in h.get(b"transfer-encoding", b"").lower():
                while True:
                    line = await _within(r.readline(), timeout)
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while (await _within(r.readline(), timeout)) not in (
                            b"\r\n",
                            b"\n",
                            b"",
                        ):
                            pass
                        done = True
                        break
                    data = await _within(r.readexactly(size), timeout)
                    await _within(r.readexactly(2), timeout)
                    yield data
            elif b"content-length" in h:
                left = int(h[b"content-length"])
                while left > 0:
                    data = await _within(r.read(min(left, CHUNK)), timeout)
                    if not data:
                        raise ResponseFailed("connection closed mid-body")
                    left -= len(data)
                    yield data
                done = True
            else:
                keep = False
                while True:
                    data = await _within(r.read(CHUNK), timeout)
                    if not data:
                        break
                    yield data
                done = True
        finally:
            if done and keep:
                self._put(host, port, conn)
            else:
                conn.close()


async def _read_head(conn: Conn) -> tuple[int, list[tuple[bytes, bytes]]]:
    while True:
        raw = await conn.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(b":")
            headers.append((k.strip().lower(), v.strip()))
        if status == 100:
            continue  # interim answer to `Expect: 100-continue`
        return status, headers
