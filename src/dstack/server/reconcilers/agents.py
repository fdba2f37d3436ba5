"""One agent client per instance, kept for the life of the server so HTTP connections are reused
(watching many hosts must cost one small request each, not a new connection each)."""

from __future__ import annotations

from dstack.server.agent_client import AgentClient
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext


class AgentRegistry:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._clients: dict[str, tuple[str, AgentClient]] = {}

    def client(self, inst: t.Instance) -> AgentClient | None:
        if not inst.agent_url or not inst.agent_token_enc:
            return None
        key = f"{inst.agent_url}|{inst.agent_token_enc}"
        cached = self._clients.get(inst.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        if inst.backend == "ssh":
            # SSH hosts: only through the tunnel over the host's SSH connection.
            from dstack.server.reconcilers.ssh_hosts import tunnel_client

            ssh_client = tunnel_client(self.ctx, inst)
            if ssh_client is None:
                return None
            self._clients[inst.id] = (key, ssh_client)
            return ssh_client
        client = AgentClient(inst.agent_url, self.ctx.box.decrypt(inst.agent_token_enc))
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
