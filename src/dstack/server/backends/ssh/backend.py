"""The `ssh` backend: hosts listed in a fleet's `ssh_config`. It never creates machines: its
`create_instance` bootstraps the agent on a host the user already has, and `terminate` removes
it again.

Server <-> agent traffic goes only through a local port forward over the host's one SSH
connection (the agent listens on the host's loopback).

`Host.remote` holds what reaching the host takes: hostname, port, user, encrypted keys, the
proxy jump, the host key recorded at first connection, the agent's port and the fleet's env.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dstack.models.instances import InstanceType
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.server.backends.base import (
    BackendError,
    Capabilities,
    Compute,
    Host,
    OfferRequirements,
    Provisioning,
    Ready,
    Stream,
)
from dstack.server.backends.local import resources_from_host_info
from dstack.server.backends.ssh import deploy
from dstack.server.backends.ssh.connection import HostParams, SSHError, SSHPool, open_connection
from dstack.server.backends.ssh.transport import TunnelTransport


@dataclass
class Bootstrapped:
    host_key: str
    agent_port: int
    started: bool  # False: an agent from an earlier bootstrap was already running
    supervisor: str = "loop"  # systemd-system | systemd-user | loop (deploy.choose_supervisor)
    docker_note: str | None = None  # why jobs with `image` cannot run here (None: Docker works)


class SSHBackend(Compute):
    type = "ssh"
    capabilities = Capabilities(creates_instances=False, hosts_from_config=True)
    # After the bootstrap, the agent must answer through the tunnel within this.
    provisioning_timeout = 30.0

    def __init__(self, data_dir: Path, decrypt: Callable[[str], str]) -> None:
        self.data_dir = data_dir
        self.decrypt = decrypt
        self.pool = SSHPool()
        self._agent: bytes | None = None
        self._params: dict[str, tuple[str, HostParams]] = {}
        # Tests set this to hold a bootstrap after the agent started (server-restart test).
        self.pause_after_start = float(os.environ.get("DSTACK_SERVER_TEST_BOOTSTRAP_PAUSE", "0"))

    # -- Compute --------------------------------------------------------------------------

    async def offers(self, requirements: OfferRequirements) -> list[InstanceOfferWithAvailability]:
        return []  # hosts are added by applying a fleet configuration, never for a job

    async def create_instance(
        self, host: Host, offer: InstanceOfferWithAvailability | None
    ) -> Provisioning:
        """Install and start the agent (idempotent: a running one is kept)."""
        rc = dict(host.remote)
        params = self.params(rc)
        b = await self.bootstrap(
            params,
            host.known_host_key,
            host.agent_token or "",
            rc.get("project_public_key") or "",
        )
        rc.update(host_key=b.host_key, agent_port=b.agent_port, supervisor=b.supervisor)
        rc["docker_note"] = b.docker_note
        return Provisioning(
            agent_url=f"http://127.0.0.1:{b.agent_port}", hostname=params.hostname, remote=rc
        )

    async def ready(self, host: Host, info: dict[str, Any]) -> Ready:
        rc = host.remote
        blocks = total_blocks(rc.get("blocks", 1), info)
        info = dict(info)
        info["internal_ip"] = internal_ip(rc, info)
        info["supervisor"] = rc.get("supervisor") or "loop"
        if rc.get("docker_note"):
            info["docker"] = False
            info["docker_note"] = rc["docker_note"]
        resources = resources_from_host_info(info, rc["hostname"])
        offer = InstanceOfferWithAvailability(
            backend=self.type,
            instance=InstanceType(name=self.type, resources=resources),
            region="remote",
            price=0.0,
            availability=InstanceAvailability.AVAILABLE,
        )
        return Ready(host_info=info, offer=offer, total_blocks=blocks)

    async def diagnose(self, host: Host) -> str:
        rc = host.remote
        if not rc.get("hostname"):
            return ""
        try:
            _, out, _ = await self.pool.run(
                self.params(rc),
                rc.get("host_key"),
                f'tail -n 20 "$HOME"/{deploy.AGENT_DIR}/loop.log',
            )
        except SSHError:
            return ""
        return out.strip()

    async def terminate(self, host: Host) -> str | None:
        """Stop the agent and remove everything the bootstrap installed. An unreachable host
        is let go anyway; the note says what was left on it."""
        rc = host.remote
        if not rc.get("hostname"):
            return None
        params = self.params(rc)
        try:
            await self._must(
                params, rc.get("host_key"), deploy.stop_script(rc.get("project_public_key"))
            )
        except BackendError as e:
            return f"the host could not be cleaned up: {e}"
        finally:
            await self.pool.drop(params)  # the connection and its forwards go with the host
        return None

    def agent_transport(self, host: Host) -> httpx.AsyncBaseTransport | None:
        rc = host.remote
        if not rc.get("agent_port") or not rc.get("hostname"):
            raise BackendError(f"no agent port is recorded for {host.name} yet")
        params = self.params(rc)
        port = int(rc["agent_port"])

        async def local_port() -> int:
            return await self.pool.forward(params, rc.get("host_key"), port)

        return TunnelTransport(local_port)

    async def open_stream(self, host: Host, port: int) -> Stream:
        """A direct-tcpip channel over the host's pooled connection (through the fleet's proxy
        jump if it has one): the server's relay to a job's SSH server needs no login on the
        bastion or a route to the host."""
        rc = host.remote
        if not rc.get("hostname") or not rc.get("user"):
            raise BackendError(f"instance {host.name} has no SSH address recorded")
        return await self.pool.open_stream(self.params(rc), rc.get("host_key"), port)

    async def upstream(self, host: Host, port: int) -> tuple[str, int] | None:
        """A local forward over the host's pooled SSH connection to `port` on the host's
        loopback. The pool keeps each forward, so a request opens no new channel."""
        rc = host.remote
        if not rc.get("hostname") or not rc.get("user"):
            return None
        try:
            local = await self.pool.forward(self.params(rc), rc.get("host_key"), port)
        except BackendError:
            return None
        return "127.0.0.1", local

    def host_access(self, host: Host) -> dict[str, Any]:
        """The host as the fleet reaches it (address, port, user, its proxy_jump as
        `ssh_proxy` in the reference's shape); keys never."""
        rc = host.remote
        if not rc.get("hostname"):
            return super().host_access(host)
        proxy = rc.get("proxy") or None
        return {
            "hostname": rc["hostname"],
            "username": rc.get("user") or "root",
            "ssh_port": int(rc.get("port") or 22),
            "ssh_proxy": {
                "hostname": proxy["hostname"],
                "port": int(proxy.get("port") or 22),
                "username": proxy.get("user") or "root",
            }
            if proxy
            else None,
        }

    def host_label(self, host: Host) -> str:
        return host.remote.get("hostname") or host.hostname or host.name

    async def close(self) -> None:
        await self.pool.close()

    # -- SSH hosts --------------------------------------------------------------------------

    def params(self, rc: dict[str, Any]) -> HostParams:
        """Connection parameters from a host record (decrypted once per record version)."""
        raw = json.dumps(
            {
                k: rc.get(k)
                for k in ("hostname", "port", "user", "key_enc", "project_key_enc", "proxy")
            },
            sort_keys=True,
        )
        cached = self._params.get(raw)
        if cached is not None:
            return cached[1]
        keys = tuple(self.decrypt(k) for k in (rc.get("project_key_enc"), rc.get("key_enc")) if k)
        proxy = rc.get("proxy")
        params = HostParams(
            hostname=rc["hostname"],
            port=int(rc.get("port") or 22),
            user=rc["user"],
            private_keys=keys,
            proxy=HostParams(
                hostname=proxy["hostname"],
                port=int(proxy.get("port") or 22),
                user=proxy["user"],
                private_keys=(self.decrypt(proxy["key_enc"]),),
            )
            if proxy
            else None,
        )
        self._params[raw] = (raw, params)
        return params

    def agent_zipapp(self) -> bytes:
        """The agent as one file, built once per server process from the installed code."""
        if self._agent is None:
            from dstack.agent import zipapp

            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / "dstack-agent.pyz"
                zipapp.build(target)
                self._agent = target.read_bytes()
        return self._agent

    async def check_host(self, host: dict[str, Any], known_key: str | None) -> str:
        """Connect and authenticate to a host as the fleet service resolved it (plain keys),
        changing nothing on it; returns its host key."""
        proxy = host.get("proxy")
        params = HostParams(
            hostname=host["hostname"],
            port=int(host["port"]),
            user=host["user"],
            private_keys=(host["key"],),
            proxy=HostParams(proxy["hostname"], int(proxy["port"]), proxy["user"], (proxy["key"],))
            if proxy
            else None,
        )
        # Its own connection, closed at once: a pooled one may be serving a tunnel.
        conn, host_key = await open_connection(params, known_key)
        conn.close()
        return host_key

    async def bootstrap(
        self, params: HostParams, known_key: str | None, token: str, project_public_key: str
    ) -> Bootstrapped:
        _, host_key = await self.pool.connect(params, known_key)
        rc, out, err = await self.pool.run(params, host_key, deploy.CHECK_SCRIPT)
        facts = deploy.parse_facts(out)
        missing = deploy.missing_prerequisites(facts)
        if missing:
            raise BackendError(
                f"host {params.hostname} is missing prerequisites: " + "; ".join(missing)
            )
        await self._must(params, host_key, deploy.authorize_script(project_public_key))
        agent = await asyncio.to_thread(self.agent_zipapp)
        await self._must(params, host_key, deploy.upload_script(deploy.digest(agent)), agent)
        supervisor = deploy.choose_supervisor(facts)
        out = await self._must(
            params, host_key, deploy.start_script(supervisor, facts), (token + "\n").encode()
        )
        port = 0
        for line in out.splitlines():
            if line.startswith("port="):
                port = int(line.split("=", 1)[1] or 0)
        if not port:
            raise BackendError(f"could not pick a port for the agent on {params.hostname}: {out}")
        if self.pause_after_start:
            await asyncio.sleep(self.pause_after_start)
        return Bootstrapped(
            host_key=host_key,
            agent_port=port,
            started="started" in out,
            supervisor=supervisor,
            docker_note=deploy.docker_note(facts),
        )

    async def _must(
        self, params: HostParams, known_key: str | None, script: str, stdin: Any = None
    ) -> str:
        rc, out, err = await self.pool.run(params, known_key, script, stdin)
        if rc != 0:
            raise BackendError(
                f"bootstrap step failed on {params.hostname} (exit {rc}): {(err or out).strip()}"
            )
        return out


def internal_ip(rc: dict[str, Any], info: dict[str, Any]) -> str:
    """The address peers of a multi-node job use: the configured one, else the host's address
    in the fleet's `network`, else the address it was reached at."""
    if rc.get("internal_ip"):
        return rc["internal_ip"]
    network = rc.get("network")
    addresses = info.get("addresses") or []
    if network:
        net = ipaddress.ip_network(network, strict=False)
        for a in addresses:
            if ipaddress.ip_address(a) in net:
                return a
    if rc["hostname"] in addresses:
        return rc["hostname"]
    return addresses[0] if addresses else rc["hostname"]


def total_blocks(blocks: Any, info: dict[str, Any]) -> int:
    gpus = len(info.get("gpus") or [])
    cpus = int(info.get("cpus") or 1)
    if blocks == "auto":
        return min(cpus, gpus) if gpus else cpus
    n = int(blocks or 1)
    if n > 1 and (cpus % n or (gpus and gpus % n)):
        raise BackendError(
            f"blocks: {n} does not divide the host's {cpus} CPUs"
            + (f" and {gpus} GPUs" if gpus else "")
            + " evenly"
        )
    return n
