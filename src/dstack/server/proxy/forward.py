"""Forwarding one HTTP request or WebSocket to a replica, streaming both ways.

One shared `http1.Pool` keeps keep-alive connections to replicas. Request bodies are
streamed to the replica as they arrive (small bodies with a Content-Length are read first so a
replica that refuses the connection can be retried on another); response bodies are relayed
chunk by chunk, so server-sent events reach the client as the app writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from dstack.server.proxy.http1 import ConnectFailed, Pool, ReadTimeout, ResponseFailed

Scope = dict[str, Any]

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailers",
    b"transfer-encoding",
    b"upgrade",
    b"host",
    b"content-length",
}
REPLAYABLE = 1024 * 1024
SMALL_BODY = 256 * 1024


class BodyTooLarge(Exception):
    pass


class UpstreamFailed(Exception):
    """The replica refused or reset the connection; `sent` tells whether it saw the request."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class UpstreamTimeout(Exception):
    pass


class ClientGone(Exception):
    """The client went away before its body was read: nobody to answer, nobody to blame."""


class RequestBody:
    """The client's body: read whole when small and sized, else streamed with a size check."""

    def __init__(self, receive: Any, length: int | None, limit: int) -> None:
        self.receive = receive
        self.length = length
        self.limit = limit
        self.data: bytes | None = None
        self.consumed = False

    async def prepare(self) -> None:
        if self.length is not None and self.length > self.limit:
            raise BodyTooLarge()
        if self.length == 0:  # nothing to wait for (most GETs): skip a receive() round
            self.data = b""
        elif self.length is not None and self.length <= REPLAYABLE:
            chunks = [c async for c in self._chunks()]
            self.data = b"".join(chunks)

    @property
    def replayable(self) -> bool:
        return self.data is not None or self.length == 0

    async def _chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                raise ClientGone()
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                raise BodyTooLarge()
            if chunk:
                yield chunk
            if not msg.get("more_body", False):
                return

    def content(self) -> bytes | AsyncIterator[bytes]:
        if self.data is not None:
            return self.data
        self.consumed = True
        return self._chunks()


def upstream_headers(
    scope: Scope, strip_auth: bool, prefix: str, client_ip: str
) -> list[tuple[bytes, bytes]]:
    out = []
    host = b""
    for k, v in scope["headers"]:
        lk = k.lower()
        if lk in HOP_BY_HOP or (strip_auth and lk == b"authorization"):
            if lk == b"host":
                host = v
            continue
        if lk == b"x-dstack-forward-authorization":
            continue
        out.append((lk, v))
    out.append((b"x-forwarded-for", client_ip.encode()))
    out.append((b"x-forwarded-host", host))
    out.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
    out.append((b"x-forwarded-prefix", prefix.encode()))
    return out


async def forward_http(
    pool: Pool,
    scope: Scope,
    send: Any,
    body: RequestBody,
    addr: tuple[str, int],
    target: str,
    headers: list[tuple[bytes, bytes]],
    timeout: float,
) -> int:
    """Send the request and relay the response; returns the status. Raises UpstreamFailed /
    UpstreamTimeout only while nothing has been sent to the client yet."""
    try:
        resp = await pool.request(
            scope["method"], addr[0], addr[1], target, headers, body.content(), timeout
        )
    except ClientGone:
        raise
    except ConnectFailed as e:
        raise UpstreamFailed(str(e), sent=False) from e
    except ReadTimeout as e:
        raise UpstreamTimeout("read timeout") from e
    except ResponseFailed as e:
        raise UpstreamFailed(str(e), sent=True) from e
    out_headers, length = _response_headers(resp.headers)
    if length is not None and length <= SMALL_BODY:
        # A small sized answer goes out in one write after the head (one syscall less).
        try:
            data = await resp.body.read()
        except ReadTimeout as e:
            raise UpstreamTimeout("read timeout") from e
        except ResponseFailed as e:
            raise UpstreamFailed(f"connection reset mid-body: {e}", sent=True) from e
        finally:
            await resp.body.aclose()
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})
        return resp.status
    await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
    try:
        async for chunk in resp.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (ResponseFailed, ReadTimeout):
        pass  # the replica went away or stalled mid-body: end the response where it stopped
    finally:
        await resp.body.aclose()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return resp.status


def _response_headers(
    headers: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """The headers to relay (hop-by-hop ones dropped, Content-Length kept) and the length."""
    out = []
    length = None
    for k, v in headers:
        if k == b"content-length":
            length = int(v) if v.isdigit() else None
        elif k in HOP_BY_HOP:
            continue
        out.append((k, v))
    return out, length


async def forward_websocket(
    scope: Scope, receive: Any, send: Any, url: str, headers: list[tuple[bytes, bytes]]
) -> bool:
    """Open the replica's WebSocket, accept the client's, relay frames until either closes.
    False when the replica could not be reached (nothing was accepted)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    skip = {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"x-forwarded-proto",
    }
    extra = [(k.decode(), v.decode()) for k, v in headers if k not in skip]
    protocols = [p.strip() for p in scope.get("subprotocols") or []]
    try:
        upstream = await connect(
            url,
            additional_headers=extra,
            subprotocols=protocols or None,  # type: ignore[arg-type]
            open_timeout=10,
            max_size=None,
        )
    except (OSError, asyncio.TimeoutError, Exception):  # noqa: BLE001 - any failure is a refusal
        return False
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

    async def client_to_upstream() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                await upstream.close()
                return
            if msg.get("bytes") is not None:
                await upstream.send(msg["bytes"])
            elif msg.get("text") is not None:
                await upstream.send(msg["text"])

    async def upstream_to_client() -> None:
        try:
            async for data in upstream:
                if isinstance(data, bytes):
                    await send({"type": "websocket.send", "bytes": data})
                else:
                    await send({"type": "websocket.send", "text": data})
        except ConnectionClosed:
            pass
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": upstream.close_code or 1000})

    tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await upstream.close()
    return True
