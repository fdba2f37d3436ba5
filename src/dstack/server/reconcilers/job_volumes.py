"""The job's volumes on its instance: attach before the job starts, detach after it stopped.

Backend calls (`attach_volume`, `detach_volume`, `is_volume_detached`) happen outside any
transaction; the attachment row says where each step is (`attaching` is written before the
call, so a crash in between is found and retried, never lost). A network volume is attached
for the job only once its instance is up (never to an instance that cannot run the job yet),
and detached only once the agent has stopped the job. Several jobs on one instance may share
one attachment: the volume is detached from it when the last of them ends (never under a job
still using it).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from dstack.models.instances import InstanceStatus
from dstack.models.runs import JobSpec, JobStatus
from dstack.models.volumes import AttachmentStatus
from dstack.models.wire import utcnow
from dstack.server.backends.base import BackendError, VolumeSpec
from dstack.server.db import tables as t
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.hosts import backend_of, host_key, host_of
from dstack.server.services.job_volumes import LIVE_ATTACHMENT, UNFINISHED_JOBS, instance_mounts

# A detach that has not completed after this long is given up on: the attachment stays
# `detaching` with a message (the user may force-delete the volume) and the job finishes.
DETACH_TIMEOUT = timedelta(minutes=10)
_ATTACHED = (AttachmentStatus.ATTACHING.value, AttachmentStatus.ATTACHED.value)
_USING = tuple(s for s in UNFINISHED_JOBS if s != JobStatus.TERMINATING.value)


@dataclass
class Mounted:
    """What the attach step found: the agent's volume entries, or why the job fails
    (`error`) or must wait (`waiting`)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    waiting: str | None = None


def volume_spec(v: t.Volume) -> VolumeSpec:
    conf = json.loads(v.configuration or "{}")
    return VolumeSpec(
        volume_id=v.id,
        project_id=v.project_id,
        name=v.name,
        region=v.region,
        availability_zone=v.availability_zone,
        size_gb=v.size_gb,
        external_id=v.external_id,
        tags={str(k): str(val) for k, val in (conf.get("tags") or {}).items()},
        data=json.loads(v.provisioning_data or "{}"),
    )


def instance_entries(spec: JobSpec) -> list[dict[str, Any]]:
    return [
        {
            "kind": "instance",
            "instance_path": m["instance_path"],
            "path": m["path"],
            "optional": bool(m.get("optional")),
            "read_only": bool(m.get("read_only")),
        }
        for m in instance_mounts(spec)
    ]


class VolumeSteps:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    # -- attach ------------------------------------------------------------------------

    async def attach(self, job: t.Job, spec: JobSpec, inst: t.Instance) -> Mounted:
        """Every volume of the job ready on `inst`, in mount order."""
        out = Mounted()
        for entry in json.loads(job.volumes or "[]"):
            async with self.ctx.db.session() as s:
                v = await s.get(t.Volume, entry["volume_id"])
            if v is None or v.deleted or v.to_be_deleted:
                out.error = f"volume {entry['name']} was deleted before the job started"
                return out
            if entry.get("kind") == "directory":
                error = await self._bind(v, inst)
                if error:
                    out.error = error
                    return out
                out.entries.append(
                    {"kind": "directory", "volume_id": v.id, "name": v.name,
                     "path": entry["path"]}
                )  # fmt: skip
                continue
            device, error, waiting = await self._attach_network(job, v, inst)
            if error or waiting:
                out.error, out.waiting = error, waiting
                return out
            out.entries.append(
                {"kind": "network", "name": v.name, "device": device, "path": entry["path"],
                 "read_only": bool(json.loads(v.configuration or "{}").get("read_only")),
                 "device_aliases": await self._aliases(v, inst)}
            )  # fmt: skip
        out.entries += instance_entries(spec)
        return out

    @staticmethod
    async def bind_placed(s: Any, placed: str | None, inst: t.Instance) -> bool:
        """In the placement write, onto an instance whose machine is known: bind the job's
        unbound directory volumes to it. False when one was bound elsewhere meanwhile (the
        placement is retried)."""
        if not placed or not inst.hostname:
            return True
        key = host_key(inst)
        for entry in json.loads(placed):
            if entry.get("kind") != "directory":
                continue
            await s.execute(
                update(t.Volume)
                .where(t.Volume.id == entry["volume_id"], t.Volume.instance_id.is_(None))
                .values(provisioning_data=json.dumps({"host_key": key}), instance_id=inst.id)
            )
            raw = (
                await s.execute(
                    select(t.Volume.provisioning_data).where(t.Volume.id == entry["volume_id"])
                )
            ).scalar()
            if json.loads(raw or "{}").get("host_key") != key:
                return False
        return True

    async def _bind(self, v: t.Volume, inst: t.Instance) -> str | None:
        """A directory volume is bound to the machine of the first job that uses it (a
        conditional write: of two jobs at once, one binds and the other is checked)."""
        key = host_key(inst)
        async with self.ctx.db.session() as s:
            await s.execute(
                update(t.Volume)
                .where(t.Volume.id == v.id, t.Volume.instance_id.is_(None))
                .values(provisioning_data=json.dumps({"host_key": key}), instance_id=inst.id)
            )
            await s.commit()
            row = await s.get(t.Volume, v.id)
            bound = json.loads(row.provisioning_data or "{}").get("host_key")
        if bound and bound != key:
            return f"volume {v.name} is on {bound}, not on {key} where the job was placed"
        return None

    async def _aliases(self, v: t.Volume, inst: t.Instance) -> list[str]:
        """Other paths the backend says the attached device may appear at on the host."""
        async with self.ctx.db.session() as s:
            data = (
                await s.execute(
                    select(t.VolumeAttachment.data).where(
                        t.VolumeAttachment.volume_id == v.id,
                        t.VolumeAttachment.instance_id == inst.id,
                        t.VolumeAttachment.status == AttachmentStatus.ATTACHED.value,
                    )
                )
            ).scalars().first()
        aliases = json.loads(data or "{}").get("aliases") or []
        return [a for a in aliases if isinstance(a, str) and a.startswith("/")]

    async def _attach_network(
        self, job: t.Job, v: t.Volume, inst: t.Instance
    ) -> tuple[str | None, str | None, str | None]:
        """(device, error, waiting)."""
        async with self.ctx.db.session() as s:
            rows = list(
                (
                    await s.execute(
                        select(t.VolumeAttachment).where(
                            t.VolumeAttachment.volume_id == v.id,
                            t.VolumeAttachment.status.in_(LIVE_ATTACHMENT),
                        )
                    )
                ).scalars()
            )
            own = next((a for a in rows if a.job_id == job.id), None)
            if own is not None and own.status == AttachmentStatus.ATTACHED.value:
                return own.device, None, None
            elsewhere = [a for a in rows if a.instance_id != inst.id]
            if elsewhere:
                return None, None, f"volume {v.name} is still attached to another instance"
            shared = next((a for a in rows if a.job_id != job.id and a.status in _ATTACHED), None)
            if any(a.status == AttachmentStatus.DETACHING.value for a in rows):
                return None, None, f"volume {v.name} is being detached from the instance"
            now = utcnow()
            if own is None:
                own = t.VolumeAttachment(
                    id=str(uuid.uuid4()), volume_id=v.id, instance_id=inst.id, job_id=job.id,
                    status=AttachmentStatus.ATTACHING.value, requested_at=now,
                )  # fmt: skip
                s.add(own)
            if shared is not None and shared.status == AttachmentStatus.ATTACHED.value:
                # Another job on this instance has it attached: one attachment, two users.
                own.status, own.device, own.attached_at = shared.status, shared.device, now
            await s.commit()
            if own.status == AttachmentStatus.ATTACHED.value:
                return own.device, None, None
            own_id = own.id
        return await self._call_attach(own_id, v, inst)

    async def _call_attach(
        self, attachment_id: str, v: t.Volume, inst: t.Instance
    ) -> tuple[str | None, str | None, str | None]:
        backend = backend_of(self.ctx, inst)
        error = None
        try:
            if backend is None:
                raise BackendError(f"backend {inst.backend} is not configured on this server")
            result = await backend.attach_volume(volume_spec(v), host_of(inst))
        except BackendError as e:
            error = f"volume {v.name} could not be attached to {inst.name}: {e}"
        now = utcnow()
        async with self.ctx.db.session() as s:
            a = await s.get(t.VolumeAttachment, attachment_id)
            if error:
                a.status, a.message, a.detached_at = AttachmentStatus.DETACHED.value, error, now
            else:
                a.status, a.device = AttachmentStatus.ATTACHED.value, result.device
                a.attached_at, a.data = now, json.dumps(result.data)
            await s.commit()
        return (None, error, None) if error else (result.device, None, None)

    # -- detach ------------------------------------------------------------------------

    async def held(self, job_id: str) -> bool:
        """Whether the job still holds an attachment that is not released."""
        async with self.ctx.db.session() as s:
            rows = await s.execute(
                select(t.VolumeAttachment.id).where(
                    t.VolumeAttachment.job_id == job_id,
                    t.VolumeAttachment.status.in_(_ATTACHED)
                    | (
                        (t.VolumeAttachment.status == AttachmentStatus.DETACHING.value)
                        & t.VolumeAttachment.message.is_(None)
                    ),
                )
            )
            return rows.first() is not None

    async def release(self, job: t.Job, inst: t.Instance | None, abort: bool, grace: int) -> bool:
        """Detach the job's volumes; True once none is held (detached, shared with a job still
        running on the instance, or given up on after DETACH_TIMEOUT). `abort`: forced at
        once; otherwise forced once `grace` seconds (the job's stop_duration) have passed."""
        async with self.ctx.db.session() as s:
            rows = list(
                (
                    await s.execute(
                        select(t.VolumeAttachment).where(
                            t.VolumeAttachment.job_id == job.id,
                            t.VolumeAttachment.status.in_(LIVE_ATTACHMENT),
                        )
                    )
                ).scalars()
            )
        done = True
        for a in rows:
            done = await self._release_one(a, job, inst, abort, grace) and done
        return done

    async def _release_one(
        self, a: t.VolumeAttachment, job: t.Job, inst: t.Instance | None, abort: bool, grace: int
    ) -> bool:
        now = utcnow()
        gone = inst is None or inst.status == InstanceStatus.TERMINATED.value
        if gone or await self._shared(a):
            why = "the instance is gone" if gone else None
            await self._mark(a.id, AttachmentStatus.DETACHED, now, message=why)
            return True
        if a.status == AttachmentStatus.DETACHING.value and a.message:
            return True  # given up on before (DETACH_TIMEOUT)
        backend = backend_of(self.ctx, inst)
        async with self.ctx.db.session() as s:
            v = await s.get(t.Volume, a.volume_id)
        requested = a.detach_requested_at or now
        force = abort or (now - requested).total_seconds() >= grace
        try:
            if backend is None:
                raise BackendError(f"backend {inst.backend} is not configured on this server")
            if a.status != AttachmentStatus.DETACHING.value or force:
                await backend.detach_volume(volume_spec(v), host_of(inst), force=force)
            if a.status != AttachmentStatus.DETACHING.value:
                await self._mark(a.id, AttachmentStatus.DETACHING, now, requested=True)
            if await backend.is_volume_detached(volume_spec(v), host_of(inst)):
                await self._mark(a.id, AttachmentStatus.DETACHED, now)
                return True
        except BackendError as e:
            if a.status != AttachmentStatus.DETACHING.value:
                await self._mark(a.id, AttachmentStatus.DETACHING, now, requested=True)
            await self._note(job, f"detaching volume {v.name} failed: {e}; retrying", now)
        if now - requested >= DETACH_TIMEOUT:
            message = (
                f"volume {v.name} was not detached from {inst.name} within "
                f"{int(DETACH_TIMEOUT.total_seconds() // 60)} min; the job finished without it. "
                "Check it in the cloud, or `dstack volume delete --force` to forget it"
            )
            await self._mark(a.id, AttachmentStatus.DETACHING, now, message=message)
            await self._note(job, message, now)
            return True
        return False

    async def _shared(self, a: t.VolumeAttachment) -> bool:
        """Another job on the same instance, not ending itself, uses the same attachment (two
        jobs ending at once both detach: idempotent, and never a volume left attached)."""
        async with self.ctx.db.session() as s:
            row = await s.execute(
                select(t.VolumeAttachment.id)
                .join(t.Job, t.Job.id == t.VolumeAttachment.job_id)
                .where(
                    t.VolumeAttachment.volume_id == a.volume_id,
                    t.VolumeAttachment.instance_id == a.instance_id,
                    t.VolumeAttachment.id != a.id,
                    t.VolumeAttachment.status.in_(_ATTACHED),
                    t.Job.status.in_(_USING),
                )
            )
            return row.first() is not None

    async def _mark(
        self,
        attachment_id: str,
        status: AttachmentStatus,
        now: datetime,
        message: str | None = None,
        requested: bool = False,
    ) -> None:
        values: dict[str, Any] = {"status": status.value}
        if message is not None:
            values["message"] = message
        if requested:
            values["detach_requested_at"] = now
        if status == AttachmentStatus.DETACHED:
            values["detached_at"] = now
        async with self.ctx.db.session() as s:
            await s.execute(
                update(t.VolumeAttachment)
                .where(t.VolumeAttachment.id == attachment_id)
                .values(**values)
            )
            await s.commit()

    async def _note(self, job: t.Job, message: str, now: datetime) -> None:
        async with self.ctx.db.session() as s:
            events.record(
                s, project_id=job.project_id, target_type="job", target_id=job.id,
                target_name=job.job_name, message=message, now=now, within_run_id=job.run_id,
            )  # fmt: skip
            await s.commit()

    # -- bookkeeping -------------------------------------------------------------------

    async def last_used(self, s: Any, job: t.Job, now: datetime) -> None:
        """The job ended: a volume no other unfinished job uses was last used now
        (`auto_cleanup_duration` counts from here)."""
        ids = [e["volume_id"] for e in json.loads(job.volumes or "[]")]
        for vid in ids:
            others = await s.execute(
                select(t.Job.id).where(
                    t.Job.id != job.id,
                    t.Job.status.in_(UNFINISHED_JOBS),
                    t.Job.volumes.contains(vid),
                )
            )
            if others.first() is None:
                await s.execute(update(t.Volume).where(t.Volume.id == vid).values(last_used_at=now))

    async def note_waiting(self, job: t.Job, message: str, now: datetime) -> None:
        """A job queued for a volume says why, once per reason (`dstack event`)."""
        async with self.ctx.db.session() as s:
            last = (
                await s.execute(
                    select(t.Event.message)
                    .where(t.Event.target_id == job.id)
                    .order_by(t.Event.recorded_at.desc())
                    .limit(1)
                )
            ).scalar()
            text = f"Job waits: {message}"
            if last == text:
                return
            events.record(
                s, project_id=job.project_id, target_type="job", target_id=job.id,
                target_name=job.job_name, message=text, now=now, within_run_id=job.run_id,
            )  # fmt: skip
            await s.commit()
