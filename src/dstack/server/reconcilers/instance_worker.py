"""Carries out the instance decisions of `instances.py` through the instance's backend."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.wire import utcnow
from dstack.server.agent_client import AgentClientError
from dstack.server.backends.base import BackendError
from dstack.server.db import tables as t
from dstack.server.reconcilers import ssh_hosts
from dstack.server.reconcilers.agents import AgentRegistry
from dstack.server.reconcilers.base import Reconciler
from dstack.server.reconcilers.instances import InstanceDecision, InstanceView, decide
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.pool import FINISHED_JOB_STATUSES, fleet_conf


class InstanceReconciler(Reconciler):
    kind = "instances"
    table = t.Instance
    active_statuses = ("pending", "provisioning", "idle", "busy", "terminating")

    def __init__(self, ctx: ServerContext, agents: AgentRegistry) -> None:
        super().__init__(ctx)
        self.agents = agents

    def interval(self, status: str) -> float:
        if status in ("idle", "busy"):
            return self.ctx.settings.instance_check_seconds
        return self.ctx.settings.resync_seconds

    async def process(self, row_id: str, token: str) -> None:
        now = utcnow()
        async with self.ctx.db.session() as s:
            inst = await self.load_row(s, row_id, token)
            if inst is None:
                return
            active, last_finished = await self._jobs(s, inst.id)
            at_min = await self._fleet_at_min(s, inst)
        agent_ok = await self._check(inst) if inst.status in ("idle", "busy") else None
        view = InstanceView(
            status=inst.status,
            unreachable=inst.unreachable,
            agent_ok=agent_ok,
            active_jobs=active,
            idle_since=max(filter(None, [inst.started_at or inst.created_at, last_finished])),
            idle_duration=inst.idle_duration,
            fleet_min_reached=at_min,
        )
        d = decide(view, now)
        values = await self._act(inst, d)
        await self._apply(inst, d, values, token, now)

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
                    t.Instance.status.in_(("pending", "provisioning", "idle", "busy")),
                )
            )
        ).scalar_one()
        return int(live) <= int(low)

    async def _check(self, inst: t.Instance) -> bool:
        client = self.agents.client(inst)
        if client is None:
            return False
        try:
            await client.healthcheck()
            return True
        except AgentClientError:
            return False

    async def _act(self, inst: t.Instance, d: InstanceDecision) -> dict[str, Any]:
        backend = self.ctx.backends.get(inst.backend)
        if inst.backend == "ssh" and d.action in ("create", "terminate"):
            return await self._act_ssh(inst, d)
        if d.action == "create":
            return await self._create(inst, d, backend)
        if d.action == "terminate":
            try:
                if backend is not None:
                    await backend.terminate_instance(inst.id, inst.agent_pid)
            except BackendError as e:
                d.status = None  # retried on the next pass
                return {"termination_reason_message": str(e)}
            await self.agents.forget(inst.id)
            return {"finished_at": utcnow(), "deleted": True}
        if d.action == "revive" and hasattr(backend, "revive") and inst.agent_token_enc:
            try:
                url, pid = await backend.revive(self.ctx.box.decrypt(inst.agent_token_enc))
            except BackendError:
                return d.values
            await self.agents.forget(inst.id)
            return {**d.values, "agent_url": url, "agent_pid": pid, "unreachable": False}
        return d.values

    async def _act_ssh(self, inst: t.Instance, d: InstanceDecision) -> dict[str, Any]:
        """SSH hosts are bootstrapped and cleaned up, not created and destroyed."""
        if d.action == "create":
            d.status, d.reason, values = await ssh_hosts.bootstrap(self.ctx, inst, self.agents)
            return values
        note = await ssh_hosts.teardown(self.ctx, inst)
        await self.agents.forget(inst.id)
        values = {"finished_at": utcnow(), "deleted": True}
        if note:
            values["termination_reason_message"] = note
        return values

    async def _create(self, inst: t.Instance, d: InstanceDecision, backend: Any) -> dict[str, Any]:
        if backend is None:
            d.status, d.reason = "terminated", "error"
            return {"termination_reason_message": f"backend {inst.backend} is not configured"}
        offer = InstanceOfferWithAvailability.model_validate_json(inst.offer or "{}")
        try:
            p = await backend.create_instance(inst.id, offer)
            client = self.agents.client(
                _with_agent(inst, p.agent_url, self.ctx.box.encrypt(p.agent_token))
            )
            host_info = p.host_info or (await client.host_info() if client else {})
        except (BackendError, AgentClientError) as e:
            d.status, d.reason = "terminated", "error"
            return {"termination_reason_message": str(e), "finished_at": utcnow()}
        d.status = "idle"
        return {
            "agent_url": p.agent_url,
            "agent_token_enc": inst.agent_token_enc,
            "agent_pid": p.agent_pid,
            "hostname": p.hostname,
            "host_info": json.dumps(host_info),
            "started_at": utcnow(),
        }

    async def _apply(
        self,
        inst: t.Instance,
        d: InstanceDecision,
        values: dict[str, Any],
        token: str,
        now: datetime,
    ) -> None:
        values = dict(values)
        if d.status and d.status != inst.status:
            values["status"] = d.status
            if d.reason:
                values["termination_reason"] = d.reason
        async with self.ctx.db.session() as s:
            # The version must still be the one read: a job reserving this instance meanwhile
            # bumped it, and an idle-timeout decision made before that must not apply.
            values_guard = update(t.Instance).where(
                t.Instance.id == inst.id, t.Instance.version == inst.version
            )
            # A bootstrap is long: a delete requested meanwhile (which bumps the version) wins.
            bootstrapped = inst.backend == "ssh" and d.action == "create"
            if "status" in values and (values["status"] == "terminating" or bootstrapped):
                res = await s.execute(values_guard.values(version=t.Instance.version))
                if res.rowcount != 1:
                    await self.release(inst.id, token)
                    return
            await self.guarded_update(s, inst.id, token, values, now)
            if "status" in values:
                msg = f"Instance status changed {inst.status.upper()} -> {values['status'].upper()}"
                if d.reason:
                    msg += f". Termination reason: {d.reason.upper()}"
                if values.get("termination_reason_message"):
                    msg += f" ({values['termination_reason_message']})"
                events.record(
                    s,
                    project_id=inst.project_id,
                    target_type="instance",
                    target_id=inst.id,
                    target_name=inst.name,
                    message=msg,
                    now=now,
                )
                await s.execute(
                    update(t.Job)
                    .where(t.Job.instance_id == inst.id, t.Job.status.not_in(FINISHED_JOB_STATUSES))
                    .values(dirty=True)
                )
            if values.get("status") == "terminated" and inst.fleet_id:
                await s.execute(
                    update(t.Fleet).where(t.Fleet.id == inst.fleet_id).values(dirty=True)
                )
            await s.commit()
        if "status" in values:
            self.ctx.hub.wake("jobs")
            self.ctx.hub.wake("fleets")


def _with_agent(inst: t.Instance, url: str, token_enc: str) -> t.Instance:
    inst.agent_url = url
    inst.agent_token_enc = token_enc
    return inst
