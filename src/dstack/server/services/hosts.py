"""An instance row as its backend sees it, and the few questions every layer asks a backend
about a host (how to reach a port, how the user's ssh gets there, what to call it). This is the
one bridge from rows to the compute interface: nothing here names a backend."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.backends.base import BackendError, Capabilities, Compute, Host, Stream
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext
from dstack.server.services.ssh_keys import project_keypair

NO_CAPABILITIES = Capabilities(creates_instances=False, docker=False, multinode=False)


def host_of(inst: t.Instance, decrypt: Any = None) -> Host:
    """`decrypt` given: the agent token is decrypted into the record (backends that restart or
    bootstrap the agent need it); otherwise it stays out."""
    token = decrypt(inst.agent_token_enc) if decrypt and inst.agent_token_enc else None
    return Host(
        instance_id=inst.id,
        project_id=inst.project_id,
        name=inst.name,
        hostname=inst.hostname,
        agent_url=inst.agent_url,
        agent_token=token,
        agent_pid=inst.agent_pid,
        remote=json.loads(inst.remote_connection or "{}"),
        host_info=json.loads(inst.host_info or "{}"),
    )


def host_key(inst: t.Instance) -> str:
    """The machine an instance row stands for, across rows: a directory volume stays on a
    machine when the row holding it is replaced (an SSH host re-added, the local instance
    created again after an idle timeout)."""
    return f"{inst.backend}:{inst.hostname or inst.name}"


def backend_of(ctx: ServerContext, inst: t.Instance) -> Compute | None:
    """The instance's backend as its project sees it (a project's cloud backends are its own)."""
    return ctx.backends.get(inst.backend, inst.project_id)


def capabilities(ctx: ServerContext, backend_type: str | None, project_id: str) -> Capabilities:
    backend = ctx.backends.get(backend_type, project_id)
    return backend.capabilities if backend is not None else NO_CAPABILITIES


def hosts_backend(ctx: ServerContext, project_id: str) -> Compute | None:
    """The backend whose hosts a fleet lists in `ssh_config`."""
    backends = ctx.backends.for_project(project_id).values()
    return next((b for b in backends if b.capabilities.hosts_from_config), None)


async def upstream(ctx: ServerContext, inst: t.Instance, port: int) -> tuple[str, int] | None:
    backend = backend_of(ctx, inst)
    if backend is None:
        return None
    return await backend.upstream(host_of(inst), port)


async def open_stream(ctx: ServerContext, inst: t.Instance, port: int) -> Stream:
    backend = backend_of(ctx, inst)
    if backend is None:
        raise BackendError(f"backend {inst.backend} is not configured on this server")
    return await backend.open_stream(host_of(inst), port)


def host_access(ctx: ServerContext, inst: t.Instance) -> dict[str, Any]:
    backend = backend_of(ctx, inst)
    host = host_of(inst)
    if backend is None:
        return {"hostname": inst.hostname or "", "username": "root", "ssh_port": 22}
    return backend.host_access(host)


def host_label(ctx: ServerContext, inst: t.Instance) -> str:
    backend = backend_of(ctx, inst)
    return backend.host_label(host_of(inst)) if backend else (inst.hostname or inst.name)


async def known_host_key(
    s: AsyncSession, project_id: str, hostname: str, port: int, exclude_id: str | None = None
) -> str | None:
    """Trust on first use across fleets: the host key this project's server recorded for
    hostname:port before (even on an instance deleted since), else None."""
    q = (
        select(t.Instance.remote_connection)
        .where(t.Instance.project_id == project_id, t.Instance.hostname == hostname)
        .order_by(t.Instance.created_at.desc())
    )
    if exclude_id:
        q = q.where(t.Instance.id != exclude_id)
    for raw in (await s.execute(q)).scalars():
        rc = json.loads(raw or "{}")
        if rc.get("host_key") and int(rc.get("port") or 22) == int(port):
            return rc["host_key"]
    return None


@dataclass
class CreateContext:
    """What a backend that creates hosts needs beyond the row: the project's key (to reach the
    host) and what the fleet and the job asked of it (disk, price limit, reservation)."""

    project_key_enc: str | None
    project_public_key: str | None
    request: dict[str, Any]

    def fill(self, host: Host) -> None:
        host.project_key_enc = self.project_key_enc
        host.project_public_key = self.project_public_key
        host.request = dict(self.request)


async def create_context(ctx: ServerContext, s: AsyncSession, inst: t.Instance) -> CreateContext:
    project = await s.get(t.Project, inst.project_id)
    public = None
    if project is not None:
        had = bool(project.ssh_private_key)
        _, public = await project_keypair(s, ctx.box, project)
        if not had:
            await s.commit()
    request: dict[str, Any] = {}
    fleet = await s.get(t.Fleet, inst.fleet_id) if inst.fleet_id else None
    conf = json.loads(fleet.spec).get("configuration", {}) if fleet else {}
    job = await s.get(t.Job, inst.provisioning_job_id) if inst.provisioning_job_id else None
    job_spec = json.loads(job.job_spec) if job else {}
    wanted = job_spec.get("requirements", {})
    if job_spec.get("max_duration"):
        # A scheduler that enforces run time itself (Slurm's --time) is told the limit.
        request["max_duration"] = int(job_spec["max_duration"])
    least = _least(wanted.get("resources"))
    if least:
        request["resources"] = least
    disk = _disk_min_gb(wanted.get("resources")) or _disk_min_gb(conf.get("resources"))
    if disk:
        request["disk_gb"] = disk
    for key in ("max_price", "reservation"):
        value = wanted.get(key) if wanted.get(key) is not None else conf.get(key)
        if value is not None:
            request[key] = value
    if conf.get("placement"):
        request["placement"] = conf["placement"]
        request["fleet"] = fleet.name if fleet else None
    run_conf = await _run_configuration(s, job)
    tags = {**(conf.get("tags") or {}), **(run_conf.get("tags") or {})}
    if tags:
        request["tags"] = tags
    zones = run_conf.get("availability_zones") or conf.get("availability_zones")
    # A network volume the job mounts is in one zone: the instance must be created there.
    volume_zones = [
        e["availability_zone"]
        for e in json.loads(job.volumes or "[]" if job else "[]")
        if e.get("availability_zone")
    ]
    if volume_zones:
        zones = volume_zones[:1]
    if zones:
        request["availability_zones"] = list(zones)
    return CreateContext(project.ssh_private_key if project else None, public, request)


async def _run_configuration(s: AsyncSession, job: t.Job | None) -> dict[str, Any]:
    run = await s.get(t.Run, job.run_id) if job else None
    return json.loads(run.run_spec).get("configuration", {}) if run else {}


def _least(resources: dict[str, Any] | None) -> dict[str, int]:
    """The least the job accepts (its ranges' lower ends): a backend that can hand out part
    of a machine (a Slurm allocation) asks for this, not for the whole offer."""
    if not resources:
        return {}
    cpu = ((resources.get("cpu") or {}).get("count") or {}).get("min")
    memory = (resources.get("memory") or {}).get("min")
    gpus = ((resources.get("gpu") or {}).get("count") or {}).get("min")
    out = {}
    if cpu:
        out["cpus"] = int(cpu)
    if memory:
        out["memory_mib"] = int(float(memory) * 1024)
    if gpus is not None:
        out["gpus"] = int(gpus)
    return out


def _disk_min_gb(resources: dict[str, Any] | None) -> int | None:
    """The smallest disk the requirements accept, in GB (the configuration's unit)."""
    disk = (resources or {}).get("disk") or {}
    size = disk.get("size") if isinstance(disk, dict) else None
    low = size.get("min") if isinstance(size, dict) else None
    return int(float(low)) if low else None
