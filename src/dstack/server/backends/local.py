"""The local backend: this machine as one instance, so a first `dstack apply` runs with no
cloud account.

Creating the instance starts the agent as a subprocess in its own session (it outlives a server
restart, and so do its jobs); terminating it stops that agent. The price is 0.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
from pathlib import Path
from typing import Any

from dstack.agent import hostinfo
from dstack.models.instances import Disk, Gpu, InstanceType, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.server.backends.base import Backend, BackendError, ProvisionedInstance
from dstack.server.local_agent import ensure_local_agent

INSTANCE_TYPE = "local"


def resources_from_host_info(info: dict[str, Any]) -> Resources:
    gpus = [
        Gpu(
            name=g["name"],
            memory_mib=int(g.get("memory_mib") or 0),
            vendor=g.get("vendor") or "nvidia",
        )
        for g in info.get("gpus") or []
    ]
    return Resources(
        cpus=int(info.get("cpus") or 1),
        memory_mib=int(info.get("memory_mib") or 0),
        gpus=gpus,
        spot=False,
        disk=Disk(size_mib=int(info.get("disk_size_mib") or 0)),
        cpu_arch=info.get("cpu_arch"),
        description="this machine",
    )


class LocalBackend(Backend):
    type = "local"

    def __init__(self, home: Path) -> None:
        self.home = home
        self._offer: InstanceOfferWithAvailability | None = None

    async def offers(self) -> list[InstanceOfferWithAvailability]:
        if self._offer is None:
            self.home.mkdir(parents=True, exist_ok=True)
            info = await asyncio.to_thread(hostinfo.collect, self.home)
            self._offer = InstanceOfferWithAvailability(
                backend=self.type,
                instance=InstanceType(name=INSTANCE_TYPE, resources=resources_from_host_info(info)),
                region="local",
                price=0.0,
                availability=InstanceAvailability.AVAILABLE,
            )
        return [self._offer]

    async def create_instance(
        self, instance_id: str, offer: InstanceOfferWithAvailability
    ) -> ProvisionedInstance:
        token = secrets.token_urlsafe(32)
        try:
            agent = await ensure_local_agent(self.home, token)
        except Exception as e:  # the agent is ours; any failure to start it is the reason
            raise BackendError(f"failed to start the local agent: {e}") from e
        return ProvisionedInstance(
            agent_url=agent.url,
            agent_token=token,
            hostname=socket.gethostname(),
            agent_pid=agent.pid,
        )

    async def revive(self, token: str) -> tuple[str, int]:
        """Restart a dead local agent with the instance's token (its jobs' state is on disk);
        returns the new agent's URL and pid."""
        try:
            agent = await ensure_local_agent(self.home, token)
        except Exception as e:
            raise BackendError(f"failed to restart the local agent: {e}") from e
        return agent.url, agent.pid

    async def terminate_instance(self, instance_id: str, agent_pid: int | None) -> None:
        if agent_pid is None:
            return
        try:
            os.kill(agent_pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        except PermissionError as e:
            raise BackendError(f"cannot stop the local agent (pid {agent_pid}): {e}") from e

    async def open_stream(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """(reader, writer) to `port` on this machine's loopback, where a local job's SSH server
        listens: the server's relay for a CLI that cannot reach this machine itself."""
        try:
            return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (OSError, asyncio.TimeoutError) as e:
            why = str(e) or "timed out"
            raise BackendError(f"cannot connect to 127.0.0.1:{port}: {why}") from e
