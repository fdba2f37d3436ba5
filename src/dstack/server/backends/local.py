"""The local backend: the machine the server runs on, as one instance with one agent, so a
first `dstack apply` runs with no cloud account.

It belongs to one project (the one that owns the `local` fleet, `main` unless
DSTACK_SERVER_LOCAL_BACKEND_PROJECT says otherwise): a job there runs next to the server's data
and admin token (as `dstack-job` when the server is root, local_agent.py; as the server's own
OS user otherwise, or with `user: root`), so no other project may ever be offered it.
There is one live instance per server: every job shares its agent, which is restarted only
when that instance is replaced.

Creating the instance starts the agent as a subprocess in its own session (it outlives a server
restart, and so do its jobs); terminating it stops that agent. The price is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

from dstack.agent import hostinfo
from dstack.agent.util import pid_alive
from dstack.models.instances import Disk, Gpu, InstanceType, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.server.backends.base import (
    BackendError,
    Capabilities,
    Compute,
    Host,
    InventoryItem,
    OfferRequirements,
    Provisioning,
    Stream,
)
from dstack.server.local_agent import ensure_local_agent, is_agent_of, read_agent_json

INSTANCE_TYPE = "local"
# Which instance the running agent was started for: the inventory's tag.
INSTANCE_ID_FILE = "instance_id"


def resources_from_host_info(info: dict[str, Any], description: str = "") -> Resources:
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
        description=description,
    )


class LocalBackend(Compute):
    type = "local"
    capabilities = Capabilities(
        shared_host=True,
        single_instance=True,
        remote_hosts=False,
        multinode=False,
    )
    provisioning_timeout = 60.0
    offers_ttl = 3600.0  # this machine does not change under a running server

    def __init__(self, home: Path, project: str) -> None:
        self.home = home
        self.projects = frozenset({project})
        self._offer: InstanceOfferWithAvailability | None = None

    async def offers(self, requirements: OfferRequirements) -> list[InstanceOfferWithAvailability]:
        if self._offer is None:
            self.home.mkdir(parents=True, exist_ok=True)
            info = await asyncio.to_thread(hostinfo.collect, self.home)
            # Images run here only if this machine has a Docker engine.
            self.capabilities = replace(self.capabilities, docker=bool(info.get("docker")))
            self._offer = InstanceOfferWithAvailability(
                backend=self.type,
                instance=InstanceType(
                    name=INSTANCE_TYPE,
                    resources=resources_from_host_info(info, "this machine"),
                ),
                region="local",
                price=0.0,
                availability=InstanceAvailability.AVAILABLE,
            )
        return [self._offer]

    async def create_instance(
        self, host: Host, offer: InstanceOfferWithAvailability | None
    ) -> Provisioning:
        # A repeat after a crash finds the agent started for this instance (same token).
        token = host.agent_token or secrets.token_urlsafe(32)
        # Tagged before the agent starts: the sweeper must never see a new agent under the tag
        # of the instance it replaces.
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / INSTANCE_ID_FILE).write_text(host.instance_id)
        try:
            agent = await ensure_local_agent(self.home, token)
        except Exception as e:  # the agent is ours; any failure to start it is the reason
            raise BackendError(f"failed to start the local agent: {e}") from e
        return Provisioning(
            agent_url=agent.url,
            hostname=socket.gethostname(),
            agent_pid=agent.pid,
            agent_token=token,
        )

    async def revive(self, host: Host) -> Provisioning | None:
        """Restart a dead agent with the instance's token (its jobs' state is on disk)."""
        if not host.agent_token:
            return None
        (self.home / INSTANCE_ID_FILE).write_text(host.instance_id)
        try:
            agent = await ensure_local_agent(self.home, host.agent_token)
        except Exception as e:
            raise BackendError(f"failed to restart the local agent: {e}") from e
        return Provisioning(agent_url=agent.url, hostname=host.hostname or "", agent_pid=agent.pid)

    async def terminate(self, host: Host) -> str | None:
        pid = host.agent_pid
        if pid is None or self._tag() not in (None, host.instance_id):
            return None  # the running agent belongs to a newer instance: leave it
        if not is_agent_of(pid, self.home):
            return None  # gone, or (after a reboot) the pid is someone else's now
        self._stop(pid)
        return None

    async def inventory(self) -> list[InventoryItem]:
        info = read_agent_json(self.home)
        pid = int((info or {}).get("pid") or 0)
        if not pid or not pid_alive(pid) or not is_agent_of(pid, self.home):
            return []
        return [InventoryItem(self._tag(), f"the local agent (pid {pid})", {"pid": pid})]

    async def terminate_orphan(self, item: InventoryItem) -> None:
        pid = int(item.handle.get("pid") or 0)
        if pid and is_agent_of(pid, self.home):
            self._stop(pid)

    def _tag(self) -> str | None:
        try:
            return (self.home / INSTANCE_ID_FILE).read_text().strip() or None
        except OSError:
            return None

    def _stop(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            try:
                os.kill(pid, signal.SIGTERM)
            except PermissionError as e:
                raise BackendError(f"cannot stop the local agent (pid {pid}): {e}") from e

    async def open_stream(self, host: Host, port: int) -> Stream:
        """(reader, writer) to `port` on this machine's loopback, where a local job's SSH server
        listens: the server's relay for a CLI that cannot reach this machine itself."""
        try:
            return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (OSError, asyncio.TimeoutError) as e:
            why = str(e) or "timed out"
            raise BackendError(f"cannot connect to 127.0.0.1:{port}: {why}") from e

    async def upstream(self, host: Host, port: int) -> tuple[str, int] | None:
        return "127.0.0.1", port

    def host_label(self, host: Host) -> str:
        return "local"
