"""Fleets: created `active` by apply (a backend fleet with its `nodes.target` instances);
`dstack fleet delete` makes them `terminating` (and their instances `terminating`, which the
instance reconciler tears down); this loop keeps a backend fleet at `nodes.min` and finishes
a deletion.

| status      | observation                                  | next status / effect              |
|-------------|----------------------------------------------|-----------------------------------|
| active      | SSH fleet, or at least nodes.min live        | (nothing; a message is cleared)   |
| active      | below min, an instance still terminating     | (wait: its outcome decides)       |
| active      | below min, a creation failed, retry does not | message: why, no new instance     |
|             | cover its event (no-capacity or error)       |                                   |
| active      | below min, failures for longer than          | message: retry window passed      |
|             | retry.duration                               |                                   |
| active      | below min, last failure within the backoff   | (wait)                            |
| active      | below min                                    | look up the cheapest untried      |
|             |                                              | offer: `after_offer()`            |
| terminating | some instance not yet terminated             | (wait; instances are torn down)   |
| terminating | every instance terminated (or none)          | terminated; the fleet is deleted  |

`after_offer()`: an offer -> (min - live) pending instances from it (the instance reconciler
creates them); none -> message "no offers matching ...". Failed creations (instances of the
fleet that ended `no_offers`, `error` or `provisioning_timeout`) since the fleet last had an
instance start are its tried offers: each later lookup skips them, and once none is left
after the backoff all are tried again. A message is stored on the fleet (`dstack fleet`) and
said once as an event. Instances that went below min together (two idle ones timing out at
once) are re-created once they have ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from dstack.models.fleets import FleetStatus
from dstack.models.instances import InstanceStatus
from dstack.models.instances import InstanceTerminationReason as IR
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.runs import RetryEvent
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.reconcilers.base import Reconciler
from dstack.server.reconcilers.job_facts import as_tried, offer_of
from dstack.server.services import events
from dstack.server.services.fleet_nodes import add_instances, choose_offer, nodes_of
from dstack.server.services.pool import LIVE_INSTANCE_STATUSES, fleet_conf, live_backend_types

# What a failed creation's instance reason means to `retry.on_events`.
# A host that never came up (provisioning_timeout) is an error too: without it a fleet would
# replace a host that cannot boot over and over, with no backoff.
RETRY_EVENT = {
    IR.NO_OFFERS.value: RetryEvent.NO_CAPACITY.value,
    IR.ERROR.value: RetryEvent.ERROR.value,
    IR.PROVISIONING_TIMEOUT.value: RetryEvent.ERROR.value,
}


@dataclass(frozen=True)
class Failure:
    reason: str  # no_offers | error | provisioning_timeout
    message: str
    at: datetime


@dataclass(frozen=True)
class FleetView:
    status: str
    live_instances: int  # instances not yet terminated
    ending: int = 0  # instances terminating (a failure is known only once they end)
    nodes_min: int = 0  # 0 for an SSH fleet
    failures: tuple[Failure, ...] = ()  # failed creations since an instance last started
    retry: dict[str, Any] | None = None  # {"on_events": [...], "duration": seconds}
    backoff: tuple[float, ...] = (15.0,)
    message: str | None = None  # the stored status_message


@dataclass
class FleetDecision:
    action: str = "wait"  # wait | find_offer | create
    status: str | None = None
    deleted: bool = False
    create: int = 0
    message: str | None = None  # the status_message to store (None: cleared)
    values: dict[str, Any] = field(default_factory=dict)


def decide(v: FleetView, now: datetime) -> FleetDecision:
    if v.status == FleetStatus.TERMINATING.value:
        if v.live_instances == 0:
            return FleetDecision(status=FleetStatus.TERMINATED.value, deleted=True)
        return FleetDecision(message=v.message)
    missing = v.nodes_min - v.live_instances
    if v.status != FleetStatus.ACTIVE.value or missing <= 0:
        return FleetDecision()
    if v.ending:
        return FleetDecision(message=v.message)
    if v.failures:
        last = v.failures[-1]
        event = RETRY_EVENT.get(last.reason, RetryEvent.ERROR.value)
        if v.retry is None or event not in (v.retry.get("on_events") or []):
            return FleetDecision(
                message=f"Creating an instance failed ({last.message}); the fleet's `retry` "
                f"does not cover {event}: no new instance is created (set `retry` to keep trying)"
            )
        duration = float(v.retry.get("duration") or 3600)
        if (now - v.failures[0].at).total_seconds() > duration:
            return FleetDecision(
                message=f"Creating an instance failed for longer than retry.duration "
                f"({duration:g}s); last: {last.message}"
            )
        wait = v.backoff[min(len(v.failures), len(v.backoff)) - 1] if v.backoff else 0.0
        if (now - last.at).total_seconds() < wait:
            return FleetDecision(message=v.message)
    return FleetDecision(action="find_offer", create=missing, message=v.message)


def after_offer(
    d: FleetDecision, offer: InstanceOfferWithAvailability | None, why: str | None
) -> FleetDecision:
    if offer is None:
        return FleetDecision(message=f"No instance created: {why}")
    return FleetDecision(action="create", create=d.create)


class FleetReconciler(Reconciler):
    kind = "fleets"
    table = t.Fleet
    active_statuses = (FleetStatus.ACTIVE.value, FleetStatus.TERMINATING.value)

    def interval(self, status: str) -> float:
        return self.ctx.settings.resync_seconds

    async def process(self, row_id: str, token: str) -> None:
        now = utcnow()
        async with self.ctx.db.session() as s:
            fleet = await self.load_row(s, row_id, token)
            if fleet is None:
                return
            project = await s.get(t.Project, fleet.project_id)
            conf = fleet_conf(fleet)
            rows = list(
                (await s.execute(select(t.Instance).where(t.Instance.fleet_id == fleet.id)))
                .scalars()
                .all()
            )
            live_backends = await live_backend_types(s)
        d = decide(self._view(fleet, conf, rows), now)
        offer = None
        if d.action == "find_offer":  # backend calls, outside any transaction
            key = (fleet.id, fleet.name, conf)
            tried = frozenset(as_tried(offer_of(i)).key() for i in _failed(rows))
            offer, why = await choose_offer(
                self.ctx, project.id, project.name, key, live_backends, tried
            )
            if offer is None and tried:  # every offer tried: start over after the backoff
                offer, why = await choose_offer(
                    self.ctx, project.id, project.name, key, live_backends
                )
            d = after_offer(d, offer, why)
        async with self.ctx.db.session() as s:
            await self._apply(s, fleet, conf, d, offer, token, now)
        if d.action == "create":
            self.ctx.hub.wake("instances")

    def _view(self, fleet: t.Fleet, conf: dict[str, Any], rows: list[t.Instance]) -> FleetView:
        live = sum(1 for i in rows if i.status != InstanceStatus.TERMINATED.value)
        if fleet.status == FleetStatus.ACTIVE.value:
            live = sum(1 for i in rows if i.status in LIVE_INSTANCE_STATUSES and not i.deleted)
        nodes = nodes_of(conf) or {}
        failures = tuple(
            Failure(i.termination_reason or "", i.termination_reason_message or "", i.finished_at)
            for i in sorted(_failed(rows), key=lambda i: i.finished_at)
        )
        ending = sum(1 for i in rows if i.status == InstanceStatus.TERMINATING.value)
        return FleetView(
            status=fleet.status,
            live_instances=live,
            ending=ending,
            nodes_min=int(nodes.get("min") or 0),
            failures=failures,
            retry=conf.get("retry"),
            backoff=tuple(self.ctx.settings.retry_backoff),
            message=fleet.status_message,
        )

    async def _apply(
        self,
        s: Any,
        fleet: t.Fleet,
        conf: dict[str, Any],
        d: FleetDecision,
        offer: InstanceOfferWithAvailability | None,
        token: str,
        now: datetime,
    ) -> None:
        values: dict[str, Any] = {}
        if d.status:
            values = {"status": d.status, "deleted": d.deleted}
        if d.message != fleet.status_message and not d.status:
            values["status_message"] = d.message
            if d.message:
                _event(s, fleet, d.message, now)
        if d.action == "create" and offer is not None:
            await add_instances(s, fleet, conf, offer, d.create, now, "below nodes.min")
        await self.guarded_update(s, fleet.id, token, values, now)
        if d.status:
            _event(
                s, fleet, f"Fleet status changed {fleet.status.upper()} -> {d.status.upper()}", now
            )
        await s.commit()


def _failed(rows: list[t.Instance]) -> list[t.Instance]:
    """Creations of the fleet's own instances that failed since one last started."""
    starts = [i.started_at for i in rows if i.started_at is not None]
    since = max(starts) if starts else None
    return [
        i
        for i in rows
        if i.provisioning_job_id is None
        and i.offer
        and i.status == InstanceStatus.TERMINATED.value
        and i.termination_reason in RETRY_EVENT
        and i.finished_at is not None
        and (since is None or i.finished_at > since)
    ]


def _event(s: Any, fleet: t.Fleet, message: str, now: datetime) -> None:
    events.record(
        s,
        project_id=fleet.project_id,
        target_type="fleet",
        target_id=fleet.id,
        target_name=fleet.name,
        message=message,
        now=now,
    )
