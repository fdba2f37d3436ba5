"""Placement as a pure function: (job requirements, pool instances, backend offers) -> choice.

Filter (can this host or offer take the job?), score (reuse idle instances first, then the
cheapest price, then the least waste), select. The plan `dstack apply` shows and the real
placement both come from `rank()`, so the plan never lies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from dstack.models.instances import InstanceStatus, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.server.scheduler.matching import mismatch
from dstack.server.scheduler.pins import InstancePin
from dstack.server.scheduler.runtime_fit import HostFacts, RuntimeNeeds, no_docker_reason

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
    # What the job's runtime fields (`user`, `python`, `privileged`, ...) ask of the host.
    runtime: RuntimeNeeds | None = None
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
    # Who its agent runs as, its Pythons, ... (None: not reported yet).
    facts: HostFacts | None = None

    @cached_property
    def shape(self) -> tuple[Any, ...]:
        """What placement reads of the instance except who it is (id, name, machine, zone)
        and how many blocks are taken: hosts with equal shapes fit a job alike, so the fit is
        checked once per shape (scheduler/shapes.py). Idle and busy are one status class."""
        status = "up" if self.status in _UP else self.status
        return (
            self.fleet_id,
            self.fleet_name,
            self.backend,
            self.region,
            self.instance_type,
            self.price,
            status,
            self.total_blocks,
            self.unreachable,
            self.shared,
            self.docker,
            self.capabilities,
            self.facts,
            self.resources.model_dump_json(),
        )


@dataclass(frozen=True)
class FleetCapacity:
    """A fleet that may still create instances, with the offers its backend makes."""

    fleet_id: str
    fleet_name: str
    offers: tuple[InstanceOfferWithAvailability, ...]
    docker: bool = True  # instances of these offers can run images
    # Capabilities of each backend whose offers these are (a backend missing here: unknown).
    capabilities: dict[str, frozenset[str]] = field(default_factory=dict)
    # (backend, region) whose hosts cannot run images, with the backend's words for why.
    no_docker: dict[tuple[str, str], str] = field(default_factory=dict)


def _waste(res: Resources) -> float:
    return res.cpus + res.memory_mib / 1024 + 10 * len(res.gpus)


class Candidate:
    """A place for the job. Its pydantic `offer` is built when first read: a ranking over a
    large pool holds many candidates, and only the chosen one (or the plan's shown ones) is
    ever read. Scoring reads only the plain fields (`available`, `price`, `waste`)."""

    __slots__ = (
        "_offer", "_make", "fleet_id", "fleet_name", "instance_id", "blocks", "volumes",
        "waiting", "available", "price", "waste", "total_blocks",
    )  # fmt: skip

    def __init__(
        self,
        offer: InstanceOfferWithAvailability | None,
        fleet_id: str,
        fleet_name: str,
        instance_id: str | None,  # None = a new instance from the backend
        blocks: int,
        volumes: tuple[str, ...] = (),  # the volume chosen for each mount, by id
        waiting: str | None = None,  # why it is busy when a volume keeps it so
        *,
        make: Callable[[], InstanceOfferWithAvailability] | None = None,
        plain: tuple[bool, float, float, int | None] | None = None,
    ) -> None:
        """`offer`, or `make` (builds it) with `plain` = (available, price, waste,
        total_blocks)."""
        self._offer, self._make = offer, make
        self.fleet_id, self.fleet_name = fleet_id, fleet_name
        self.instance_id, self.blocks = instance_id, blocks
        self.volumes, self.waiting = volumes, waiting
        if plain is None:
            assert offer is not None
            res = offer.instance.resources
            plain = (offer.availability.is_available(), offer.price, _waste(res),
                     offer.total_blocks)  # fmt: skip
        self.available, self.price, self.waste, self.total_blocks = plain

    @property
    def offer(self) -> InstanceOfferWithAvailability:
        if self._offer is None:
            assert self._make is not None
            self._offer = self._make()
        return self._offer

    def with_volumes(self, volumes: tuple[str, ...], waiting: str | None) -> Candidate:
        """The same place with the volumes chosen there; busy while a volume keeps it so."""
        where = (self.fleet_id, self.fleet_name, self.instance_id, self.blocks, volumes)
        if not waiting:
            return Candidate(self._offer, *where, make=self._make, plain=self._plain())
        offer = self.offer.model_copy(update={"availability": InstanceAvailability.BUSY})
        return Candidate(offer, *where, waiting)

    def _plain(self) -> tuple[bool, float, float, int | None]:
        return (self.available, self.price, self.waste, self.total_blocks)

    def _key(self) -> tuple[Any, ...]:
        return (self.offer, self.fleet_id, self.fleet_name, self.instance_id, self.blocks,
                self.volumes, self.waiting)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Candidate) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Candidate(fleet={self.fleet_name!r}, instance_id={self.instance_id!r}, "
            f"blocks={self.blocks}, available={self.available}, price={self.price})"
        )


# A rejection not formatted yet: the place's name and its reason (or a function giving it).
Deferred = tuple[str, "str | Callable[[], str]"]


def _formatted(r: str | Deferred) -> str:
    if isinstance(r, str):
        return r
    name, why = r
    return f"{name}: {why if isinstance(why, str) else why()}"


class Ranking:
    """Candidates best first, and why each other place was refused. Rejections of pool
    instances are formatted only when read: a job that fits never pays for them."""

    def __init__(
        self, candidates: list[Candidate] | None = None, rejections: list[str] | None = None
    ) -> None:
        self.candidates: list[Candidate] = candidates if candidates is not None else []
        self._rejections: list[str | Deferred] = list(rejections or [])
        self._formatted: list[str] | None = None
        # Rejections for a field of the configuration the place cannot honour (the plan names
        # them when nothing else is left).
        self.field_refusals: list[str] = []

    def reject(self, why: str | Deferred) -> None:
        self._rejections.append(why)
        self._formatted = None

    @property
    def rejections(self) -> list[str]:
        if self._formatted is None:
            out = [_formatted(r) for r in self._rejections]
            # One list: what a caller appends to it (notes) stays in it.
            self._rejections = out  # type: ignore[assignment]
            self._formatted = out
        return self._formatted

    @property
    def best(self) -> Candidate | None:
        for c in self.candidates:
            if c.available:
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


def profile_reason(
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


NO_DOCKER = no_docker_reason(None)
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
        or profile_reason(
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


def no_capacity_message(ranking: Ranking, has_fleets: bool) -> str:
    if not has_fleets:
        return "No matching fleet found: the project has no fleets. Create one with `dstack apply`."
    if not ranking.rejections:
        return "No matching instance: every fleet is at its maximum size and fully busy."
    shown = "; ".join(ranking.rejections[:5])
    return f"No instance or offer meets the requirements: {shown}"
