"""What a plan says besides its offers: the same offer reached through several fleets shown
once, and, when nothing fits, why, before the user is asked to submit (issue 12: a plan with
no offers says why: which backends, which hosts, what the run asks that they lack); and the
`instances` a run is pinned to, checked against the project's instances."""

from __future__ import annotations

from typing import Any

from dstack.errors import ServerClientError
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.scheduler.pins import unmatched
from dstack.server.scheduler.placement import Candidate, PoolInstance, Ranking, Requirements
from dstack.server.services.context import ServerContext

# Enough reasons to see the pattern; the rest are counted.
MAX_REASONS = 8


def unique_offers(candidates: list[Candidate]) -> list[InstanceOfferWithAvailability]:
    """Best first, each existing instance once and each backend offer once: a backend open
    to several fleets offers the same machine to each, which is one choice for the user."""
    seen: set[tuple] = set()
    out: list[InstanceOfferWithAvailability] = []
    for cand in candidates:
        offer = cand.offer
        key: tuple = (
            ("instance", cand.instance_id)
            if cand.instance_id
            else (
                offer.backend,
                offer.region,
                offer.instance.name,
                offer.price,
                offer.instance.resources.spot,
                tuple(offer.availability_zones or ()),
            )
        )
        if key not in seen:
            seen.add(key)
            out.append(offer)
    return out


def unconfigured_backends(ctx: ServerContext, project_id: str, req: Requirements) -> list[str]:
    """`backends: [aws]` on a server without AWS: say so, rather than 'no offers'."""
    configured = sorted(ctx.backends.for_project(project_id))
    return [
        f"backend {name} is not configured for this project "
        f"(configured: {', '.join(configured) or 'none'})"
        for name in req.backends or ()
        if name not in configured
    ]


def no_offer_reasons(
    ctx: ServerContext, project_id: str, req: Requirements, notes: list[str], ranking: Ranking
) -> list[str]:
    """Why nothing fits, most telling first: backends the run names that do not exist here,
    backends that offered nothing, then each host or offer and what it lacks."""
    reasons: list[str] = []
    for reason in [*unconfigured_backends(ctx, project_id, req), *notes, *ranking.rejections]:
        if reason not in reasons:
            reasons.append(reason)
    if not reasons:
        reasons.append("no fleet or backend of this project can take runs")
    if len(reasons) > MAX_REASONS:
        more = len(reasons) - MAX_REASONS
        reasons = [*reasons[:MAX_REASONS], f"and {more} more"]
    return reasons


def refuse_unknown_instances(req: Requirements, instances: list[PoolInstance]) -> None:
    """`instances: [does-not-exist]` is refused at plan and apply, naming it and the
    instances there are, rather than a run that waits forever for a host that is not there."""
    missing = unmatched(req.instances, instances)
    if missing:
        there = ", ".join(sorted(i.name for i in instances)) or "none"
        raise ServerClientError(
            f"`instances`: no instance matches {', '.join(missing)} in this project "
            f"(instances: {there})",
            field="run_spec.configuration.instances",
        )


def field_warnings(conf: Any, ranking: Ranking) -> list[str]:
    """Fields that are valid but have no effect on the offer the run would get, shown in the
    plan: fields that only act when an instance is created (`tags`, `idle_duration`,
    `reservation`) when the best place is an instance that exists already."""
    best = ranking.best
    if best is None or best.instance_id is None:
        return []
    where = f"the run goes to the existing instance {best.offer.instance.name} ({best.fleet_name})"
    out = []
    for name in ("tags", "idle_duration", "reservation"):
        if getattr(conf, name, None) is not None:
            out.append(f"`{name}` has no effect here: {where}; it applies to new instances")
    return out
