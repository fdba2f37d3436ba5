"""Volumes: created (or registered) in their backend, deleted once nothing holds them, and
cleaned up after `auto_cleanup_duration` unused. `decide(view, now)` picks the act, `after()`
turns its outcome into the write; the worker only observes, acts and writes.

| status    | observation                                         | decision                       |
|-----------|-----------------------------------------------------|--------------------------------|
| any       | to_be_deleted, a live attachment or an active job   | wait (message: who holds it)   |
| any       | to_be_deleted, the last failed try's backoff runs   | wait until `next_attempt_at`   |
| any       | to_be_deleted, network, managed, created in cloud   | `delete_volume` -> deleted     |
| any       | to_be_deleted, network, registered or never created | deleted (nothing to delete)    |
| any       | to_be_deleted, directory bound to a machine, not    | agent `delete_volume_dir` ->   |
|           | forced                                              | deleted                        |
| any       | to_be_deleted, directory never bound, or forced     | deleted (forgotten)            |
| submitted | the last failed try's backoff runs                  | wait until `next_attempt_at`   |
| submitted | `volume_id` given (external)                        | `register_volume` -> active    |
| submitted | otherwise                                           | `create_volume` -> active      |
| active    | auto_cleanup_duration set, unused for longer        | to_be_deleted (event)          |
| active    | an attachment detaching for longer than             | the attachment's message says  |
|           | DETACH_STUCK_SECONDS (dstack#2218)                  | so (`delete --force` ends it)  |
| failed    | -                                                   | nothing                        |

`after()`: a create/register that succeeds records the cloud id, region, zone, size and the
backend's record -> active. One that fails with `PermanentError` -> failed. Any other failure
is transient: the volume stays where it is, `attempts` + 1, `next_attempt_at` = now + the
server's `retry_backoff[attempts - 1]` (its last step repeated), the reason in
`status_message` and one event (dstack#3815: a failing backend call is never retried in a
loop); a create failing more than `len(retry_backoff)` times -> failed. A delete keeps
retrying at the backoff's last step: the user can read why in `dstack volume -v`.
Every status change writes an event.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update

from dstack.models.volumes import AttachmentStatus, VolumeStatus
from dstack.models.wire import utcnow
from dstack.server.backends.base import PermanentError, VolumeProvisioning, VolumeSpec
from dstack.server.db import tables as t
from dstack.server.reconcilers.base import Reconciler
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.volumes import (
    DETACH_STUCK_SECONDS,
    LIVE_ATTACHMENT_STATUSES,
    active_jobs_using,
    attachments_of,
    holder_instance,
    is_stuck,
    volume_conf,
)

log = logging.getLogger(__name__)

WAIT, CREATE, REGISTER = "wait", "create", "register"
DELETE_CLOUD, DELETE_DIR, FORGET, CLEANUP = "delete_cloud", "delete_dir", "forget", "cleanup"
ACTS = (CREATE, REGISTER, DELETE_CLOUD, DELETE_DIR)


@dataclass(frozen=True)
class VolumeView:
    status: str
    directory: bool = False
    external: bool = False
    created: bool = False  # the cloud id is known (created or registered)
    bound: bool = False  # a directory volume some job placed on a machine
    to_be_deleted: bool = False
    force: bool = False
    held_by: tuple[str, ...] = ()  # live attachments and active jobs, described
    stuck: tuple[str, ...] = ()  # ids of detaching attachments past the timeout, unflagged
    attempts: int = 0
    next_attempt_at: datetime | None = None
    idle_since: datetime | None = None
    auto_cleanup: int | None = None  # seconds; None or negative: never
    backoff: tuple[float, ...] = (15.0,)
    message: str | None = None


@dataclass
class VolumeDecision:
    action: str = WAIT
    message: str | None = None  # the status_message to keep
    recheck: float | None = None  # look again in this many seconds
    stuck: tuple[str, ...] = ()


@dataclass
class Outcome:
    ok: bool = True
    error: str | None = None
    permanent: bool = False
    provisioning: VolumeProvisioning | None = None


@dataclass
class Transition:
    values: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    recheck: float | None = None


def _waiting(v: VolumeView, now: datetime) -> float | None:
    if v.next_attempt_at is not None and v.next_attempt_at > now:
        return (v.next_attempt_at - now).total_seconds()
    return None


def _decide_delete(v: VolumeView, now: datetime) -> VolumeDecision:
    if v.held_by:
        msg = f"Deletion waits for: {'; '.join(v.held_by)}"
        return VolumeDecision(message=msg)
    wait = _waiting(v, now)
    if wait is not None:
        return VolumeDecision(message=v.message, recheck=wait)
    if v.directory:
        return VolumeDecision(action=DELETE_DIR if v.bound and not v.force else FORGET)
    if v.external or not v.created:
        return VolumeDecision(action=FORGET)
    return VolumeDecision(action=DELETE_CLOUD, message=v.message)


def decide(v: VolumeView, now: datetime) -> VolumeDecision:
    if v.to_be_deleted:
        return _decide_delete(v, now)
    if v.status == VolumeStatus.SUBMITTED.value:
        wait = _waiting(v, now)
        if wait is not None:
            return VolumeDecision(message=v.message, recheck=wait)
        return VolumeDecision(action=REGISTER if v.external else CREATE, message=v.message)
    if v.status != VolumeStatus.ACTIVE.value:
        return VolumeDecision(message=v.message)
    if v.auto_cleanup is not None and v.auto_cleanup > 0 and not v.held_by:
        idle = (now - v.idle_since).total_seconds() if v.idle_since else 0.0
        if idle >= v.auto_cleanup:
            return VolumeDecision(action=CLEANUP, message=v.message)
        return VolumeDecision(message=v.message, recheck=v.auto_cleanup - idle, stuck=v.stuck)
    return VolumeDecision(message=v.message, stuck=v.stuck)


def _retry(v: VolumeView, d: VolumeDecision, error: str, now: datetime) -> Transition:
    what = {CREATE: "Creating", REGISTER: "Registering"}.get(d.action, "Deleting")
    attempts = v.attempts + 1
    if d.action in (CREATE, REGISTER) and attempts > len(v.backoff):
        return _failed(v, f"{what} the volume failed {attempts} times; last: {error}")
    wait = v.backoff[min(attempts, len(v.backoff)) - 1] if v.backoff else 0.0
    msg = f"{what} the volume failed (attempt {attempts}): {error}; next try in {wait:g}s"
    return Transition(
        values={
            "attempts": attempts,
            "next_attempt_at": now + timedelta(seconds=wait),
            "status_message": msg,
        },
        events=[msg],
        recheck=wait,
    )


def _failed(v: VolumeView, msg: str) -> Transition:
    return Transition(
        values={"status": VolumeStatus.FAILED.value, "status_message": msg, "attempts": 0,
                "next_attempt_at": None},
        events=[msg, f"Volume status changed {v.status.upper()} -> FAILED"],
    )  # fmt: skip


def _deleted(v: VolumeView, d: VolumeDecision, now: datetime) -> Transition:
    how = {
        DELETE_CLOUD: "Volume deleted in its backend",
        DELETE_DIR: "Volume deleted; its directory was removed",
    }.get(d.action, "Volume deleted (nothing to remove in a backend)")
    if d.action == FORGET and v.directory and v.bound:
        how = "Volume forgotten (forced); its directory was left on the host"
    elif d.action == FORGET and v.external:
        how = "Volume deregistered; the cloud volume itself is kept (external)"
    return Transition(
        values={"deleted": True, "deleted_at": now, "status_message": None, "attempts": 0,
                "next_attempt_at": None},
        events=[how],
    )  # fmt: skip


def after(v: VolumeView, d: VolumeDecision, outcome: Outcome, now: datetime) -> Transition:
    """The write for a decision and what its act returned (pure)."""
    if d.action == CLEANUP:
        msg = (f"Volume unused for longer than auto_cleanup_duration ({v.auto_cleanup}s): "
               "marked for deletion")  # fmt: skip
        return Transition(values={"to_be_deleted": True, "dirty": True}, events=[msg])
    if d.action in (CREATE, REGISTER) and not outcome.ok:
        if outcome.permanent:
            verb = "Creating" if d.action == CREATE else "Registering"
            return _failed(v, f"{verb} the volume failed: {outcome.error}")
        return _retry(v, d, outcome.error or "unknown error", now)
    if d.action in (CREATE, REGISTER):
        p = outcome.provisioning
        assert p is not None
        values = {
            "status": VolumeStatus.ACTIVE.value,
            "status_message": None,
            "attempts": 0,
            "next_attempt_at": None,
            "external_id": p.external_id,
            "region": p.region,
            "availability_zone": p.availability_zone,
            "size_gb": p.size_gb,
            "provisioning_data": json.dumps(p.data),
        }
        where = f"{p.external_id} in {p.region}" + (
            f" ({p.availability_zone})" if p.availability_zone else ""
        )
        verb = "created" if d.action == CREATE else "registered"
        return Transition(
            values=values,
            events=[f"Volume {verb}: {where}, {p.size_gb}GB",
                    f"Volume status changed {v.status.upper()} -> ACTIVE"],
        )  # fmt: skip
    if d.action in (DELETE_CLOUD, DELETE_DIR) and not outcome.ok:
        return _retry(v, d, outcome.error or "unknown error", now)
    if d.action in (DELETE_CLOUD, DELETE_DIR, FORGET):
        return _deleted(v, d, now)
    tr = Transition(recheck=d.recheck)
    if d.message != v.message:
        tr.values["status_message"] = d.message
        if d.message:
            tr.events.append(d.message)
    return tr


# -- the worker ----------------------------------------------------------------------------


@dataclass
class Snapshot:
    volume: t.Volume
    view: VolumeView
    holder: t.Instance | None = None


def _idle_since(vol: t.Volume, attachments: list[t.VolumeAttachment]) -> datetime:
    moments = [vol.created_at, vol.last_used_at]
    moments += [a.detached_at for a in attachments]
    return max(m for m in moments if m is not None)


async def _held_by(s: Any, vol: t.Volume, attachments: list[t.VolumeAttachment]) -> list[str]:
    out = []
    for a in attachments:
        if a.status in LIVE_ATTACHMENT_STATUSES:
            inst = await s.get(t.Instance, a.instance_id)
            out.append(f"{a.status} on instance {inst.name if inst else a.instance_id}")
    for job in await active_jobs_using(s, vol.id):
        out.append(f"job {job.job_name} ({job.status})")
    return out


class VolumeReconciler(Reconciler):
    kind = "volumes"
    table = t.Volume
    active_statuses = tuple(
        s.value for s in (VolumeStatus.SUBMITTED, VolumeStatus.ACTIVE, VolumeStatus.FAILED)
    )

    def __init__(self, ctx: ServerContext, agents: Any) -> None:
        super().__init__(ctx)
        self.agents = agents  # AgentRegistry: `client(instance)` (directory volumes)

    def scope(self) -> Any:
        return t.Volume.deleted.is_(False)

    def interval(self, status: str) -> float:
        if status == VolumeStatus.FAILED.value:  # only a deletion (which wakes it) moves it
            return max(60.0, self.ctx.settings.resync_seconds)
        return self.ctx.settings.resync_seconds

    async def process(self, row_id: str, token: str) -> None:
        now = utcnow()
        async with self.ctx.db.session() as s:
            vol = await self.load_row(s, row_id, token)
            if vol is None:
                return
            snap = await self._snapshot(s, vol, now)
        d = decide(snap.view, now)
        outcome = await self._act(d, snap) if d.action in ACTS else Outcome()
        tr = after(snap.view, d, outcome, now)
        async with self.ctx.db.session() as s:
            await self._apply(s, snap, d, tr, token, now)
            await s.commit()

    async def _snapshot(self, s: Any, vol: t.Volume, now: datetime) -> Snapshot:
        attachments = await attachments_of(s, [vol.id])
        conf = volume_conf(vol)
        directory = vol.fleet_id is not None
        holder = await holder_instance(s, vol) if directory else None
        view = VolumeView(
            status=vol.status,
            directory=directory,
            external=vol.external,
            created=vol.external_id is not None and vol.status == VolumeStatus.ACTIVE.value,
            bound=vol.instance_id is not None,
            to_be_deleted=vol.to_be_deleted,
            force=vol.force_delete,
            held_by=tuple(await _held_by(s, vol, attachments)),
            stuck=tuple(a.id for a in attachments if is_stuck(a, now) and not a.message),
            attempts=vol.attempts,
            next_attempt_at=vol.next_attempt_at,
            idle_since=_idle_since(vol, attachments),
            auto_cleanup=conf.auto_cleanup_duration,
            backoff=tuple(self.ctx.settings.retry_backoff),
            message=vol.status_message,
        )
        return Snapshot(volume=vol, view=view, holder=holder)

    def _spec(self, vol: t.Volume) -> VolumeSpec:
        conf = volume_conf(vol)
        return VolumeSpec(
            volume_id=vol.id,
            project_id=vol.project_id,
            name=vol.name,
            region=vol.region,
            availability_zone=vol.availability_zone,
            size_gb=vol.size_gb,
            external_id=vol.external_id,
            tags=dict(conf.tags or {}),
            data=json.loads(vol.provisioning_data or "{}"),
        )

    async def _act(self, d: VolumeDecision, snap: Snapshot) -> Outcome:
        """The one backend or agent call, outside any transaction; any failure is an outcome."""
        vol = snap.volume
        try:
            if d.action == DELETE_DIR:
                await self._delete_dir(snap)
                return Outcome()
            backend = self.ctx.backends.get(vol.backend, vol.project_id)
            if backend is None:
                return Outcome(ok=False, error=f"backend {vol.backend} is not configured")
            spec = self._spec(vol)
            if d.action == CREATE:
                return Outcome(provisioning=await backend.create_volume(spec))
            if d.action == REGISTER:
                return Outcome(provisioning=await backend.register_volume(spec))
            await backend.delete_volume(spec)
            return Outcome()
        except PermanentError as e:
            return Outcome(ok=False, error=str(e), permanent=True)
        except Exception as e:  # a backend or agent failure is shown and retried, never raised
            log.warning("volume %s: %s failed: %s", vol.id, d.action, e)
            return Outcome(ok=False, error=str(e) or type(e).__name__)

    async def _delete_dir(self, snap: Snapshot) -> None:
        inst = snap.holder
        if inst is None:
            raise RuntimeError("the machine holding its directory is gone (`--force` forgets it)")
        client = self.agents.client(inst)
        if client is None:
            raise RuntimeError(f"the agent of instance {inst.name} cannot be reached")
        await client.delete_volume_dir(snap.volume.id)

    async def _apply(
        self, s: Any, snap: Snapshot, d: VolumeDecision, tr: Transition, token: str,
        now: datetime,
    ) -> None:  # fmt: skip
        vol = snap.volume
        due = (vol.status, tr.recheck) if tr.recheck is not None else None
        await self.guarded_update(s, vol.id, token, tr.values, now, due_in=due)
        for message in tr.events:
            events.record(s, project_id=vol.project_id, target_type="volume", target_id=vol.id,
                          target_name=vol.name, message=message, now=now)  # fmt: skip
        for attachment_id in d.stuck:
            await s.execute(
                update(t.VolumeAttachment)
                .where(
                    t.VolumeAttachment.id == attachment_id,
                    t.VolumeAttachment.status == AttachmentStatus.DETACHING.value,
                    t.VolumeAttachment.message.is_(None),
                )
                .values(message=f"detach not done after {DETACH_STUCK_SECONDS:g}s; "
                        f"`dstack volume delete {vol.name} --force` marks it detached")
            )  # fmt: skip
