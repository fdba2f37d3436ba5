"""Fleets and their instances as the API returns them (`dstack fleet`, `fleet get --json`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ResourceNotExistsError
from dstack.models.fleets import Fleet, FleetSpec, FleetStatus
from dstack.models.instances import Instance, InstanceStatus
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext
from dstack.server.services.pool import busy_blocks


async def _instances(s: AsyncSession, fleet: t.Fleet, project: t.Project) -> list[Instance]:
    rows = list(
        (
            await s.execute(
                select(t.Instance)
                .where(t.Instance.fleet_id == fleet.id, t.Instance.deleted.is_(False))
                .order_by(t.Instance.instance_num)
            )
        ).scalars()
    )
    busy = await busy_blocks(s, [r.id for r in rows])
    out = []
    for r in rows:
        status = r.status
        if status == InstanceStatus.IDLE.value and busy.get(r.id):
            status = InstanceStatus.BUSY.value
        offer = InstanceOfferWithAvailability.model_validate_json(r.offer) if r.offer else None
        out.append(
            Instance(
                id=r.id,
                project_name=project.name,
                backend=r.backend,
                instance_type=offer.instance if offer else None,
                name=r.name,
                fleet_id=fleet.id,
                fleet_name=fleet.name,
                instance_num=r.instance_num,
                hostname=r.hostname,
                status=InstanceStatus(status),
                unreachable=r.unreachable,
                termination_reason=r.termination_reason,
                termination_reason_message=r.termination_reason_message,
                created=r.created_at,
                finished_at=r.finished_at,
                region=r.region,
                price=r.price,
                total_blocks=r.total_blocks,
                busy_blocks=busy.get(r.id, 0),
            )
        )
    return out


async def fleet_model(s: AsyncSession, fleet: t.Fleet, project: t.Project) -> Fleet:
    return Fleet(
        id=fleet.id,
        name=fleet.name,
        project_name=project.name,
        spec=FleetSpec.model_validate_json(fleet.spec),
        created_at=fleet.created_at,
        status=FleetStatus(fleet.status),
        status_message=fleet.status_message,
        generation=fleet.generation or 1,
        instances=await _instances(s, fleet, project),
    )


async def list_fleets(s: AsyncSession, project: t.Project) -> list[Fleet]:
    rows = (
        await s.execute(
            select(t.Fleet)
            .where(t.Fleet.project_id == project.id, t.Fleet.deleted.is_(False))
            .order_by(t.Fleet.created_at.desc())
        )
    ).scalars()
    return [await fleet_model(s, f, project) for f in rows]


async def get_fleet(
    s: AsyncSession, project: t.Project, name: str | None, fleet_id: str | None
) -> Fleet:
    q = select(t.Fleet).where(t.Fleet.project_id == project.id)
    q = (
        q.where(t.Fleet.id == fleet_id)
        if fleet_id
        else q.where(t.Fleet.name == name, t.Fleet.deleted.is_(False))
    )
    row = (await s.execute(q)).scalars().first()
    if row is None:
        raise ResourceNotExistsError(f"Fleet {name or fleet_id} does not exist")
    return await fleet_model(s, row, project)


def on_unrented_hosts(ctx: ServerContext, configuration: dict[str, Any]) -> bool:
    """Whether a fleet's hosts are not rented from a cloud by the project: SSH hosts the user
    lists (`ssh_config`), or backends whose hosts are the server's own machine. Managing such a
    fleet needs project admin (authz: `Rule.host_fleets_need_admin`)."""
    if configuration.get("ssh_config"):
        return True
    own = {b.type for b in ctx.backends.shared if not b.capabilities.remote_hosts}
    named = set(configuration.get("backends") or [])
    return bool(named) and named <= own
