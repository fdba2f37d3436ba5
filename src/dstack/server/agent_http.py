"""HTTP/1.1 to an agent reached straight over TCP (the local backend's loopback), on
kept-alive asyncio streams.

Why not httpx here: a request through `httpx.AsyncClient` cost the server's event loop about
1.3 ms of CPU (its connection pool checks every pooled connection, anyio wrappers, header
models), several times the agent's own work for a small job's start, log page or removal; with
many small jobs those calls were a third of the server's CPU. The agent speaks a small,
fixed dialect (`dstack.agent.server`: every answer has a Content-Length, no chunked bodies, no
redirects, no cookies), so a plain exchange costs a fraction of that. Agents behind a
backend's transport (an SSH tunnel) still go through httpx.

Errors: anything that breaks the exchange (refused, reset, closed early, a malformed answer,
the timeout) raises `LoopbackError`; the connection is then dropped, never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
from typing import Any
from urllib.parse import urlencode, urlsplit

MAX_HEADER_BYTES = 64 * 1024

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LoopbackError(Exception):
    """The exchange with the agent failed; `timed_out` tells a timeout from the rest."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class LoopbackHttp:
    def __init__(self, host: str, port: int, headers: dict[str, str], timeout: float) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        base = {"Host": f"{host}:{port}", **headers}
        self._head = "".join(f"{k}: {v}\r\n" for k, v in base.items())
        self._idle: list[_Conn] = []

    @classmethod
    def for_url(cls, url: str, headers: dict[str, str], timeout: float) -> LoopbackHttp | None:
        """For a plain `http://host:port` URL without a path; None for anything else."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            return None
        return cls(parts.hostname, parts.port or 80, headers, timeout)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """(status, body) of one request."""
        body = content or b""
        extra = dict(headers or {})
        if json is not None:
            body = jsonlib.dumps(json).encode()
            extra.setdefault("Content-Type", "application/json")
        target = f"{path}?{urlencode(params)}" if params else path
        head = f"{method} {target} HTTP/1.1\r\n{self._head}"
        head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        if body or method != "GET":
            head += f"Content-Length: {len(body)}\r\n"
        data = head.encode("latin-1") + b"\r\n" + body
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._exchange(data), limit)
        except asyncio.TimeoutError:
            raise LoopbackError(f"no answer within {limit:g}s", timed_out=True) from None

    async def _exchange(self, data: bytes) -> tuple[int, bytes]:
        conn = await self._connection()
        reader, writer = conn
        try:
            writer.write(data)
            await writer.drain()
            status, length, keep = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            body = await reader.readexactly(length)
        except BaseException as e:  # cancelled or broken mid-answer: the stream is unusable
            _close(conn)
            if isinstance(e, (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)):
                raise LoopbackError(f"{type(e).__name__}: {e}") from e
            raise
        if keep:
            self._idle.append(conn)
        else:
            _close(conn)
        return status, body

    async def _connection(self) -> _Conn:
        while self._idle:
            reader, writer = self._idle.pop()
            # The agent closed it meanwhile (restarted, or timed it out): the loop has seen
            # the end of the stream already.
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            _close((reader, writer))
        try:
            return await asyncio.open_connection(self.host, self.port, limit=MAX_HEADER_BYTES)
        except OSError as e:
            raise LoopbackError(f"cannot connect: {e}") from e

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)


def _parse_head(raw: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, whether the connection stays open) of a response head."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise LoopbackError(f"not an HTTP response: {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    if "chunked" in fields.get("transfer-encoding", "").lower():
        raise LoopbackError("chunked answers are not part of the agent's protocol")
    length = fields.get("content-length", "")
    if not length.isdigit():
        raise LoopbackError("an answer without Content-Length")
    keep = parts[0] != "HTTP/1.0" and fields.get("connection", "").lower() != "close"
    return int(parts[1]), int(length), keep


def _close(conn: _Conn) -> None:
    with contextlib.suppress(Exception):
        conn[1].close()
