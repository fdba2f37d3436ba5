"""The inventory sweeper: what a backend holds for this server that no live instance row owns
is terminated, with an event, so a crash between a backend call and the database write never
leaves a machine (or an agent) running and billed forever.

Each backend tags what it creates with the instance id the server wrote first; an untagged
item is never touched. An item whose row is still live (pending through terminating) is
owned; a row that is terminated or missing owns nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import select

from dstack.models.instances import InstanceStatus
from dstack.models.wire import utcnow
from dstack.server.backends.base import BackendError, Compute, InventoryItem
from dstack.server.db import tables as t
from dstack.server.db.cluster import ClusterLease
from dstack.server.services import events, metrics
from dstack.server.services.context import ServerContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orphan:
    backend: str
    item: InventoryItem
    project_id: str | None  # the owning project when a (finished) row still names it
    name: str


def orphans(
    items: list[InventoryItem], rows: dict[str, tuple[str, str, bool]]
) -> list[InventoryItem]:
    """Tagged items whose instance row is missing or terminated (a terminating row is still
    being cleaned up by its reconciler). `rows`: id -> (status, project id, deleted)."""
    out = []
    for item in items:
        if not item.instance_id:
            continue
        row = rows.get(item.instance_id)
        if row is None or row[0] == InstanceStatus.TERMINATED.value:
            out.append(item)
    return out


class InventorySweeper:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def run_forever(self) -> None:
        # One replica sweeps for all (docs/replicas.md). The lease outlives a sweep interval,
        # so the sweeping replica keeps it and another takes over only when it stops renewing.
        st = self.ctx.settings
        lease = ClusterLease(
            self.ctx.db,
            "inventory",
            self.ctx.instance_id,
            max(st.lease_seconds, st.inventory_sweep_seconds * 1.5),
        )
        while True:
            try:
                if await lease.held():
                    await self.sweep()
            except Exception:
                log.exception("inventory sweep failed; will retry")
            await asyncio.sleep(self.ctx.settings.inventory_sweep_seconds)

    async def sweep(self) -> list[Orphan]:
        found: list[Orphan] = []
        for backend in self.ctx.backends.all():
            found.extend(await self._sweep_backend(backend))
        return found

    async def _sweep_backend(self, backend: Compute) -> list[Orphan]:
        try:
            items = await backend.inventory()
        except BackendError as e:
            log.warning("inventory of backend %s failed: %s", backend.type, e)
            return []
        ids = [i.instance_id for i in items if i.instance_id]
        if not ids:
            return []
        async with self.ctx.db.session() as s:
            found = (
                await s.execute(
                    select(
                        t.Instance.id,
                        t.Instance.status,
                        t.Instance.project_id,
                        t.Instance.deleted,
                        t.Instance.name,
                    ).where(t.Instance.id.in_(ids))
                )
            ).all()
        rows = {r[0]: (r[1], r[2], r[3]) for r in found}
        names = {r[0]: r[4] for r in found}
        owner = await self._owner_project(backend)
        swept = []
        for item in orphans(items, rows):
            try:
                await backend.terminate_orphan(item)
            except BackendError as e:
                log.warning("could not terminate orphan %s: %s", item.description, e)
                continue
            row = rows.get(item.instance_id or "")
            project_id = row[1] if row else owner
            swept.append(Orphan(backend.type, item, project_id, names.get(item.instance_id, "")))
        if swept:
            await self._record(swept)
        return swept

    async def _owner_project(self, backend: Compute) -> str | None:
        """Where the event of an orphan without a row goes: the backend's one project, if it
        serves only one (else it is recorded with no project, for admins)."""
        if backend.projects is None or len(backend.projects) != 1:
            return None
        (name,) = tuple(backend.projects)
        async with self.ctx.db.session() as s:
            return (
                await s.execute(select(t.Project.id).where(t.Project.name == name))
            ).scalar_one_or_none()

    async def _record(self, swept: list[Orphan]) -> None:
        now = utcnow()
        async with self.ctx.db.session() as s:
            for o in swept:
                events.record(
                    s,
                    project_id=o.project_id,
                    target_type="instance",
                    target_id=o.item.instance_id or "",
                    target_name=o.name or o.item.instance_id or "",
                    message=(
                        f"Backend {o.backend}: terminated {o.item.description}, which no live "
                        "instance owns"
                    ),
                    now=now,
                )
            await s.commit()
        for o in swept:
            log.warning("terminated orphan %s of backend %s", o.item.description, o.backend)


class MetricsSweeper:
    """Deletes job metrics points past their retention (services/metrics.py says how long)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("metrics sweep failed; will retry")
            await asyncio.sleep(self.ctx.settings.metrics_sweep_seconds)

    async def sweep(self) -> int:
        st = self.ctx.settings
        async with self.ctx.db.session() as s:
            return await metrics.delete_old(
                s, utcnow(), st.metrics_running_ttl_seconds, st.metrics_finished_ttl_seconds
            )
