"""Volumes in runs: which volume each of a job's mounts names, where that volume lives and who
holds it, as the scheduler's `VolumeLocation`s. Read by the plan, `apply` and placement alike,
so what the plan shows is what placement does.

A mount names alternatives (`name: [a, b]`): any one of them, the first usable where the job
goes. A name that matches no volume of the project refuses the run (it would otherwise start
with nothing mounted); a volume that failed is refused; one not created yet makes the job wait.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ServerClientError
from dstack.models.runs import JobSpec, JobStatus
from dstack.models.volumes import AttachmentStatus, VolumeStatus
from dstack.server.db import tables as t
from dstack.server.scheduler.placement import Requirements, VolumeLocation
from dstack.server.services.context import ServerContext
from dstack.server.services.hosts import capabilities

LIVE_ATTACHMENT = tuple(
    s.value for s in (AttachmentStatus.ATTACHING, AttachmentStatus.ATTACHED,
                      AttachmentStatus.DETACHING)
)  # fmt: skip
UNFINISHED_JOBS = tuple(s.value for s in JobStatus if not s.is_finished())

Mounts = tuple[tuple[VolumeLocation, ...], ...]


def named_mounts(spec: JobSpec) -> list[dict[str, Any]]:
    return [m for m in spec.volumes or [] if "name" in m]


def instance_mounts(spec: JobSpec) -> list[dict[str, Any]]:
    return [m for m in spec.volumes or [] if "instance_path" in m]


async def volume_locations(
    ctx: ServerContext, s: AsyncSession, project_id: str, spec: JobSpec, job_id: str | None
) -> Mounts:
    """Per named mount of `spec`, its usable alternatives; ServerClientError (naming the
    volume) when none of a mount's names is a volume that can be mounted. `job_id`: the job
    being placed (its own attachments do not make it wait)."""
    mounts = named_mounts(spec)
    if not mounts:
        return ()
    names = sorted({n for m in mounts for n in m["name"]})
    rows = (
        await s.execute(
            select(t.Volume).where(
                t.Volume.project_id == project_id,
                t.Volume.name.in_(names),
                t.Volume.deleted.is_(False),
            )
        )
    ).scalars()
    by_name = {v.name: v for v in rows}
    holders = await _holders(s, [v.id for v in by_name.values()], job_id)
    fleets = await _fleet_names(s, {v.fleet_id for v in by_name.values() if v.fleet_id})
    out = []
    for m in mounts:
        alternatives, failed = [], []
        for name in m["name"]:
            v = by_name.get(name)
            if v is None or v.to_be_deleted:
                continue
            if v.status == VolumeStatus.FAILED.value:
                failed.append(v)
                continue
            alternatives.append(_location(ctx, v, fleets, holders))
        if not alternatives:
            raise _refusal(m, failed)
        out.append(tuple(alternatives))
    return tuple(out)


def _refusal(mount: dict[str, Any], failed: list[t.Volume]) -> ServerClientError:
    if failed:
        v = failed[0]
        why = f": {v.status_message}" if v.status_message else ""
        return ServerClientError(
            f"volume {v.name} failed{why}; the run cannot mount it at {mount['path']} "
            "(the run is refused, not started without it)",
            field="configuration.volumes",
        )
    names = ", ".join(mount["name"])
    one = len(mount["name"]) == 1
    return ServerClientError(
        f"volume{'' if one else 's'} {names} not found in the project: "
        f"{'it' if one else 'none'} cannot be mounted at {mount['path']}; create it with "
        "`dstack apply` (type: volume) or fix the name",
        field="configuration.volumes",
    )


def _location(
    ctx: ServerContext,
    v: t.Volume,
    fleets: dict[str, str],
    holders: dict[str, tuple[str, str]],
) -> VolumeLocation:
    held = holders.get(v.id) if v.backend else None
    pending = v.status != VolumeStatus.ACTIVE.value
    if v.backend:
        return VolumeLocation(
            volume_id=v.id,
            name=v.name,
            backend=v.backend,
            region=v.region or "",
            availability_zone=v.availability_zone,
            in_use_on=held[0] if held else None,
            in_use_by=held[1] if held else None,
            pending=pending,
        )
    bound = json.loads(v.provisioning_data or "{}").get("host_key")
    host_backend = None
    if bound:
        backend = bound.split(":", 1)[0]
        if capabilities(ctx, backend, v.project_id).single_instance:
            host_backend = backend
    return VolumeLocation(
        volume_id=v.id,
        name=v.name,
        fleet_name=fleets.get(v.fleet_id or "", v.fleet_id),
        host_key=bound,
        host_backend=host_backend,
        pending=pending,
    )


async def _fleet_names(s: AsyncSession, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    rows = await s.execute(select(t.Fleet.id, t.Fleet.name).where(t.Fleet.id.in_(list(ids))))
    return {fid: name for fid, name in rows.all()}


async def _holders(
    s: AsyncSession, volume_ids: list[str], job_id: str | None
) -> dict[str, tuple[str, str]]:
    """Volume id -> (instance id, who) for volumes another job holds: a live attachment, or
    a job placed with it that has not attached it yet (two jobs placed one after the other
    must not both take it)."""
    if not volume_ids:
        return {}
    out: dict[str, tuple[str, str]] = {}
    rows = await s.execute(
        select(t.VolumeAttachment, t.Job.job_name)
        .outerjoin(t.Job, t.Job.id == t.VolumeAttachment.job_id)
        .where(
            t.VolumeAttachment.volume_id.in_(volume_ids),
            t.VolumeAttachment.status.in_(LIVE_ATTACHMENT),
        )
    )
    for a, job_name in rows.all():
        if a.job_id != job_id:
            out.setdefault(a.volume_id, (a.instance_id, f"job {job_name or a.job_id}"))
    jobs = await s.execute(
        select(t.Job).where(
            t.Job.status.in_(UNFINISHED_JOBS),
            t.Job.instance_id.is_not(None),
            t.Job.volumes.is_not(None),
        )
    )
    wanted = set(volume_ids)
    for j in jobs.scalars():
        if j.id == job_id:
            continue
        for entry in json.loads(j.volumes or "[]"):
            if entry.get("volume_id") in wanted:
                out.setdefault(entry["volume_id"], (j.instance_id, f"job {j.job_name}"))
    return out


def with_volumes(req: Requirements, mounts: Mounts) -> Requirements:
    return replace(req, volumes=mounts) if mounts else req


def placed_volumes(spec: JobSpec, mounts: Mounts, chosen: tuple[str, ...]) -> str | None:
    """`t.Job.volumes` for the place chosen: per named mount the volume taken, where it is
    mounted and what kind it is (the attach step and the agent's mount entries read it)."""
    if not chosen:
        return None
    out = []
    for mount, alternatives, volume_id in zip(named_mounts(spec), mounts, chosen, strict=True):
        loc = next(v for v in alternatives if v.volume_id == volume_id)
        out.append(
            {
                "volume_id": loc.volume_id,
                "name": loc.name,
                "path": mount["path"],
                "kind": "network" if loc.backend else "directory",
                "availability_zone": loc.availability_zone,
            }
        )
    return json.dumps(out)


async def check_run_volumes(
    ctx: ServerContext, s: AsyncSession, project_id: str, specs: list[JobSpec]
) -> list[Mounts]:
    """Every job's volumes resolved (each node may name its own): refuses the run at plan or
    `apply` when one cannot be mounted."""
    return [await volume_locations(ctx, s, project_id, js, None) for js in specs]
