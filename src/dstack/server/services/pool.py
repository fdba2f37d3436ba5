"""What the scheduler sees: a project's fleets, their instances with free blocks, and the
capacity backends could still add. Used by the plan and by real placement alike."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.resources import ResourcesSpec
from dstack.server.db import tables as t
from dstack.server.scheduler.placement import FleetCapacity, PoolInstance, Requirements
from dstack.server.services.context import ServerContext

FINISHED_JOB_STATUSES = ("terminated", "aborted", "failed", "done")
LIVE_INSTANCE_STATUSES = ("pending", "provisioning", "idle", "busy")


@dataclass
class Pool:
    instances: list[PoolInstance]
    capacity: list[FleetCapacity]
    has_fleets: bool


async def busy_blocks(session: AsyncSession, instance_ids: list[str]) -> dict[str, int]:
    if not instance_ids:
        return {}
    rows = await session.execute(
        select(t.Job.instance_id, func.sum(t.Job.used_blocks))
        .where(t.Job.instance_id.in_(instance_ids), t.Job.status.not_in(FINISHED_JOB_STATUSES))
        .group_by(t.Job.instance_id)
    )
    return {iid: int(n or 0) for iid, n in rows.all()}


def fleet_conf(fleet: t.Fleet) -> dict[str, Any]:
    return json.loads(fleet.spec).get("configuration", {})


def _nodes_max(conf: dict[str, Any]) -> int | None:
    nodes = conf.get("nodes")
    if isinstance(nodes, dict):
        return nodes.get("max")
    if isinstance(nodes, int):
        return nodes
    return None


async def load_pool(ctx: ServerContext, session: AsyncSession, project_id: str) -> Pool:
    fleets = list(
        (
            await session.execute(
                select(t.Fleet).where(
                    t.Fleet.project_id == project_id,
                    t.Fleet.deleted.is_(False),
                    t.Fleet.status == "active",
                )
            )
        ).scalars()
    )
    by_id = {f.id: f for f in fleets}
    instances = list(
        (
            await session.execute(
                select(t.Instance).where(
                    t.Instance.fleet_id.in_(list(by_id)),
                    t.Instance.deleted.is_(False),
                    t.Instance.status.in_(LIVE_INSTANCE_STATUSES),
                )
            )
        ).scalars()
    )
    busy = await busy_blocks(session, [i.id for i in instances])
    pool = [_pool_instance(i, by_id[i.fleet_id], busy.get(i.id, 0)) for i in instances if i.offer]
    capacity = []
    for fleet in fleets:
        conf = fleet_conf(fleet)
        if conf.get("ssh_config"):
            continue
        count = sum(1 for i in instances if i.fleet_id == fleet.id)
        limit = _nodes_max(conf)
        if limit is not None and count >= limit:
            continue
        offers: list[InstanceOfferWithAvailability] = []
        for btype, backend in ctx.backends.items():
            allowed = conf.get("backends")
            if allowed and btype not in allowed:
                continue
            offers.extend(await backend.offers())
        capacity.append(FleetCapacity(fleet.id, fleet.name, tuple(offers)))
    return Pool(pool, capacity, bool(fleets))


def _pool_instance(inst: t.Instance, fleet: t.Fleet, busy: int) -> PoolInstance:
    offer = InstanceOfferWithAvailability.model_validate_json(inst.offer or "{}")
    status = inst.status
    if status == "idle" and busy > 0:
        status = "busy"
    return PoolInstance(
        id=inst.id,
        name=inst.name,
        fleet_id=fleet.id,
        fleet_name=fleet.name,
        backend=inst.backend,
        region=inst.region,
        resources=offer.instance.resources,
        instance_type=offer.instance.name,
        price=inst.price,
        status=status,
        total_blocks=inst.total_blocks,
        busy_blocks=busy,
        unreachable=inst.unreachable,
        # The local backend runs process-runtime jobs side by side (docs/architecture.md).
        shared=inst.backend == "local",
    )


def requirements_for(conf: Any, job_requirements: dict[str, Any]) -> Requirements:
    """The scheduler's view of one job: its resources plus the run's profile limits."""
    resources = ResourcesSpec.model_validate(job_requirements["resources"])

    def tup(name: str) -> tuple[str, ...] | None:
        value = getattr(conf, name, None)
        return tuple(getattr(v, "value", v) for v in value) if value else None

    policy = getattr(conf, "creation_policy", None)
    return Requirements(
        resources=resources,
        spot_policy=job_requirements.get("spot") or "on-demand",
        max_price=job_requirements.get("max_price"),
        backends=tup("backends"),
        regions=tup("regions"),
        instance_types=tup("instance_types"),
        fleets=tup("fleets"),
        creation_policy=getattr(policy, "value", policy) or "reuse-or-create",
        multinode=bool(job_requirements.get("multinode")),
        # Without an image the job runs as processes on the host: it need not own a block.
        exclusive=bool(getattr(conf, "image", None)) or bool(job_requirements.get("multinode")),
    )
