"""Placement as a pure function: (job requirements, pool instances, backend offers) -> choice.

Filter (can this host or offer take the job?), score (reuse idle instances first, then the
cheapest price, then the least waste), select. The plan `dstack apply` shows and the real
placement both come from `rank()`, so the plan never lies.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from dstack.models.instances import InstanceStatus, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.server.scheduler.matching import mismatch, share
from dstack.server.scheduler.pins import InstancePin, pinned_out

# An instance still starting, and one up (taking jobs).
_STARTING = (InstanceStatus.PENDING.value, InstanceStatus.PROVISIONING.value)
_UP = (InstanceStatus.IDLE.value, InstanceStatus.BUSY.value)


@dataclass(frozen=True)
class VolumeLocation:
    """Where a volume a job mounts lives, as placement needs it. A network volume has a
    `backend` (and region, zone); a directory volume has a `fleet_name` and, once a job used
    it, the `host_key` of its machine."""

    volume_id: str
    name: str
    backend: str | None = None
    region: str | None = None
    availability_zone: str | None = None
    fleet_name: str | None = None
    host_key: str | None = None
    # A new instance of this backend is the same machine again (the server's own machine):
    # a bound directory volume may still be placed on one of its offers.
    host_backend: str | None = None
    # The instance another job's live attachment (or placement) holds it on: elsewhere the
    # job waits for it.
    in_use_on: str | None = None
    in_use_by: str | None = None
    # Not `active` yet (a network volume being created): the job waits.
    pending: bool = False

    def where(self) -> str:
        if self.backend is not None:
            return f"{self.backend} {self.availability_zone or self.region}"
        return self.host_key or f"fleet {self.fleet_name}"


@dataclass(frozen=True)
class Place:
    """A pool instance or an offer, as a volume's location filter sees it (`instance_id` and
    `host_key` None: a new instance of an offer)."""

    backend: str
    region: str
    zones: tuple[str, ...] | None
    fleet_name: str
    instance_id: str | None = None
    host_key: str | None = None


def volume_misplaced(loc: VolumeLocation, place: Place) -> str | None:
    """Why the volume cannot be mounted at `place` (None: it can)."""
    if loc.backend is not None:
        zone_ok = (
            not loc.availability_zone or place.zones is None or loc.availability_zone in place.zones
        )
        if loc.backend != place.backend or loc.region != place.region or not zone_ok:
            return f"volume {loc.name} is in {loc.where()}"
        return None
    if loc.fleet_name != place.fleet_name:
        return f"volume {loc.name} belongs to fleet {loc.fleet_name}"
    if loc.host_key is None:
        return None
    if place.host_key is not None:
        return None if place.host_key == loc.host_key else f"volume {loc.name} is on {loc.where()}"
    # An offer: only a backend whose new instance is that same machine again.
    if loc.host_backend == place.backend:
        return None
    return f"volume {loc.name} is on {loc.where()}"


def choose_volumes(
    mounts: tuple[tuple[VolumeLocation, ...], ...], place: Place
) -> tuple[tuple[str, ...], str | None, str | None]:
    """Per mount, the first alternative usable at `place`: (chosen volume ids, why the place
    cannot take the job, why the job must wait there: a volume in use elsewhere or not
    created yet)."""
    chosen: list[str] = []
    waiting = None
    for alternatives in mounts:
        fitting = [v for v in alternatives if volume_misplaced(v, place) is None]
        if not fitting:
            return (), volume_misplaced(alternatives[0], place), None
        free = [v for v in fitting if not v.pending and v.in_use_on in (None, place.instance_id)]
        if free:
            chosen.append(free[0].volume_id)
            continue
        v = fitting[0]
        chosen.append(v.volume_id)
        if v.pending:
            waiting = waiting or f"volume {v.name} is not created yet; the job waits for it"
        else:
            who = f" by {v.in_use_by}" if v.in_use_by else ""
            waiting = waiting or f"volume {v.name} is in use{who}; the job waits for it"
    return tuple(chosen), None, waiting


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
    # The job's named volumes: per mount, its alternatives (any one, the first usable).
    volumes: tuple[tuple[VolumeLocation, ...], ...] = ()
    # `instances`: only these existing instances, never a new one (None: not pinned).
    instances: tuple[InstancePin, ...] | None = None


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
    # The machine it stands for (services/hosts.host_key) and its zone, when known.
    host_key: str | None = None
    availability_zone: str | None = None
    # What `instances` selectors match besides the name.
    hostname: str | None = None
    instance_num: int = 0


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
    volumes: tuple[str, ...] = ()  # the volume chosen for each mount, by id
    waiting: str | None = None  # why it is busy when a volume keeps it so


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

    @property
    def waiting(self) -> str | None:
        """Why a queued job waits, when a volume is the reason (shown to the user)."""
        return next((c.waiting for c in self.candidates if c.waiting), None)


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
    "multinode": "cannot run a multi-node task (`nodes` > 1)",
}


def lacking(req: Requirements, backend: str, caps: frozenset[str] | None) -> str | None:
    """Why a backend cannot take the job for want of a capability (None: it can)."""
    if caps is None:
        return None
    missing = sorted(req.needs - caps)
    if not missing:
        return None
    return f"backend {backend} " + "; ".join(NEEDS.get(m, f"lacks {m}") for m in missing)


def _with_volumes(cand: Candidate | str, volumes: tuple[str, ...], waiting: str | None) -> Any:
    if isinstance(cand, str) or not volumes:
        return cand
    if waiting:
        offer = cand.offer.model_copy(update={"availability": InstanceAvailability.BUSY})
        return replace(cand, offer=offer, volumes=volumes, waiting=waiting)
    return replace(cand, volumes=volumes)


def _pool_candidate(req: Requirements, inst: PoolInstance) -> Candidate | str:
    if inst.unreachable:
        return f"{inst.name}: unreachable"
    if req.docker and not inst.docker:
        return f"{inst.name}: {NO_DOCKER}"
    why = lacking(req, inst.backend, inst.capabilities)
    if why:
        return f"{inst.name}: {why}"
    zones = (inst.availability_zone,) if inst.availability_zone else None
    place = Place(inst.backend, inst.region, zones, inst.fleet_name, inst.id, inst.host_key)
    volumes, misplaced, waiting = choose_volumes(req.volumes, place)
    if misplaced:
        return f"{inst.name}: {misplaced}"
    return _with_volumes(_pool_fit(req, inst), volumes, waiting)


def _pool_fit(req: Requirements, inst: PoolInstance) -> Candidate | str:
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
        volumes, waiting = (), None
        if reason is None and req.volumes:
            zones = tuple(offer.availability_zones) if offer.availability_zones else None
            place = Place(backend, offer.region, zones, cap.fleet_name)
            volumes, reason, waiting = choose_volumes(req.volumes, place)
        if reason:
            out.rejections.append(f"{backend} offer {offer.instance.name}: {reason}")
            continue
        cand = Candidate(offer, cap.fleet_id, cap.fleet_name, None, 1)
        out.candidates.append(_with_volumes(cand, volumes, waiting))


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
        pinned = pinned_out(req.instances, inst)
        if pinned:
            out.rejections.append(pinned)
            continue
        cand = _pool_candidate(req, inst)
        if isinstance(cand, str):
            out.rejections.append(cand)
        else:
            out.candidates.append(cand)
    if req.creation_policy != "reuse" and req.instances is None:
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
