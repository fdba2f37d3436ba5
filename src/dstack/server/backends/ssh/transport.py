"""An httpx transport that sends every request through the host's SSH port forward.

The agent client keeps its plain `http://127.0.0.1:<agent port>` base URL; this transport asks
for the current local end of the tunnel on each request (re-opening the SSH connection after
a drop) and rewrites the address. A tunnel that cannot be opened is a connection error, which
the agent client reports as "agent unreachable".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from dstack.server.backends.base import BackendError


class TunnelTransport(httpx.AsyncBaseTransport):
    def __init__(self, local_port: Callable[[], Awaitable[int]]) -> None:
        self._local_port = local_port
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            port = await self._local_port()
        except BackendError as e:
            raise httpx.ConnectError(str(e), request=request) from e
        request.url = request.url.copy_with(host="127.0.0.1", port=port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
