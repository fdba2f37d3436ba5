"""A backend fleet's own instances (`nodes`): the offer they are created from and the rows.

Apply creates `nodes.target` instances, the fleet reconciler keeps `nodes.min`; both take the
cheapest offer that the fleet's configuration allows, through the same pool and ranking a
run's placement uses (`pool.with_capacity` + `ranking.rank`), so the fleet's `resources`,
`spot_policy`, `max_price`, `regions`, `availability_zones`, `instance_types`, `reservation`
and `backends` mean the same thing for both. The instance reconciler creates the hosts.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ServerClientError
from dstack.models.common import canonical_backend
from dstack.models.instances import InstanceStatus
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.db import tables as t
from dstack.server.scheduler.placement import NEEDS, OfferKey
from dstack.server.scheduler.ranking import rank
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.pool import (
    PoolRows,
    fleet_requirements,
    with_capacity,
)

# A fleet's idle instances above `nodes.min` live this long by default (server.md §3.4).
FLEET_IDLE_DURATION = 3 * 24 * 3600
# The configuration field each backend capability a fleet needs comes from.
FIELD_OF_NEED = {"reservations": "reservation", "spot": "spot_policy"}


def nodes_of(conf: dict[str, Any]) -> dict[str, Any] | None:
    """`nodes` of a backend fleet ({min, target, max}); None for an SSH fleet."""
    if conf.get("ssh_config"):
        return None
    nodes = conf.get("nodes")
    return nodes if isinstance(nodes, dict) else None


def check_capabilities(
    ctx: ServerContext, project_id: str, project_name: str, conf: dict[str, Any]
) -> None:
    """A field the fleet's backends cannot do is refused at apply, naming the field: among
    the backends the fleet may use, at least one must have every capability it needs."""
    if nodes_of(conf) is None:
        return
    need = fleet_requirements(conf).needs
    if not need:
        return
    named = {canonical_backend(b) for b in conf.get("backends") or ()}
    usable = [
        b
        for btype, b in ctx.backends.for_project(project_id).items()
        if (not named or btype in named)
        and b.capabilities.creates_instances
        and b.serves(project_name)
    ]
    if any(need <= b.capabilities.names() for b in usable):
        return
    missing = sorted(need)[0]
    types = ", ".join(sorted(b.type for b in usable)) or "none"
    raise ServerClientError(
        f"`{FIELD_OF_NEED.get(missing, missing)}`: no backend of this fleet ({types}) "
        f"can do it: {NEEDS.get(missing, missing)}",
        field=FIELD_OF_NEED.get(missing, missing),
    )


async def choose_offer(
    ctx: ServerContext,
    project_id: str,
    project_name: str,
    fleet: tuple[str, str, dict[str, Any]],
    live_backends: set[str],
    tried: frozenset[OfferKey] = frozenset(),
) -> tuple[InstanceOfferWithAvailability | None, str | None]:
    """The cheapest offer the fleet allows, skipping `tried`; else None and why (the
    message `dstack fleet` and the fleet's events show). Backend calls: call it outside any
    transaction; `live_backends` is `pool.live_backend_types`."""
    rows = PoolRows(
        project_name=project_name,
        project_id=project_id,
        fleets=[fleet],
        instances=[],
        counts={},
        live_backends=live_backends,
    )
    req = fleet_requirements(fleet[2])
    pool = await with_capacity(ctx, rows, req)
    ranking = rank(req, [], pool.capacity, tried)
    best = ranking.best
    if best is not None:
        return best.offer, None
    reasons = [*pool.notes, *ranking.rejections]
    if not reasons:
        return None, "no offers: no backend of this project can create instances"
    shown = "; ".join(reasons[:5])
    more = f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""
    return None, f"no offers matching the fleet's configuration: {shown}{more}"


async def add_instances(
    s: AsyncSession,
    fleet: t.Fleet,
    conf: dict[str, Any],
    offer: InstanceOfferWithAvailability,
    count: int,
    now: datetime,
    why: str,
) -> list[t.Instance]:
    """`count` pending instances of the fleet from `offer` (the instance reconciler creates
    them); each leaves an event."""
    n = (
        await s.execute(
            select(func.max(t.Instance.instance_num)).where(t.Instance.fleet_id == fleet.id)
        )
    ).scalar()
    num = 0 if n is None else n + 1
    idle = conf.get("idle_duration")
    out = []
    for _ in range(count):
        inst = t.Instance(
            id=str(uuid.uuid4()),
            project_id=fleet.project_id,
            fleet_id=fleet.id,
            instance_num=num,
            name=f"{fleet.name}-{num}",
            backend=offer.backend,
            region=offer.region,
            status=InstanceStatus.PENDING.value,
            offer=offer.model_dump_json(),
            price=offer.price,
            total_blocks=total_blocks(conf, offer),
            idle_duration=FLEET_IDLE_DURATION if idle is None else idle,
            created_at=now,
            last_processed_at=now,
            dirty=True,
        )
        s.add(inst)
        kind = "spot" if offer.instance.resources.spot else "on-demand"
        events.record(
            s,
            project_id=fleet.project_id,
            target_type="instance",
            target_id=inst.id,
            target_name=inst.name,
            message=f"Instance created for fleet {fleet.name} ({why}): {offer.backend} "
            f"{offer.region} {offer.instance.name} ({kind}, ${offer.price:g}/h)",
            now=now,
        )
        out.append(inst)
        num += 1
    return out


def total_blocks(conf: dict[str, Any], offer: InstanceOfferWithAvailability | None = None) -> int:
    """The fleet's `blocks`; `auto` is one block per GPU of the instance (at least one)."""
    blocks = conf.get("blocks", 1)
    if blocks == "auto" and offer is not None:
        return max(1, len(offer.instance.resources.gpus))
    return blocks if isinstance(blocks, int) and blocks > 0 else 1
