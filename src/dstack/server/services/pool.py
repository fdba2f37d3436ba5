"""What the scheduler sees: a project's fleets, their instances with free blocks, and the
capacity backends could still add. Used by the plan and by real placement alike."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.common import canonical_backend
from dstack.models.fleets import FleetStatus
from dstack.models.instances import InstanceStatus
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.resources import ResourcesSpec
from dstack.models.runs import JobStatus
from dstack.server.backends.base import BackendError, Compute, OfferRequirements
from dstack.server.db import tables as t
from dstack.server.scheduler.pins import InstancePin
from dstack.server.scheduler.placement import (
    FleetCapacity,
    PoolInstance,
    Requirements,
    offer_rejection,
)
from dstack.server.scheduler.runtime_fit import HostFacts
from dstack.server.services.context import ServerContext
from dstack.server.services.hosts import capabilities, host_key
from dstack.server.services.runtime_fields import container_image, runtime_needs

FINISHED_JOB_STATUSES = tuple(
    s.value for s in (JobStatus.TERMINATED, JobStatus.ABORTED, JobStatus.FAILED, JobStatus.DONE)
)
LIVE_INSTANCE_STATUSES = tuple(
    s.value
    for s in (
        InstanceStatus.PENDING,
        InstanceStatus.PROVISIONING,
        InstanceStatus.IDLE,
        InstanceStatus.BUSY,
    )
)


@dataclass
class Pool:
    instances: list[PoolInstance]
    capacity: list[FleetCapacity]
    has_fleets: bool
    # Why a backend was not offered (shown with the no-capacity message).
    notes: list[str] = field(default_factory=list)


@dataclass
class PoolRows:
    """What the database says, read in one short session; `with_capacity` then asks the
    backends for offers outside any transaction."""

    project_name: str
    fleets: list[tuple[str, str, dict[str, Any]]]  # (id, name, configuration)
    instances: list[PoolInstance]
    counts: dict[str, int]  # live instances per fleet id
    live_backends: set[str]  # backends with a live instance anywhere on this server
    project_id: str = ""  # whose backends give capacity (a project's clouds are its own)


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


async def load_pool_rows(ctx: ServerContext, session: AsyncSession, project_id: str) -> PoolRows:
    project = await session.get(t.Project, project_id)
    fleets = list(
        (
            await session.execute(
                select(t.Fleet).where(
                    t.Fleet.project_id == project_id,
                    t.Fleet.deleted.is_(False),
                    t.Fleet.status == FleetStatus.ACTIVE.value,
                )
            )
        ).scalars()
    )
    by_id = {f.id: f for f in fleets}
    instances = list(
        (
            await session.execute(
                select(t.Instance)
                .where(
                    t.Instance.fleet_id.in_(list(by_id)),
                    t.Instance.deleted.is_(False),
                    t.Instance.status.in_(LIVE_INSTANCE_STATUSES),
                )
                # Equal places are taken in a stable order (the fleet's first host first).
                .order_by(t.Instance.created_at, t.Instance.instance_num)
            )
        ).scalars()
    )
    busy = await busy_blocks(session, [i.id for i in instances])
    live_backends = await live_backend_types(session)
    counts: dict[str, int] = {}
    for i in instances:
        counts[i.fleet_id] = counts.get(i.fleet_id, 0) + 1
    return PoolRows(
        project_name=project.name if project else "",
        fleets=[(f.id, f.name, fleet_conf(f)) for f in fleets],
        instances=[
            _pool_instance(ctx, i, by_id[i.fleet_id], busy.get(i.id, 0))
            for i in instances
            if i.offer
        ],
        counts=counts,
        live_backends=live_backends,
        project_id=project_id,
    )


async def live_backend_types(session: AsyncSession) -> set[str]:
    """Backends with a live instance (starting or up) anywhere on this server: a
    single-instance backend (the server's own machine) must never get a second."""
    rows = await session.execute(
        select(t.Instance.backend)
        .where(t.Instance.deleted.is_(False), t.Instance.status.in_(LIVE_INSTANCE_STATUSES))
        .distinct()
    )
    return set(rows.scalars())


def offer_requirements(req: Requirements | None) -> OfferRequirements:
    if req is None:
        return OfferRequirements()
    spot = {"spot": True, "on-demand": False}.get(req.spot_policy)
    disk = getattr(getattr(req.resources, "disk", None), "size", None)
    low = getattr(disk, "min", None)
    return OfferRequirements(
        spot=spot,
        regions=req.regions,
        max_price=req.max_price,
        disk_gb=float(low) if low is not None else None,
    )


async def with_capacity(
    ctx: ServerContext, rows: PoolRows, req: Requirements | None = None
) -> Pool:
    """Add what each fleet's backends could still create. Backend calls happen here, outside
    any transaction, through the offer cache."""
    capacity: list[FleetCapacity] = []
    notes: list[str] = []
    for fleet_id, name, conf in rows.fleets:
        if conf.get("ssh_config"):
            continue
        limit = _nodes_max(conf)
        if limit is not None and rows.counts.get(fleet_id, 0) >= limit:
            continue
        cap = await backend_capacity(ctx, rows, req, notes, fleet=(fleet_id, name, conf))
        offers, why = fleet_offers(conf, list(cap.offers), cap.capabilities)
        if why:
            notes.append(f"fleet {name}: {why}")
        capacity.append(replace(cap, offers=tuple(offers)))
    return Pool(rows.instances, capacity, bool(rows.fleets), notes)


async def backend_capacity(
    ctx: ServerContext,
    rows: PoolRows,
    req: Requirements | None,
    notes: list[str],
    fleet: tuple[str, str, dict[str, Any]] | None = None,
) -> FleetCapacity:
    """What the backends could create for one fleet (its `backends` limit applies), or, with
    no fleet, for the project as a whole (`dstack offer` without `--fleet`)."""
    fleet_id, name, conf = fleet or ("", "", {})
    offers: list[InstanceOfferWithAvailability] = []
    caps: dict[str, frozenset[str]] = {}
    no_docker: dict[tuple[str, str], str] = {}
    docker = True
    # Stored before `remote` was read as `ssh`, a fleet's raw configuration may say either.
    allowed = [canonical_backend(b) for b in conf.get("backends") or ()]
    where = f"fleet {name}: " if fleet else ""
    for btype, backend in ctx.backends.for_project(rows.project_id).items():
        if allowed and btype not in allowed:
            continue
        why = unavailable(backend, rows)
        if why:
            # A fleet open to any backend is not told about ones that never create hosts.
            if allowed or backend.capabilities.creates_instances:
                notes.append(f"{where}backend {btype} {why}")
            continue
        try:
            offers.extend(await ctx.offer_cache.get(backend, offer_requirements(req)))
        except BackendError as e:
            # One backend that cannot list offers (no catalog, no network) leaves the others.
            notes.append(f"{where}backend {btype} has no offers: {e}")
            continue
        docker = docker and backend.capabilities.docker
        caps[btype] = backend.capabilities.names()
        for region, why in backend.no_docker_regions().items():
            no_docker[(btype, region)] = why
    return FleetCapacity(fleet_id, name, tuple(offers), docker, caps, no_docker)


def fleet_offers(
    conf: dict[str, Any], offers: list[InstanceOfferWithAvailability], caps: dict[str, Any]
) -> tuple[list[InstanceOfferWithAvailability], str | None]:
    """The offers a fleet's own configuration allows (`resources`, `spot_policy`,
    `max_price`, `regions`, `availability_zones`, `instance_types`, `reservation`), and why
    none is left when none is."""
    freq = fleet_requirements(conf)
    kept, first = [], None
    for o in offers:
        why = offer_rejection(freq, o, caps.get(o.backend))
        if why is None:
            kept.append(o)
        else:
            first = first or f"{o.backend} offer {o.instance.name}: {why}"
    if offers and not kept:
        return kept, f"no offer matches the fleet's configuration ({first})"
    return kept, None


_DEFAULT_RESOURCES = ResourcesSpec().model_dump(mode="json")


def fleet_requirements(conf: dict[str, Any]) -> Requirements:
    """A backend fleet's configuration as requirements its offers must meet. Resources left
    at their defaults are not a filter (an instance of a fleet is what its runs need)."""

    def tup(name: str) -> tuple[str, ...] | None:
        value = conf.get(name)
        return tuple(value) if value else None

    resources = conf.get("resources")
    spot_policy = conf.get("spot_policy") or "on-demand"
    need = set()
    if conf.get("reservation"):
        need.add("reservations")
    if spot_policy == "spot":
        need.add("spot")
    return Requirements(
        resources=ResourcesSpec.model_validate(resources)
        if resources and resources != _DEFAULT_RESOURCES
        else None,
        spot_policy=spot_policy,
        max_price=conf.get("max_price"),
        backends=tup("backends"),
        regions=tup("regions"),
        instance_types=tup("instance_types"),
        availability_zones=tup("availability_zones"),
        needs=frozenset(need),
    )


def unavailable(backend: Compute, rows: PoolRows) -> str | None:
    """Why `backend` cannot create an instance for this project now (None: it can)."""
    caps = backend.capabilities
    if not caps.creates_instances:
        return "only runs on hosts a fleet lists"
    if not backend.serves(rows.project_name):
        owners = ", ".join(sorted(backend.projects or ()))
        return (
            f"serves only project {owners}: it runs jobs on the server's own machine, so it is "
            "never offered to another project"
        )
    if caps.single_instance and backend.type in rows.live_backends:
        return "already has its one instance on this server"
    return None


async def load_pool(
    ctx: ServerContext, session: AsyncSession, project_id: str, req: Requirements | None = None
) -> Pool:
    """Rows and capacity together, for callers with nothing else to write (the plan)."""
    return await with_capacity(ctx, await load_pool_rows(ctx, session, project_id), req)


# Stored offers, parsed: an instance's offer never changes, and every placement pass loads the
# whole pool. Read-only (its resources are shared by the pool instances built from it).
_PARSED_OFFERS: dict[str, InstanceOfferWithAvailability] = {}


def parsed_offer(text: str) -> InstanceOfferWithAvailability:
    offer = _PARSED_OFFERS.get(text)
    if offer is None:
        if len(_PARSED_OFFERS) > 8192:
            _PARSED_OFFERS.clear()
        offer = _PARSED_OFFERS[text] = InstanceOfferWithAvailability.model_validate_json(text)
    return offer


def _pool_instance(ctx: ServerContext, inst: t.Instance, fleet: t.Fleet, busy: int) -> PoolInstance:
    offer = parsed_offer(inst.offer or "{}")
    status = inst.status
    if status == InstanceStatus.IDLE.value and busy > 0:
        status = InstanceStatus.BUSY.value
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
        # Process-runtime jobs side by side on one host (docs/architecture.md).
        shared=capabilities(ctx, inst.backend, inst.project_id).shared_host,
        docker=bool(json.loads(inst.host_info).get("docker")) if inst.host_info else True,
        capabilities=capabilities(ctx, inst.backend, inst.project_id).names(),
        host_key=host_key(inst) if inst.hostname else None,
        availability_zone=instance_zone(inst, offer),
        facts=HostFacts.from_host_info(json.loads(inst.host_info)) if inst.host_info else None,
        hostname=inst.hostname,
        instance_num=inst.instance_num,
    )


def instance_zone(inst: t.Instance, offer: InstanceOfferWithAvailability) -> str | None:
    """The zone the instance is in: its backend's record says so (`availability_zone`), or an
    offer of one zone; None when unknown (no zone filter applies)."""
    zone = json.loads(inst.remote_connection or "{}").get("availability_zone")
    if zone:
        return str(zone)
    zones = offer.availability_zones or []
    return zones[0] if len(zones) == 1 else None


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
        availability_zones=tup("availability_zones"),
        fleets=tup("fleets"),
        creation_policy=getattr(policy, "value", policy) or "reuse-or-create",
        multinode=bool(job_requirements.get("multinode")),
        # Without an image the job runs as processes on the host: it need not own a block.
        exclusive=bool(container_image(conf)) or bool(job_requirements.get("multinode")),
        docker=bool(container_image(conf)),
        runtime=runtime_needs(conf),
        needs=needs(conf, job_requirements),
        instances=_pins(conf),
    )


def _pins(conf: Any) -> tuple[InstancePin, ...] | None:
    selectors = getattr(conf, "instances", None)
    return tuple(InstancePin.from_selector(s) for s in selectors) if selectors else None


def needs(conf: Any, job_requirements: dict[str, Any]) -> frozenset[str]:
    """Backend capabilities the configuration asks for: a backend without one is refused in
    the plan, naming the field, instead of the field being ignored. `volumes` is not one: a
    network volume's own backend, region and zone restrict where the job goes (and only a
    backend with volumes has any); directory and instance volumes need nothing of it."""
    out = set()
    if job_requirements.get("reservation"):
        out.add("reservations")
    if job_requirements.get("spot") == "spot":
        out.add("spot")
    if job_requirements.get("multinode"):
        out.add("multinode")
    return frozenset(out)
