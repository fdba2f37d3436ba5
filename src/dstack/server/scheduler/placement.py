"""Placement as a pure function: (job requirements, pool instances, backend offers) -> choice.

Filter (can this host or offer take the job?), score (reuse idle instances first, then the
cheapest price, then the least waste), select. The plan `dstack apply` shows and the real
placement both come from `rank()`, so the plan never lies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dstack.models.instances import InstanceStatus, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.server.scheduler.matching import mismatch, share

# An instance still starting, and one up (taking jobs).
_STARTING = (InstanceStatus.PENDING.value, InstanceStatus.PROVISIONING.value)
_UP = (InstanceStatus.IDLE.value, InstanceStatus.BUSY.value)


@dataclass(frozen=True)
class Requirements:
    resources: Any  # configurations.ResourcesSpec (duck-typed: cpu, memory, disk, gpu)
    spot_policy: str = "on-demand"
    max_price: float | None = None
    backends: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None
    instance_types: tuple[str, ...] | None = None
    availability_zones: tuple[str, ...] | None = None
    fleets: tuple[str, ...] | None = None
    creation_policy: str = "reuse-or-create"
    multinode: bool = False
    # False for a job that may share a `shared` instance with others without taking blocks
    # (a process-runtime job on the local backend: processes on one host are not isolated).
    exclusive: bool = True
    # The job runs an image: only a host with a Docker engine can take it.
    docker: bool = False
    # Backend capabilities the job's configuration needs (e.g. "volumes", "reservations").
    needs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PoolInstance:
    """An existing instance of a fleet, as the scheduler sees it."""

    id: str
    name: str
    fleet_id: str
    fleet_name: str
    backend: str
    region: str
    resources: Resources
    instance_type: str
    price: float
    status: str  # idle | busy | pending | provisioning ...
    total_blocks: int
    busy_blocks: int
    unreachable: bool = False
    # Takes non-exclusive jobs alongside anything else, with no blocks (the local backend).
    shared: bool = False
    # Runs images (a Docker engine answered); True while not yet known (still starting).
    docker: bool = True
    # Its backend's capabilities (None: not known, nothing is refused for it).
    capabilities: frozenset[str] | None = None


@dataclass(frozen=True)
class FleetCapacity:
    """A fleet that may still create instances, with the offers its backend makes."""

    fleet_id: str
    fleet_name: str
    offers: tuple[InstanceOfferWithAvailability, ...]
    docker: bool = True  # instances of these offers can run images
    # Capabilities of each backend whose offers these are (a backend missing here: unknown).
    capabilities: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    offer: InstanceOfferWithAvailability
    fleet_id: str
    fleet_name: str
    instance_id: str | None  # None = a new instance from the backend
    blocks: int


@dataclass
class Ranking:
    candidates: list[Candidate] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        for c in self.candidates:
            if c.offer.availability.is_available():
                return c
        return None

    @property
    def only_busy(self) -> bool:
        """Something fits but is taken now: the job queues instead of failing."""
        return bool(self.candidates) and self.best is None


def _profile_reason(
    req: Requirements, backend: str, region: str, itype: str, price: float, spot: bool
) -> str | None:
    if req.backends and backend not in req.backends:
        return f"backend {backend} not in {list(req.backends)}"
    if req.regions and region not in req.regions:
        return f"region {region} not in {list(req.regions)}"
    if req.instance_types and itype not in req.instance_types:
        return f"instance type {itype} not in {list(req.instance_types)}"
    if req.max_price is not None and price > req.max_price:
        return f"price ${price:g} > max_price ${req.max_price:g}"
    if req.spot_policy == "spot" and not spot:
        return "spot_policy spot (instance is on-demand)"
    if req.spot_policy == "on-demand" and spot:
        return "spot_policy on-demand (instance is spot)"
    return None


def _shared_candidate(req: Requirements, inst: PoolInstance) -> Candidate | str:
    """A non-exclusive job on a shared instance: the whole host, no blocks, never busy; an
    instance still starting is waited for (the job queues) rather than refused."""
    reason = _profile_reason(
        req, inst.backend, inst.region, inst.instance_type, inst.price, inst.resources.spot
    ) or mismatch(req.resources, inst.resources)
    if reason:
        return f"{inst.name}: {reason}"
    starting = inst.status in _STARTING
    offer = InstanceOfferWithAvailability(
        backend=inst.backend,
        instance={"name": inst.instance_type, "resources": inst.resources},
        region=inst.region,
        price=inst.price,
        availability=InstanceAvailability.BUSY if starting else InstanceAvailability.IDLE,
        blocks=0,
        total_blocks=inst.total_blocks,
        instance_id=inst.id,
        fleet_name=inst.fleet_name,
    )
    return Candidate(offer, inst.fleet_id, inst.fleet_name, inst.id, 0)


NO_DOCKER = "no Docker engine (the configuration sets `image`)"
# What a job asks for that needs a backend capability, in the user's words.
NEEDS = {
    "volumes": "cannot mount `volumes`",
    "reservations": "cannot use a `reservation`",
    "spot": "has no spot instances (`spot_policy: spot`)",
}


def lacking(req: Requirements, backend: str, caps: frozenset[str] | None) -> str | None:
    """Why a backend cannot take the job for want of a capability (None: it can)."""
    if caps is None:
        return None
    missing = sorted(req.needs - caps)
    if not missing:
        return None
    return f"backend {backend} " + "; ".join(NEEDS.get(m, f"lacks {m}") for m in missing)


def _pool_candidate(req: Requirements, inst: PoolInstance) -> Candidate | str:
    if inst.unreachable:
        return f"{inst.name}: unreachable"
    if req.docker and not inst.docker:
        return f"{inst.name}: {NO_DOCKER}"
    why = lacking(req, inst.backend, inst.capabilities)
    if why:
        return f"{inst.name}: {why}"
    if inst.shared and not req.exclusive and inst.status in (*_STARTING, *_UP):
        return _shared_candidate(req, inst)
    if inst.status not in _UP:
        return f"{inst.name}: {inst.status}"
    reason = _profile_reason(
        req, inst.backend, inst.region, inst.instance_type, inst.price, inst.resources.spot
    )
    if reason:
        return f"{inst.name}: {reason}"
    free = inst.total_blocks - inst.busy_blocks
    first_reason = None
    need_all = req.multinode
    for k in range(inst.total_blocks if need_all else 1, inst.total_blocks + 1):
        res = share(inst.resources, k, inst.total_blocks)
        why = mismatch(req.resources, res)
        if why is None:
            available = k <= free
            availability = InstanceAvailability.IDLE if available else InstanceAvailability.BUSY
            offer = InstanceOfferWithAvailability(
                backend=inst.backend,
                instance={"name": inst.instance_type, "resources": res},
                region=inst.region,
                price=inst.price,  # a share costs what the instance costs (server.md §4.4)
                availability=availability,
                blocks=k,
                total_blocks=inst.total_blocks,
                instance_id=inst.id,
                fleet_name=inst.fleet_name,
            )
            return Candidate(offer, inst.fleet_id, inst.fleet_name, inst.id, k)
        first_reason = first_reason or why
    return f"{inst.name}: {first_reason}"


# An offer as tried offers name it: (backend, region, instance type, spot).
OfferKey = tuple[str, str, str, bool]


def offer_key(offer: InstanceOfferWithAvailability) -> OfferKey:
    return (offer.backend, offer.region, offer.instance.name, offer.instance.resources.spot)


def offer_rejection(
    req: Requirements, offer: InstanceOfferWithAvailability, caps: frozenset[str] | None
) -> str | None:
    """Why a backend offer cannot take what `req` asks for (None: it can). Also used for a
    fleet's own fields: a fleet's instances come only from offers its configuration allows."""
    res = offer.instance.resources
    return (
        lacking(req, offer.backend, caps)
        or _profile_reason(
            req, offer.backend, offer.region, offer.instance.name, offer.price, res.spot
        )
        or _zone_reason(req, offer)
        or mismatch(req.resources, res)
    )


def _zone_reason(req: Requirements, offer: InstanceOfferWithAvailability) -> str | None:
    """An offer that names no zones can be had in any zone of its region: the backend places
    the instance in one the job asked for."""
    if not req.availability_zones or offer.availability_zones is None:
        return None
    zones = set(offer.availability_zones)
    if not zones & set(req.availability_zones):
        return f"availability_zones {list(req.availability_zones)} (has {sorted(zones) or 'none'})"
    return None


def _backend_candidates(
    req: Requirements, cap: FleetCapacity, out: Ranking, tried: frozenset[OfferKey]
) -> None:
    """A catalog holds thousands of offers but few distinct machines: the resource check runs
    once per `Resources` object (the catalog shares one between offers of the same shape), and
    what depends only on the backend once per backend."""
    if req.docker and not cap.docker and cap.offers:
        backends = sorted({o.backend for o in cap.offers})
        out.rejections.append(f"fleet {cap.fleet_name} ({', '.join(backends)}): {NO_DOCKER}")
        return
    lacks: dict[str, str | None] = {}
    fits: dict[int, str | None] = {}
    for offer in cap.offers:
        backend, res = offer.backend, offer.instance.resources
        if backend not in lacks:
            lacks[backend] = lacking(req, backend, cap.capabilities.get(backend))
        reason = lacks[backend] or _profile_reason(
            req, backend, offer.region, offer.instance.name, offer.price, res.spot
        )
        if reason is None:
            key = id(res)
            if key not in fits:
                fits[key] = mismatch(req.resources, res)
            reason = fits[key]
        if reason is None:
            reason = _zone_reason(req, offer)
        if reason is None and offer_key(offer) in tried:
            reason = f"in {offer.region}: tried already, it failed"
        if reason:
            out.rejections.append(f"{backend} offer {offer.instance.name}: {reason}")
            continue
        out.candidates.append(Candidate(offer, cap.fleet_id, cap.fleet_name, None, 1))


def _score(c: Candidate) -> tuple:
    reused = c.instance_id is not None
    available = c.offer.availability.is_available()
    res = c.offer.instance.resources
    waste = res.cpus + res.memory_mib / 1024 + 10 * len(res.gpus)
    return (not available, not reused, c.offer.price, waste)


def rank(
    req: Requirements,
    pool: list[PoolInstance],
    capacity: list[FleetCapacity],
    tried: frozenset[OfferKey] = frozenset(),
) -> Ranking:
    """Every place the job could go, best first, plus why each other place was refused.
    `tried`: offers this job's earlier instances failed on, never chosen again."""
    out = Ranking()
    wanted = set(req.fleets) if req.fleets else None
    for inst in pool:
        if wanted is not None and inst.fleet_name not in wanted:
            out.rejections.append(f"{inst.name}: fleet {inst.fleet_name} not in {sorted(wanted)}")
            continue
        cand = _pool_candidate(req, inst)
        if isinstance(cand, str):
            out.rejections.append(cand)
        else:
            out.candidates.append(cand)
    if req.creation_policy != "reuse":
        for cap in capacity:
            if wanted is None or cap.fleet_name in wanted:
                _backend_candidates(req, cap, out, tried)
    out.candidates.sort(key=_score)
    return out


def no_capacity_message(ranking: Ranking, has_fleets: bool) -> str:
    if not has_fleets:
        return "No matching fleet found: the project has no fleets. Create one with `dstack apply`."
    if not ranking.rejections:
        return "No matching instance: every fleet is at its maximum size and fully busy."
    shown = "; ".join(ranking.rejections[:5])
    return f"No instance or offer meets the requirements: {shown}"
