"""One agent client per instance, kept for the life of the server so HTTP connections are reused
(watching many hosts must cost one small request each, not a new connection each)."""

from __future__ import annotations

import asyncio

from dstack.server.agent_client import AgentClient
from dstack.server.backends.base import BackendError
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext
from dstack.server.services.hosts import host_of


class AgentRegistry:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._clients: dict[str, tuple[str, AgentClient]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def client(self, inst: t.Instance) -> AgentClient | None:
        if not inst.agent_url or not inst.agent_token_enc:
            return None
        key = f"{inst.agent_url}|{inst.agent_token_enc}"
        cached = self._clients.get(inst.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:
            # The agent moved (new URL or token): close the old client's connections.
            task = asyncio.get_running_loop().create_task(cached[1].aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        backend = self.ctx.backends.get(inst.backend, inst.project_id)
        try:
            # Each backend says how requests reach its hosts' agents (loopback, an SSH tunnel).
            transport = backend.agent_transport(host_of(inst)) if backend else None
        except BackendError:
            return None  # not reachable yet (e.g. no agent port recorded)
        client = AgentClient(
            inst.agent_url, self.ctx.box.decrypt(inst.agent_token_enc), transport=transport
        )
        self._clients[inst.id] = (key, client)
        return client

    async def forget(self, instance_id: str) -> None:
        cached = self._clients.pop(instance_id, None)
        if cached is not None:
            await cached[1].aclose()

    async def close(self) -> None:
        for _, client in self._clients.values():
            await client.aclose()
        self._clients.clear()
