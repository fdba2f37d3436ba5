"""Reaching a port on a compute node's loopback from the server.

The login node reaches the node's addresses, not its loopback, where the job's sshd and a
service's app listen. The agent listens on the node's address and relays `CONNECT
127.0.0.1:PORT` (token required) to its loopback (`dstack.agent.relay`): a stream is a
direct-tcpip channel through the login node to the agent, plus that handshake.

Service upstreams need an address the proxy connects to: `Relays` keeps one local listener per
(instance, port), each accepted connection relayed over a fresh stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from dstack.server.backends.base import BackendError, Host, Stream

HANDSHAKE_TIMEOUT = 10.0
MAX_HEADER = 16 * 1024
CHUNK = 64 * 1024


async def connect_through_agent(reader: Any, writer: Any, port: int, token: str) -> Stream:
    """Send `CONNECT` over an open stream to the agent; the stream then carries the relayed
    bytes. Raises `BackendError` with the agent's answer when it refuses."""
    writer.write(
        (
            f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    try:
        head = await asyncio.wait_for(_read_head(reader), HANDSHAKE_TIMEOUT)
    except (asyncio.TimeoutError, OSError) as e:
        writer.close()
        raise BackendError(f"the agent did not answer the relay to port {port}: {e!r}") from e
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        writer.close()
        body = head.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
        raise BackendError(f"the agent refused the relay to port {port}: {status_line} {body}")
    return reader, writer


async def _read_head(reader: Any) -> bytes:
    """Read the response head (up to the blank line); a refusal's JSON body is short and
    comes with it or right after, so a few more bytes are taken when the status is not 200."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEADER:
            raise OSError("the relay handshake answer is too long")
        chunk = await reader.read(1)  # byte by byte: relayed bytes must stay in the stream
        if not chunk:
            raise OSError("connection closed during the relay handshake")
        buf += chunk
    if buf.split(b" ", 2)[1:2] != [b"200"]:
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            buf += await asyncio.wait_for(reader.read(4096), 1.0)
    return buf


async def _pump(src: Any, dst: Any) -> None:
    try:
        while True:
            data = await src.read(CHUNK)
            if not data:
                break
            dst.write(data)
            await dst.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        with contextlib.suppress(OSError, AttributeError, NotImplementedError):
            if dst.can_write_eof():
                dst.write_eof()


class Relays:
    """Local listeners for service upstreams on compute nodes, by (instance id, port)."""

    def __init__(self, open_stream: Callable[[Host, int], Awaitable[Stream]]) -> None:
        self._open_stream = open_stream
        self._servers: dict[tuple[str, int], asyncio.AbstractServer] = {}
        self._lock = asyncio.Lock()

    async def listen(self, host: Host, port: int) -> tuple[str, int]:
        key = (host.instance_id, port)
        async with self._lock:
            server = self._servers.get(key)
            if server is None:
                server = await asyncio.start_server(self._handler(host, port), "127.0.0.1", 0)
                self._servers[key] = server
        return "127.0.0.1", server.sockets[0].getsockname()[1]

    def _handler(self, host: Host, port: int) -> Callable[[Any, Any], Awaitable[None]]:
        async def handle(client_r: Any, client_w: Any) -> None:
            try:
                up_r, up_w = await self._open_stream(host, port)
            except BackendError:
                client_w.close()
                return
            try:
                await asyncio.gather(_pump(client_r, up_w), _pump(up_r, client_w))
            finally:
                up_w.close()
                client_w.close()

        return handle

    async def drop(self, instance_id: str) -> None:
        async with self._lock:
            for key in [k for k in self._servers if k[0] == instance_id]:
                self._servers.pop(key).close()

    async def close(self) -> None:
        async with self._lock:
            for server in self._servers.values():
                server.close()
            self._servers.clear()
