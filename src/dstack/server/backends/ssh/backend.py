"""The `ssh` backend: hosts listed in a fleet's `ssh_config`. It never creates machines; it
bootstraps the agent on a host the user already has, and removes it again.

Server <-> agent traffic goes only through a local port forward over the host's one SSH
connection (the agent listens on the host's loopback).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.backends.base import Backend, BackendError, ProvisionedInstance
from dstack.server.backends.ssh import deploy
from dstack.server.backends.ssh.connection import HostParams, SSHError, SSHPool, open_connection


@dataclass
class Bootstrapped:
    host_key: str
    agent_port: int
    started: bool  # False: an agent from an earlier bootstrap was already running
    supervisor: str = "loop"  # systemd-system | systemd-user | loop (deploy.choose_supervisor)
    docker_note: str | None = None  # why jobs with `image` cannot run here (None: Docker works)


class SSHBackend(Backend):
    type = "ssh"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.pool = SSHPool()
        self._agent: bytes | None = None
        # Tests set this to hold a bootstrap after the agent started (server-restart test).
        self.pause_after_start = float(os.environ.get("DSTACK_SERVER_TEST_BOOTSTRAP_PAUSE", "0"))

    # -- Backend interface: SSH hosts are not created, they are bootstrapped -----------------

    async def offers(self) -> list[InstanceOfferWithAvailability]:
        return []

    async def create_instance(
        self, instance_id: str, offer: InstanceOfferWithAvailability
    ) -> ProvisionedInstance:
        raise BackendError("SSH fleet instances are added by applying the fleet configuration")

    async def terminate_instance(self, instance_id: str, agent_pid: int | None) -> None:
        raise BackendError("SSH fleet instances are removed with teardown()")

    # -- SSH hosts --------------------------------------------------------------------------

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
        """`check` for a host as the fleet service resolved it (plain keys, not encrypted)."""
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

    async def check(self, params: HostParams, known_key: str | None) -> str:
        """Connect and authenticate, changing nothing on the host; returns its host key."""
        _, host_key = await self.pool.connect(params, known_key)
        return host_key

    async def bootstrap(
        self, params: HostParams, known_key: str | None, token: str, project_public_key: str
    ) -> Bootstrapped:
        """Install and start the agent (idempotent: a running one is kept)."""
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

    async def tunnel_port(self, params: HostParams, known_key: str | None, agent_port: int) -> int:
        return await self.pool.forward(params, known_key, agent_port)

    async def open_stream(
        self, params: HostParams, known_key: str | None, port: int
    ) -> tuple[Any, Any]:
        """(reader, writer) of a TCP stream to `port` on the host's loopback: the server's
        relay to a job's SSH server (`dstack ssh-proxy`)."""
        return await self.pool.open_stream(params, known_key, port)

    async def agent_log(self, params: HostParams, known_key: str | None) -> str:
        try:
            _, out, _ = await self.pool.run(
                params, known_key, f'tail -n 20 "$HOME"/{deploy.AGENT_DIR}/loop.log'
            )
        except SSHError:
            return ""
        return out

    async def teardown(
        self, params: HostParams, known_key: str | None, project_public_key: str | None
    ) -> None:
        """Stop the agent and remove everything the bootstrap installed."""
        await self._must(params, known_key, deploy.stop_script(project_public_key))
        await self.pool.drop(params)

    async def agent_info(self, params: HostParams, known_key: str | None) -> dict[str, Any]:
        _, out, _ = await self.pool.run(params, known_key, deploy.agent_pid_script())
        try:
            return json.loads(out) if out.strip() else {}
        except ValueError:
            return {}

    async def _must(
        self, params: HostParams, known_key: str | None, script: str, stdin: Any = None
    ) -> str:
        rc, out, err = await self.pool.run(params, known_key, script, stdin)
        if rc != 0:
            raise BackendError(
                f"bootstrap step failed on {params.hostname} (exit {rc}): {(err or out).strip()}"
            )
        return out

    async def close(self) -> None:
        await self.pool.close()
