"""SSH fleet instances, as the instance reconciler drives them: bootstrap a pending host (agent
installed and healthy, resources read from its host_info), tear it down on termination, and
reach its agent through the SSH tunnel.

The instance row carries what reaching the host takes (`remote_connection` JSON: hostname,
port, user, encrypted keys, proxy jump, the host key recorded at first connection, the agent's
port and the fleet's env). The agent token is written when the row is created, so a bootstrap
repeated after a server restart talks to the agent the first attempt started.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from dstack.models.instances import InstanceType
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.models.wire import utcnow
from dstack.server.agent_client import AgentClient, AgentClientError
from dstack.server.backends.base import BackendError
from dstack.server.backends.local import resources_from_host_info
from dstack.server.backends.ssh.connection import HostParams
from dstack.server.backends.ssh.transport import TunnelTransport
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext

AGENT_READY_TIMEOUT = 30.0


def remote(inst: t.Instance) -> dict[str, Any]:
    return json.loads(inst.remote_connection or "{}")


def host_params(ctx: ServerContext, rc: dict[str, Any]) -> HostParams:
    keys = tuple(ctx.box.decrypt(k) for k in (rc.get("project_key_enc"), rc.get("key_enc")) if k)
    proxy = rc.get("proxy")
    return HostParams(
        hostname=rc["hostname"],
        port=int(rc.get("port") or 22),
        user=rc["user"],
        private_keys=keys,
        proxy=HostParams(
            hostname=proxy["hostname"],
            port=int(proxy.get("port") or 22),
            user=proxy["user"],
            private_keys=(ctx.box.decrypt(proxy["key_enc"]),),
        )
        if proxy
        else None,
    )


def tunnel_client(ctx: ServerContext, inst: t.Instance) -> AgentClient | None:
    rc = remote(inst)
    if not rc.get("agent_port") or not inst.agent_token_enc:
        return None
    backend = ctx.backends["ssh"]
    params = host_params(ctx, rc)
    port = int(rc["agent_port"])

    async def local_port() -> int:
        return await backend.tunnel_port(params, rc.get("host_key"), port)

    return AgentClient(
        f"http://127.0.0.1:{port}",
        ctx.box.decrypt(inst.agent_token_enc),
        transport=TunnelTransport(local_port),
    )


def upstream_resolver(
    ctx: ServerContext,
) -> Callable[[t.Job, t.Instance, int], Awaitable[tuple[str, int] | None]]:
    """How the proxy reaches a replica on an SSH host: a local forward over the host's pooled
    SSH connection to `port` on the host's loopback. The pool keeps each forward, so a request
    opens no new SSH channel setup; None while the host cannot be reached (no replica then)."""
    params_by_inst: dict[str, tuple[str, HostParams]] = {}

    async def resolve(job: t.Job, inst: t.Instance, port: int) -> tuple[str, int] | None:
        raw = inst.remote_connection or "{}"
        cached = params_by_inst.get(inst.id)
        if cached is None or cached[0] != raw:
            rc = json.loads(raw)
            if not rc.get("hostname") or not rc.get("user"):
                return None
            cached = (raw, host_params(ctx, rc))
            params_by_inst[inst.id] = cached
        backend = ctx.backends.get("ssh")
        if backend is None:
            return None
        try:
            local = await backend.tunnel_port(cached[1], remote(inst).get("host_key"), port)
        except BackendError:
            return None
        return "127.0.0.1", local

    return resolve


def stream_opener(ctx: ServerContext) -> Callable[[t.Instance, int], Awaitable[tuple[Any, Any]]]:
    """How the SSH relay reaches a job's SSH server on an SSH host: a direct-tcpip channel
    over the host's pooled connection (through the fleet's proxy jump if it has one), so a
    user needs no login on the bastion or a route to the host."""

    async def open_stream(inst: t.Instance, port: int) -> tuple[Any, Any]:
        rc = remote(inst)
        if not rc.get("hostname") or not rc.get("user"):
            raise BackendError(f"instance {inst.name} has no SSH address recorded")
        return await ctx.backends["ssh"].open_stream(host_params(ctx, rc), rc.get("host_key"), port)

    return open_stream


async def known_host_key(ctx: ServerContext, inst: t.Instance, rc: dict[str, Any]) -> str | None:
    """Trust on first use across fleets: the key this project's server saw at this address
    before (even on an instance deleted since), else None."""
    if rc.get("host_key"):
        return rc["host_key"]
    async with ctx.db.session() as s:
        rows = (
            await s.execute(
                select(t.Instance.remote_connection)
                .where(
                    t.Instance.project_id == inst.project_id,
                    t.Instance.backend == "ssh",
                    t.Instance.hostname == inst.hostname,
                    t.Instance.id != inst.id,
                )
                .order_by(t.Instance.created_at.desc())
            )
        ).scalars()
        for raw in rows:
            other = json.loads(raw or "{}")
            if other.get("host_key") and int(other.get("port") or 22) == int(rc.get("port") or 22):
                return other["host_key"]
    return None


def _internal_ip(rc: dict[str, Any], info: dict[str, Any]) -> str:
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


async def bootstrap(
    ctx: ServerContext, inst: t.Instance, registry: Any
) -> tuple[str, str | None, dict[str, Any]]:
    """(new status, termination reason, column values) for a pending SSH instance."""
    backend = ctx.backends["ssh"]
    rc = remote(inst)
    try:
        params = host_params(ctx, rc)
        known = await known_host_key(ctx, inst, rc)
        token = ctx.box.decrypt(inst.agent_token_enc or "")
        b = await backend.bootstrap(params, known, token, rc.get("project_public_key") or "")
        rc["host_key"], rc["agent_port"] = b.host_key, b.agent_port
        inst.remote_connection = json.dumps(rc)
        inst.agent_url = f"http://127.0.0.1:{b.agent_port}"
        await registry.forget(inst.id)
        client = registry.client(inst)
        info = await _wait_agent(client, AGENT_READY_TIMEOUT)
        if info is None:
            log = await backend.agent_log(params, b.host_key)
            raise BackendError(
                f"the agent on {params.hostname} did not answer within "
                f"{AGENT_READY_TIMEOUT:.0f}s"
                + (f"; its log ends with: {log.strip()}" if log else "")
            )
        blocks = total_blocks(rc.get("blocks", 1), info)
    except (BackendError, AgentClientError, KeyError, ValueError) as e:
        values: dict[str, Any] = {"termination_reason_message": str(e), "finished_at": utcnow()}
        if rc.get("host_key"):
            values["remote_connection"] = json.dumps(rc)
        return "terminated", "error", values
    info["internal_ip"] = _internal_ip(rc, info)
    info["supervisor"] = b.supervisor
    if b.docker_note:
        info["docker"] = False
        info["docker_note"] = b.docker_note
    resources = resources_from_host_info(info).model_copy(update={"description": params.hostname})
    offer = InstanceOfferWithAvailability(
        backend="ssh",
        instance=InstanceType(name="ssh", resources=resources),
        region="remote",
        price=0.0,
        availability=InstanceAvailability.AVAILABLE,
    )
    return (
        "idle",
        None,
        {
            "agent_url": inst.agent_url,
            "remote_connection": inst.remote_connection,
            "host_info": json.dumps(info),
            "offer": offer.model_dump_json(),
            "total_blocks": blocks,
            "started_at": utcnow(),
            "unreachable": False,
        },
    )


async def _wait_agent(client: AgentClient | None, timeout: float) -> dict[str, Any] | None:
    if client is None:
        return None
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.05
    while True:
        try:
            await client.healthcheck()
            return await client.host_info()
        except AgentClientError:
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def teardown(ctx: ServerContext, inst: t.Instance) -> str | None:
    """Stop the agent and clean the host; returns a note when the host could not be cleaned
    (unreachable): the instance is terminated anyway, the note says what was left."""
    rc = remote(inst)
    if not rc:
        return None
    backend = ctx.backends["ssh"]
    try:
        await backend.teardown(
            host_params(ctx, rc), rc.get("host_key"), rc.get("project_public_key")
        )
    except BackendError as e:
        return f"the host could not be cleaned up: {e}"
    return None
