"""An instance row as its backend sees it, and the few questions every layer asks a backend
about a host (how to reach a port, how the user's ssh gets there, what to call it). This is the
one bridge from rows to the compute interface: nothing here names a backend."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.backends.base import BackendError, Capabilities, Compute, Host, Stream
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext

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
