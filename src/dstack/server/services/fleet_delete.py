"""Fleet and instance deletion (`dstack fleet delete NAME [-i N]`, hosts dropped by an in-place
update): instances go `terminating` (the instance reconciler tears each host down), the fleet
goes `terminating` (the fleet reconciler finishes it). Instances that run jobs are refused."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ResourceNotExistsError, ServerClientError
from dstack.models.fleets import FleetStatus
from dstack.models.instances import InstanceStatus, InstanceTerminationReason
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.pool import FINISHED_JOB_STATUSES, LIVE_INSTANCE_STATUSES

LIVE = LIVE_INSTANCE_STATUSES


async def current_fleet(s: AsyncSession, project: t.Project, name: str) -> t.Fleet | None:
    return (
        await s.execute(
            select(t.Fleet).where(
                t.Fleet.project_id == project.id, t.Fleet.name == name, t.Fleet.deleted.is_(False)
            )
        )
    ).scalar_one_or_none()


async def live_instances(s: AsyncSession, fleet: t.Fleet) -> list[t.Instance]:
    return list(
        (
            await s.execute(
                select(t.Instance)
                .where(
                    t.Instance.fleet_id == fleet.id,
                    t.Instance.deleted.is_(False),
                    t.Instance.status.in_(LIVE),
                )
                .order_by(t.Instance.instance_num)
            )
        ).scalars()
    )


def fleet_event(s: AsyncSession, fleet: t.Fleet, message: str, now: Any) -> None:
    events.record(
        s,
        project_id=fleet.project_id,
        target_type="fleet",
        target_id=fleet.id,
        target_name=fleet.name,
        message=message,
        now=now,
    )


async def _busy(s: AsyncSession, instances: list[t.Instance]) -> list[t.Instance]:
    if not instances:
        return []
    ids = set(
        (
            await s.execute(
                select(t.Job.instance_id).where(
                    t.Job.instance_id.in_([i.id for i in instances]),
                    t.Job.status.not_in(FINISHED_JOB_STATUSES),
                )
            )
        ).scalars()
    )
    return [i for i in instances if i.id in ids]


async def terminate_instances(
    s: AsyncSession, project: t.Project, fleet: t.Fleet, instances: list[t.Instance], now: Any
) -> None:
    busy = await _busy(s, instances)
    if busy:
        names = ", ".join(i.name for i in busy)
        raise ServerClientError(
            f"Fleet {fleet.name}: instances in use by runs ({names}); stop the runs first",
            code="resource_in_use",
        )
    for inst in instances:
        await s.execute(
            update(t.Instance)
            .where(t.Instance.id == inst.id)
            .values(
                status=InstanceStatus.TERMINATING.value,
                termination_reason=InstanceTerminationReason.TERMINATED_BY_USER.value,
                dirty=True,
                version=t.Instance.version + 1,
            )
        )
        events.record(
            s,
            project_id=project.id,
            target_type="instance",
            target_id=inst.id,
            target_name=inst.name,
            message=f"Instance status changed {inst.status.upper()} -> TERMINATING. "
            "Termination reason: TERMINATED_BY_USER",
            now=now,
        )


async def _fleet_row(s: AsyncSession, project: t.Project, name: str) -> t.Fleet:
    fleet = await current_fleet(s, project, name)
    if fleet is None:
        raise ResourceNotExistsError(f"Fleet {name} does not exist")
    return fleet


async def delete_fleets(
    ctx: ServerContext, s: AsyncSession, user: t.User, project: t.Project, names: list[str]
) -> None:
    now = utcnow()
    for name in names:
        fleet = await _fleet_row(s, project, name)
        instances = await live_instances(s, fleet)
        await terminate_instances(s, project, fleet, instances, now)
        if fleet.status != FleetStatus.TERMINATING.value:
            fleet_event(
                s,
                fleet,
                f"Fleet status changed {fleet.status.upper()} -> TERMINATING "
                f"(deleted by {user.name})",
                now,
            )
        fleet.status = FleetStatus.TERMINATING.value
        fleet.dirty = True
    await s.commit()
    ctx.hub.wake("instances", "fleets")


async def delete_instances(
    ctx: ServerContext, s: AsyncSession, project: t.Project, name: str, nums: list[int]
) -> None:
    fleet = await _fleet_row(s, project, name)
    instances = [i for i in await live_instances(s, fleet) if i.instance_num in set(nums)]
    known = {i.instance_num for i in instances}
    missing = [n for n in nums if n not in known]
    if missing:
        raise ServerClientError(
            f"Fleet {name} has no live instance {', '.join(map(str, missing))}",
            field="instance_nums",
        )
    await terminate_instances(s, project, fleet, instances, utcnow())
    await s.commit()
    ctx.hub.wake("instances")
