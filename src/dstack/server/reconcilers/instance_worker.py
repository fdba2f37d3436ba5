"""Carries out the instance decisions of `instances.py` through the instance's backend: observe,
`decide()`, act, feed the outcome to `after()`, apply. It never edits a decision itself."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from dstack.models.instances import InstanceStatus as S
from dstack.models.instances import InstanceTerminationReason as R
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.volumes import AttachmentStatus as A
from dstack.models.wire import utcnow
from dstack.server.agent_client import AgentClientError
from dstack.server.backends.base import (
    BackendError,
    Compute,
    HostGone,
    NoCapacityError,
    Provisioning,
)
from dstack.server.db import tables as t
from dstack.server.reconcilers.agents import AgentRegistry
from dstack.server.reconcilers.base import Reconciler
from dstack.server.reconcilers.instances import (
    Act,
    InstanceDecision,
    InstanceView,
    Outcome,
    after,
    decide,
)
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.host_request import CreateContext, create_context
from dstack.server.services.hosts import host_of, known_host_key
from dstack.server.services.pool import FINISHED_JOB_STATUSES, LIVE_INSTANCE_STATUSES, fleet_conf

log = logging.getLogger(__name__)

PROVISIONING_POLL_SECONDS = 2.0


class InstanceReconciler(Reconciler):
    kind = "instances"
    table = t.Instance
    active_statuses = tuple(
        s.value for s in (S.PENDING, S.PROVISIONING, S.IDLE, S.BUSY, S.TERMINATING)
    )

    def __init__(self, ctx: ServerContext, agents: AgentRegistry) -> None:
        super().__init__(ctx)
        self.agents = agents

    def interval(self, status: str) -> float:
        if status in (S.IDLE, S.BUSY):
            return self.ctx.settings.instance_check_seconds
        if status == S.PROVISIONING:
            return PROVISIONING_POLL_SECONDS
        return self.ctx.settings.resync_seconds

    async def process(self, row_id: str, token: str) -> None:
        now = utcnow()
        async with self.ctx.db.session() as s:
            inst = await self.load_row(s, row_id, token)
            if inst is None:
                return
            active, last_finished = await self._jobs(s, inst.id)
            at_min = await self._fleet_at_min(s, inst)
            known_key = None
            if inst.status == S.PENDING and inst.hostname:
                port = int(json.loads(inst.remote_connection or "{}").get("port") or 22)
                known_key = await known_host_key(s, inst.project_id, inst.hostname, port, inst.id)
            create = await create_context(self.ctx, s, inst) if inst.status == S.PENDING else None
        backend = self.ctx.backends.get(inst.backend, inst.project_id)
        checked = inst.status in (S.IDLE, S.BUSY, S.PROVISIONING)
        info = await self._check(inst) if checked else None
        view = InstanceView(
            status=inst.status,
            unreachable=inst.unreachable,
            agent_ok=None if not checked else info is not None,
            active_jobs=active,
            idle_since=max(filter(None, [inst.started_at or inst.created_at, last_finished])),
            idle_duration=inst.idle_duration,
            fleet_min_reached=at_min,
            provisioning_since=inst.started_at or inst.created_at,
            provisioning_timeout=backend.provisioning_timeout if backend else 0.0,
            provisioning_poll=backend.provisioning_poll if backend else 0.5,
            termination_reason=inst.termination_reason,
        )
        d = decide(view, now)
        if d.action != Act.WAIT:
            outcome = await self._act(inst, d, backend, info, known_key, create)
            d = after(d, outcome, utcnow())
        await self._apply(inst, d, token, now)

    async def _jobs(self, s: Any, instance_id: str) -> tuple[int, datetime | None]:
        active = (
            await s.execute(
                select(func.count()).where(
                    t.Job.instance_id == instance_id, t.Job.status.not_in(FINISHED_JOB_STATUSES)
                )
            )
        ).scalar_one()
        last = (
            await s.execute(
                select(func.max(t.Job.finished_at)).where(t.Job.instance_id == instance_id)
            )
        ).scalar()
        return int(active), last

    async def _fleet_at_min(self, s: Any, inst: t.Instance) -> bool:
        """Terminating this instance would take its fleet below `nodes.min`."""
        if inst.fleet_id is None:
            return False
        fleet = await s.get(t.Fleet, inst.fleet_id)
        nodes = fleet_conf(fleet).get("nodes") if fleet else None
        low = nodes.get("min") if isinstance(nodes, dict) else None
        if not low:
            return False
        live = (
            await s.execute(
                select(func.count()).where(
                    t.Instance.fleet_id == inst.fleet_id,
                    t.Instance.deleted.is_(False),
                    t.Instance.status.in_(LIVE_INSTANCE_STATUSES),
                )
            )
        ).scalar_one()
        return int(live) <= int(low)

    async def _check(self, inst: t.Instance) -> dict[str, Any] | None:
        """The agent's host info when it answers (a provisioning host's first answer is what
        the instance is), else None."""
        client = self.agents.client(inst)
        if client is None:
            return None
        try:
            await client.healthcheck()
            if inst.status == S.PROVISIONING:
                return await client.host_info()
            return {}
        except AgentClientError:
            return None

    # -- act: every outcome goes back through `after()` -----------------------------------

    async def _act(
        self,
        inst: t.Instance,
        d: InstanceDecision,
        backend: Compute | None,
        info: dict[str, Any] | None,
        known_key: str | None,
        create: CreateContext | None = None,
    ) -> Outcome:
        if backend is None:
            why = f"backend {inst.backend} is not configured on this server"
            if d.action == Act.TERMINATE:  # nothing to clean up through it: let the row go
                return Outcome(True, f"{why}; nothing was cleaned up")
            return Outcome(False, why)
        try:
            host = host_of(inst, self.ctx.box.decrypt)
            host.known_host_key = known_key
            if create is not None:
                create.fill(host)
            if d.action == Act.CREATE:
                # Hosts a fleet lists have no offer until they answer (`ready` makes one).
                offer = (
                    InstanceOfferWithAvailability.model_validate_json(inst.offer)
                    if inst.offer
                    else None
                )
                p = await backend.create_instance(host, offer)
                await self.agents.forget(inst.id)
                return Outcome(True, values=self._provisioned(inst, p))
            if d.action == Act.READY:
                r = await backend.ready(host, info or {})
                values: dict[str, Any] = {
                    "host_info": json.dumps(r.host_info),
                    "unreachable": False,
                    "status_message": None,
                }
                if r.offer is not None:
                    values["offer"] = r.offer.model_dump_json()
                if r.total_blocks is not None:
                    values["total_blocks"] = r.total_blocks
                return Outcome(True, values=values)
            if d.action == Act.ADVANCE:
                p1 = await backend.advance(host)
                if p1 is None:
                    return Outcome(True)
                await self.agents.forget(inst.id)
                return Outcome(True, values=self._provisioned(inst, p1))
            if d.action == Act.DIAGNOSE:
                return Outcome(False, await self._timeout_message(backend, host))
            if d.action == Act.TERMINATE:
                note = await backend.terminate(host)
                await self.agents.forget(inst.id)
                return Outcome(True, note)
            if d.action == Act.REVIVE:
                p2 = await backend.revive(host)
                if p2 is None:
                    return Outcome(False)
                await self.agents.forget(inst.id)
                return Outcome(True, values={"agent_url": p2.agent_url, "agent_pid": p2.agent_pid})
        except HostGone as e:
            values = {}
            if e.job_reason:  # kept with the host's record: the job reconciler reads it
                rc = {**json.loads(inst.remote_connection or "{}"), "lost_as": e.job_reason}
                values["remote_connection"] = json.dumps(rc)
            return Outcome(False, str(e), values=values, reason=R.UNREACHABLE)
        except NoCapacityError as e:
            return Outcome(False, str(e), reason=R.NO_OFFERS)
        except (BackendError, AgentClientError) as e:
            return Outcome(False, str(e))
        except Exception as e:  # noqa: BLE001 - a bug must end the act, not repeat it forever
            log.exception("instance %s: %s failed", inst.name, d.action.value)
            return Outcome(False, f"internal error during {d.action.value}: {type(e).__name__}")
        return Outcome(True)

    def _provisioned(self, inst: t.Instance, p: Provisioning) -> dict[str, Any]:
        values: dict[str, Any] = {
            "agent_url": p.agent_url,
            "agent_pid": p.agent_pid,
            "hostname": p.hostname,
            "status_message": p.note,
        }
        if p.agent_token:
            values["agent_token_enc"] = self.ctx.box.encrypt(p.agent_token)
        if p.remote is not None:
            values["remote_connection"] = json.dumps(p.remote)
        return values

    async def _timeout_message(self, backend: Compute, host: Any) -> str:
        tail = await backend.diagnose(host)
        where = backend.host_label(host)
        msg = f"the agent on {where} did not answer within {backend.provisioning_timeout:.0f}s"
        return msg + (f"; its log ends with: {tail}" if tail else "")

    # -- apply ----------------------------------------------------------------------------

    async def _apply(
        self, inst: t.Instance, d: InstanceDecision, token: str, now: datetime
    ) -> None:
        values = dict(d.values)
        if d.message:
            values["termination_reason_message"] = d.message
        changed = d.status is not None and d.status != inst.status
        if changed:
            values["status"] = d.status.value
            if d.reason:
                values["termination_reason"] = d.reason.value
        async with self.ctx.db.session() as s:
            # A long act (a bootstrap, a cloud call) may have raced a delete or a job reserving
            # this instance (both bump the version): then an idle-timeout or a finished
            # provisioning must not apply. Checked in the same transaction as the write, so a
            # lost race releases the lease here, without a second session.
            guarded = d.status == S.TERMINATING or d.action in (Act.CREATE, Act.READY)
            if changed and guarded and not await self._still_version(s, inst):
                await s.rollback()
                await self.release_in(s, inst.id, token, dirty=True)
                await s.commit()
                return
            status = values.get("status", inst.status)
            due_in = (status, d.recheck) if d.recheck is not None else None
            await self.guarded_update(s, inst.id, token, values, now, due_in=due_in)
            if changed:
                self._record(s, inst, d, now)
                await s.execute(
                    update(t.Job)
                    .where(t.Job.instance_id == inst.id, t.Job.status.not_in(FINISHED_JOB_STATUSES))
                    .values(dirty=True)
                )
            if values.get("status") == S.TERMINATED and inst.fleet_id:
                await s.execute(
                    update(t.Fleet).where(t.Fleet.id == inst.fleet_id).values(dirty=True)
                )
            if values.get("status") == S.TERMINATED:
                await self._release_volumes(s, inst.id, now)
            await s.commit()
        if changed:
            self.ctx.hub.wake("jobs")
            self.ctx.hub.wake("fleets")

    async def _release_volumes(self, s: Any, instance_id: str, now: datetime) -> None:
        """A terminated machine holds no volume: the cloud detaches what was attached to it, so
        its attachments end here (else the volumes would look in use forever)."""
        live = [a.value for a in (A.ATTACHING, A.ATTACHED, A.DETACHING)]
        await s.execute(
            update(t.VolumeAttachment)
            .where(
                t.VolumeAttachment.instance_id == instance_id,
                t.VolumeAttachment.status.in_(live),
            )
            .values(
                status=A.DETACHED.value,
                detached_at=now,
                message="detached: the instance was terminated",
            )
        )

    async def _still_version(self, s: Any, inst: t.Instance) -> bool:
        """A conditional no-op write: it takes the write lock and checks the version in one
        statement, so nothing can change the row between the check and the update."""
        res = await s.execute(
            update(t.Instance)
            .where(t.Instance.id == inst.id, t.Instance.version == inst.version)
            .values(version=t.Instance.version)
        )
        return res.rowcount == 1

    def _record(self, s: Any, inst: t.Instance, d: InstanceDecision, now: datetime) -> None:
        msg = f"Instance status changed {inst.status.upper()} -> {d.status.value.upper()}"
        if d.reason:
            msg += f". Termination reason: {d.reason.value.upper()}"
        if d.message:
            msg += f" ({d.message})"
        events.record(
            s,
            project_id=inst.project_id,
            target_type="instance",
            target_id=inst.id,
            target_name=inst.name,
            message=msg,
            now=now,
        )
