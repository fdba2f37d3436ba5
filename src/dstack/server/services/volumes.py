"""Volumes as the API shows them, who uses them, and deletion requests.

Deleting is a request (`to_be_deleted`); the volume reconciler carries it out once nothing
holds the volume. So the refusals a user must see at once (a run still has it mounted,
dstack#3789; the host holding a directory volume is gone) are said here, in the request, with
the run or instance named; the reconciler only ever waits.

For the job side (placement, attach, detach): `find_volume(s, project_id, name)` is the one
way to look a volume up by name, and `is_usable(row)` says whether a run may mount it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ResourceNotExistsError, ServerClientError
from dstack.models.volumes import AttachmentStatus, Volume, VolumeStatus
from dstack.models.volumes_config import VolumeConfiguration
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.hosts import host_key
from dstack.server.services.pool import FINISHED_JOB_STATUSES, LIVE_INSTANCE_STATUSES

# An attachment in one of these holds the volume: it cannot be deleted or attached elsewhere.
LIVE_ATTACHMENT_STATUSES = tuple(
    s.value
    for s in (AttachmentStatus.ATTACHING, AttachmentStatus.ATTACHED, AttachmentStatus.DETACHING)
)
# A detach not done after this long is stuck (dstack#2218): the attachment says so, and
# `dstack volume delete --force` may mark it detached.
DETACH_STUCK_SECONDS = 600.0


def volume_conf(row: t.Volume) -> VolumeConfiguration:
    return VolumeConfiguration.model_validate(json.loads(row.configuration))


def is_usable(row: t.Volume) -> bool:
    """A run may mount it: created (or registered) and not on its way out."""
    return row.status == VolumeStatus.ACTIVE.value and not row.deleted and not row.to_be_deleted


async def find_volume(s: AsyncSession, project_id: str, name: str) -> t.Volume | None:
    """The project's volume of that name that is not deleted (at most one: a unique index)."""
    q = select(t.Volume).where(
        t.Volume.project_id == project_id, t.Volume.name == name, t.Volume.deleted.is_(False)
    )
    return (await s.execute(q)).scalar_one_or_none()


async def attachments_of(s: AsyncSession, volume_ids: list[str]) -> list[t.VolumeAttachment]:
    if not volume_ids:
        return []
    q = (
        select(t.VolumeAttachment)
        .where(t.VolumeAttachment.volume_id.in_(volume_ids))
        .order_by(t.VolumeAttachment.requested_at)
    )
    return list((await s.execute(q)).scalars())


async def active_jobs_using(s: AsyncSession, volume_id: str) -> list[t.Job]:
    """Unfinished jobs whose placement chose this volume (`jobs.volumes`): a directory volume
    in use may have no attachment row."""
    q = select(t.Job).where(
        t.Job.volumes.contains(volume_id), t.Job.status.not_in(FINISHED_JOB_STATUSES)
    )
    return [
        j
        for j in (await s.execute(q)).scalars()
        if any(v.get("volume_id") == volume_id for v in json.loads(j.volumes or "[]"))
    ]


def is_stuck(a: t.VolumeAttachment, now: datetime) -> bool:
    since = a.detach_requested_at
    return (
        a.status == AttachmentStatus.DETACHING.value
        and since is not None
        and now - since > timedelta(seconds=DETACH_STUCK_SECONDS)
    )


async def holder_instance(s: AsyncSession, volume: t.Volume) -> t.Instance | None:
    """The live instance whose machine holds a bound directory volume: the row it was bound to,
    or a later row for the same machine (the local instance created again, an SSH host re-added)."""
    if volume.instance_id is None:
        return None
    inst = await s.get(t.Instance, volume.instance_id)
    if inst is not None and inst.status in LIVE_INSTANCE_STATUSES and not inst.deleted:
        return inst
    key = json.loads(volume.provisioning_data or "{}").get("host_key")
    q = select(t.Instance).where(
        t.Instance.project_id == volume.project_id,
        t.Instance.status.in_(LIVE_INSTANCE_STATUSES),
        t.Instance.deleted.is_(False),
    )
    return next((i for i in (await s.execute(q)).scalars() if host_key(i) == key), None)


# -- the API's view ----------------------------------------------------------------------


async def _attachment_models(
    s: AsyncSession, rows: list[t.VolumeAttachment]
) -> list[dict[str, Any]]:
    out = []
    for a in rows:
        inst = await s.get(t.Instance, a.instance_id)
        fleet = await s.get(t.Fleet, inst.fleet_id) if inst and inst.fleet_id else None
        job = await s.get(t.Job, a.job_id) if a.job_id else None
        out.append(
            {
                "instance": {
                    "id": a.instance_id,
                    "name": inst.name if inst else None,
                    "fleet_name": fleet.name if fleet else None,
                    "status": inst.status if inst else None,
                },
                "job": {"id": job.id, "name": job.job_name} if job else None,
                "status": a.status,
                "device": a.device,
                "message": a.message,
                "attached_at": a.attached_at.isoformat() if a.attached_at else None,
                "detached_at": a.detached_at.isoformat() if a.detached_at else None,
            }
        )
    return out


async def volume_model(s: AsyncSession, row: t.Volume, project: t.Project) -> Volume:
    user = await s.get(t.User, row.user_id)
    pd = json.loads(row.provisioning_data) if row.provisioning_data else {}
    if row.backend is not None:
        pd = {
            **pd,
            "backend": row.backend,
            "region": row.region,
            "availability_zone": row.availability_zone,
            "size_gb": row.size_gb,
            "volume_id": row.external_id,
        }
    fleet = await s.get(t.Fleet, row.fleet_id) if row.fleet_id else None
    if fleet is not None:
        pd = {**pd, "fleet_name": fleet.name}
    return Volume(
        id=row.id,
        name=row.name,
        project_name=project.name,
        user=user.name if user else None,
        configuration=json.loads(row.configuration),
        external=row.external,
        created_at=row.created_at,
        status=row.status,
        status_message=row.status_message,
        deleted=row.deleted,
        to_be_deleted=row.to_be_deleted,
        generation=row.generation or 1,
        volume_id=row.external_id,
        provisioning_data=pd or None,
        attachments=await _attachment_models(s, await attachments_of(s, [row.id])),
    )


async def list_volumes(s: AsyncSession, project: t.Project) -> list[Volume]:
    q = (
        select(t.Volume)
        .where(t.Volume.project_id == project.id, t.Volume.deleted.is_(False))
        .order_by(t.Volume.created_at.desc())
    )
    return [await volume_model(s, v, project) for v in (await s.execute(q)).scalars()]


async def get_volume(s: AsyncSession, project: t.Project, name: str) -> Volume:
    row = await find_volume(s, project.id, name)
    if row is None:
        raise ResourceNotExistsError(f"Volume {name} does not exist", field="name")
    return await volume_model(s, row, project)


# -- delete ------------------------------------------------------------------------------


async def _users(s: AsyncSession, volume: t.Volume, now: datetime, force: bool) -> list[str]:
    """What holds the volume, as the refusal names it; with `force`, detaches stuck past the
    timeout are marked done (the attachment row is the only thing written)."""
    held = []
    for a in await attachments_of(s, [volume.id]):
        if a.status not in LIVE_ATTACHMENT_STATUSES:
            continue
        if force and is_stuck(a, now):
            a.status = AttachmentStatus.DETACHED.value
            a.detached_at = now
            a.message = f"marked detached by `volume delete --force` ({a.message or 'stuck'})"
            continue
        inst = await s.get(t.Instance, a.instance_id)
        job = await s.get(t.Job, a.job_id) if a.job_id else None
        run = await s.get(t.Run, job.run_id) if job else None
        who = f"run {run.run_name}" if run else "no run"
        hint = ""
        if a.status == AttachmentStatus.DETACHING.value:
            hint = " (detaching" + ("; stuck: use --force" if is_stuck(a, now) else "") + ")"
        held.append(f"{who} on instance {inst.name if inst else a.instance_id}{hint}")
    for job in await active_jobs_using(s, volume.id):
        run = await s.get(t.Run, job.run_id)
        desc = f"run {run.run_name if run else job.run_id} (job {job.job_name}, {job.status})"
        if not any(d.startswith(f"run {run.run_name if run else ''} ") for d in held):
            held.append(desc)
    return held


async def _holder_gone(s: AsyncSession, volume: t.Volume) -> str | None:
    """Why a bound directory volume's directory cannot be removed now (None: it can)."""
    if volume.fleet_id is None or volume.instance_id is None:
        return None
    holder = await holder_instance(s, volume)
    if holder is None:
        return "the machine holding its directory is gone"
    if holder.unreachable:
        return f"the agent of instance {holder.name}, which holds its directory, does not answer"
    return None


async def delete_volumes(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    names: list[str],
    force: bool = False,
) -> None:
    """Ask for each volume's deletion, all or none: any refusal leaves every volume as it was."""
    now = utcnow()
    rows = []
    for name in names:
        row = await find_volume(s, project.id, name)
        if row is None:
            raise ResourceNotExistsError(f"Volume {name} does not exist", field="names")
        held = await _users(s, row, now, force)
        if held:
            raise ServerClientError(
                f"Volume {name} is in use by {'; '.join(held)}: stop the run first "
                "(volumes are deleted once nothing has them attached)",
                field="names",
            )
        gone = await _holder_gone(s, row)
        if gone and not force:
            raise ServerClientError(
                f"Volume {name} cannot be deleted: {gone}, so its directory cannot be removed. "
                "`dstack volume delete --force` forgets the volume (the directory stays there)",
                field="names",
            )
        rows.append(row)
    for row in rows:
        if row.to_be_deleted and (row.force_delete or not force):
            continue
        row.to_be_deleted = True
        row.force_delete = row.force_delete or force
        row.dirty = True
        row.next_attempt_at = None
        row.attempts = 0
        events.record(
            s,
            project_id=project.id,
            target_type="volume",
            target_id=row.id,
            target_name=row.name,
            message="Volume deletion requested" + (" (forced)" if force else ""),
            now=now,
            actor=user.name,
        )
    await s.commit()
    ctx.hub.wake("volumes")
