"""Fleets: created `active` by apply; `dstack fleet delete` makes them `terminating` (and their
instances `terminating`, which the instance reconciler tears down); this loop finishes it.

| status      | observation                               | next status / effect             |
|-------------|-------------------------------------------|----------------------------------|
| active      | -                                         | (nothing: instances live on)     |
| terminating | some instance not yet terminated          | (wait; instances are torn down)  |
| terminating | every instance terminated (or none)       | terminated; the fleet is deleted |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from dstack.models.fleets import FleetStatus
from dstack.models.instances import InstanceStatus
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.reconcilers.base import Reconciler
from dstack.server.services import events


@dataclass(frozen=True)
class FleetView:
    status: str
    live_instances: int  # instances not yet terminated


@dataclass
class FleetDecision:
    status: str | None = None
    deleted: bool = False


def decide(v: FleetView, now: datetime) -> FleetDecision:
    if v.status == FleetStatus.TERMINATING.value and v.live_instances == 0:
        return FleetDecision(status=FleetStatus.TERMINATED.value, deleted=True)
    return FleetDecision()


class FleetReconciler(Reconciler):
    kind = "fleets"
    table = t.Fleet
    active_statuses = (FleetStatus.TERMINATING.value,)

    def interval(self, status: str) -> float:
        return self.ctx.settings.resync_seconds

    async def process(self, row_id: str, token: str) -> None:
        now = utcnow()
        async with self.ctx.db.session() as s:
            fleet = await self.load_row(s, row_id, token)
            if fleet is None:
                return
            live = (
                await s.execute(
                    select(func.count()).where(
                        t.Instance.fleet_id == fleet.id,
                        t.Instance.status != InstanceStatus.TERMINATED.value,
                    )
                )
            ).scalar_one()
            d = decide(FleetView(fleet.status, int(live)), now)
            values: dict[str, object] = {}
            if d.status:
                values = {"status": d.status, "deleted": d.deleted}
            await self.guarded_update(s, fleet.id, token, values, now)
            if d.status:
                events.record(
                    s,
                    project_id=fleet.project_id,
                    target_type="fleet",
                    target_id=fleet.id,
                    target_name=fleet.name,
                    message=f"Fleet status changed {fleet.status.upper()} -> {d.status.upper()}",
                    now=now,
                )
            await s.commit()
