"""The compute interface every backend implements, and nothing outside `server/backends/`
looks behind (tests/test_layering.py enforces that no backend is named elsewhere).

The server drives an instance through the same steps whatever the backend:

1. `offers(requirements)`: capacity the backend could hand out now, priced, with availability.
   Called outside any database transaction; `OfferCache` keeps answers for `offers_ttl`.
2. `create_instance(host, offer)`: returns quickly with `Provisioning` data (where the agent
   will answer). Keyed by the instance id the server already wrote, so a repeat after a crash
   finds the first result instead of creating a second host.
3. Provisioning: the server polls the host's agent (through `agent_transport`) until it answers,
   then asks `ready(host, info)` what the host really is; past `provisioning_timeout` the
   instance ends with `provisioning_timeout`.
4. `terminate(host)`: idempotent, keyed by the instance id; succeeds if it is already gone.
5. `inventory()`: what the backend holds for this server, each item tagged with the instance id
   it was created for; a sweeper terminates what no live instance row owns.

A backend sees an instance as a `Host`, a plain record, never a database row: backends import
only `models` (DESIGN.md's layering table).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from dstack.models.offers import InstanceOfferWithAvailability


class BackendError(Exception):
    """A backend call failed; the message is shown to the user as the instance's reason."""


class HostGone(BackendError):
    """The backend lost the host for good (a reclaimed spot instance, a machine terminated
    outside the server): its jobs end now, and the instance is let go. `job_reason` (a
    `JobTerminationReason` value) says how its jobs end when that is not an interruption (a
    Slurm job that hit its time limit ends `max_duration_exceeded`)."""

    def __init__(self, message: str, job_reason: str | None = None) -> None:
        super().__init__(message)
        self.job_reason = job_reason


class NoCapacityError(BackendError):
    """The offer cannot be had now (no capacity, quota, price above the limit): the job may
    try its next offer, and remembers this one as tried."""


class PermanentError(BackendError):
    """Retrying cannot help (a volume id that does not exist, a size the cloud refuses): the
    resource fails at once instead of being retried with a backoff."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, read by the scheduler, the plan and the reconcilers instead of
    its name. A field the user sets that needs a capability the chosen backend lacks is refused
    in the plan."""

    # Creates instances for jobs. False: hosts come only from a fleet's configuration
    # (`ssh_config`), are bootstrapped on create and cleaned up (not destroyed) on terminate.
    creates_instances: bool = True
    # Hosts are listed by the user in a fleet configuration (`ssh_config.hosts`).
    hosts_from_config: bool = False
    # Jobs without an image run side by side as processes on one host (blocks not owned).
    shared_host: bool = False
    # At most one live instance per server (the server's own machine has one agent).
    single_instance: bool = False
    # The user's `ssh <run>` reaches the job through the host (a ProxyJump with the user's key);
    # False: the job's SSH server is on the machine the server runs on.
    remote_hosts: bool = True
    docker: bool = True
    volumes: bool = False
    gateways: bool = False
    spot: bool = False
    cluster_placement: bool = False
    reservations: bool = False
    multinode: bool = True

    def names(self) -> frozenset[str]:
        """The capabilities this backend has, by field name (what the scheduler matches a
        job's needs against)."""
        return frozenset(k for k, v in vars(self).items() if v is True)


@dataclass
class Host:
    """An instance as a backend sees it. `remote` is the backend's own record of how to reach
    the host (it writes it in `Provisioning.remote`; secrets in it stay encrypted)."""

    instance_id: str
    project_id: str
    name: str
    hostname: str | None = None
    agent_url: str | None = None
    agent_token: str | None = None
    agent_pid: int | None = None
    remote: dict[str, Any] = field(default_factory=dict)
    host_info: dict[str, Any] = field(default_factory=dict)
    # A host key this server recorded earlier for the same address (trust on first use).
    known_host_key: str | None = None
    # The project's SSH key (private part encrypted with the server's key), for backends that
    # create hosts and must reach them; given on create only.
    project_key_enc: str | None = None
    project_public_key: str | None = None
    # What the fleet and the job that asked for the host want of it beyond the offer
    # (`disk_gb`, `max_price`, `reservation`, `placement`, `tags`); given on create only.
    request: dict[str, Any] = field(default_factory=dict)


@dataclass
class Provisioning:
    """What `create_instance` returns: where the new host's agent will answer."""

    agent_url: str
    hostname: str
    agent_pid: int | None = None
    remote: dict[str, Any] | None = None  # replaces Host.remote when set
    # The agent token, when the backend chose it (else the one the server wrote is kept).
    agent_token: str | None = None
    # Why the host is not up yet, for the user (a Slurm job's pending reason); None: nothing.
    note: str | None = None


@dataclass
class Ready:
    """What a provisioned host turned out to be, once its agent answered."""

    host_info: dict[str, Any]
    offer: InstanceOfferWithAvailability | None = None  # replaces the instance's offer when set
    total_blocks: int | None = None  # replaces the instance's blocks when set


@dataclass(frozen=True)
class InventoryItem:
    """Something the backend holds for this server. `instance_id` is the tag it was created
    with (None: untagged, never swept)."""

    instance_id: str | None
    description: str
    handle: dict[str, Any] = field(default_factory=dict)  # what terminate_orphan needs


@dataclass(frozen=True)
class OfferRequirements:
    """What the offers must at least satisfy; a backend may ignore it and return everything
    (the scheduler filters anyway), but a cloud uses it to avoid listing its whole catalog."""

    spot: bool | None = None
    regions: tuple[str, ...] | None = None
    max_price: float | None = None
    # The smallest disk the job accepts, GB: a cloud sizes the instance's disk to it.
    disk_gb: float | None = None


@dataclass
class VolumeSpec:
    """A network volume as a backend sees it. `data` is the backend's own record (it returns
    it in `VolumeProvisioning.data`; the server stores it and gives it back)."""

    volume_id: str  # the server's id: the tag every cloud resource of it carries
    project_id: str
    name: str
    region: str | None = None
    availability_zone: str | None = None
    size_gb: int | None = None
    external_id: str | None = None  # the cloud's id (given by the user to register one)
    tags: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class VolumeProvisioning:
    external_id: str  # e.g. vol-0123...
    region: str
    availability_zone: str | None
    size_gb: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class VolumeAttachment:
    """Where the attached volume shows up on the host (a block device path), for the agent."""

    device: str
    data: dict[str, Any] = field(default_factory=dict)


Stream = tuple[Any, Any]  # (reader, writer) of a byte stream


class Compute(ABC):
    type: str
    capabilities: Capabilities = Capabilities()
    provisioning_timeout: float = 600.0
    # How often a provisioning host is looked at (agent poll and `advance`) while it is silent.
    provisioning_poll: float = 0.5
    offers_ttl: float = 60.0
    # Project names this backend serves; None: every project. The server's own machine
    # belongs to one project and is never offered to another.
    projects: frozenset[str] | None = None

    def serves(self, project_name: str) -> bool:
        return self.projects is None or project_name in self.projects

    async def check(self) -> None:
        """Raise `BackendError` when the backend cannot work (bad credentials, no network):
        the server prints the reason at start and leaves the backend out."""
        return None

    # -- capacity -------------------------------------------------------------------------

    @abstractmethod
    async def offers(self, requirements: OfferRequirements) -> list[InstanceOfferWithAvailability]:
        """Capacity this backend could create now, cheapest first."""

    @abstractmethod
    async def create_instance(
        self, host: Host, offer: InstanceOfferWithAvailability | None
    ) -> Provisioning:
        """Create (or find, if it already exists) the instance for `host.instance_id`."""

    async def advance(self, host: Host) -> Provisioning | None:
        """Called while a provisioning host's agent is silent: a backend whose hosts boot
        before the agent can be installed does the next step here (None: nothing to do yet).
        Raises `HostGone` when the host died while booting."""
        return None

    async def ready(self, host: Host, info: dict[str, Any]) -> Ready:
        """The host's agent answered with `info`: what the instance really is."""
        return Ready(host_info=info)

    @abstractmethod
    async def terminate(self, host: Host) -> str | None:
        """Destroy (or clean up) the instance; succeeds if it is already gone. Returns a note
        for the user when something could not be cleaned up."""

    async def revive(self, host: Host) -> Provisioning | None:
        """Bring back an agent that stopped answering, if this backend can (None: it cannot;
        the instance stays unreachable until the agent answers again)."""
        return None

    async def inventory(self) -> list[InventoryItem]:
        """What this backend holds for this server."""
        return []

    async def diagnose(self, host: Host) -> str:
        """Whatever helps the user see why a host's agent never answered (a log tail)."""
        return ""

    async def terminate_orphan(self, item: InventoryItem) -> None:
        """Destroy an inventory item no instance row owns."""
        return None

    # -- network volumes (capabilities.volumes) ---------------------------------------------

    async def create_volume(self, volume: VolumeSpec) -> VolumeProvisioning:
        """Create the volume (or find the one created for `volume.volume_id` before a crash)."""
        raise BackendError(f"backend {self.type} has no network volumes")

    async def register_volume(self, volume: VolumeSpec) -> VolumeProvisioning:
        """Adopt an existing cloud volume (`volume.external_id`): check it exists, say where."""
        raise BackendError(f"backend {self.type} has no network volumes")

    async def delete_volume(self, volume: VolumeSpec) -> None:
        """Delete it; succeeds if it is already gone. Never called for a registered volume."""
        raise BackendError(f"backend {self.type} has no network volumes")

    async def attach_volume(self, volume: VolumeSpec, host: Host) -> VolumeAttachment:
        """Attach it to the host (idempotent: attached already to this host is success)."""
        raise BackendError(f"backend {self.type} has no network volumes")

    async def detach_volume(self, volume: VolumeSpec, host: Host, force: bool = False) -> None:
        """Ask for the detach (idempotent); `is_volume_detached` tells when it is done."""
        raise BackendError(f"backend {self.type} has no network volumes")

    async def is_volume_detached(self, volume: VolumeSpec, host: Host) -> bool:
        raise BackendError(f"backend {self.type} has no network volumes")

    # -- transport ------------------------------------------------------------------------

    def agent_transport(self, host: Host) -> httpx.AsyncBaseTransport | None:
        """How requests to the host's agent travel (None: straight to `agent_url`)."""
        return None

    @abstractmethod
    async def open_stream(self, host: Host, port: int) -> Stream:
        """A byte stream to `port` on the host's loopback (the SSH relay to a job's sshd)."""

    @abstractmethod
    async def upstream(self, host: Host, port: int) -> tuple[str, int] | None:
        """(address, port) the server connects to for `port` on the host (service replicas);
        None while the host cannot be reached."""

    def host_access(self, host: Host) -> dict[str, Any]:
        """How the user's `ssh <run>` reaches the job's host, in JobProvisioningData's shape."""
        return {"hostname": host.hostname or "", "username": "root", "ssh_port": 22}

    def host_label(self, host: Host) -> str:
        """The host as the user knows it, for messages."""
        return host.hostname or host.name

    def no_docker_regions(self) -> dict[str, str]:
        """Regions whose hosts cannot run images although `capabilities.docker` holds for the
        backend as a whole, each with why and what to do (a Slurm cluster not configured
        `docker: true`): the plan refuses their offers to a job with `image` in these words."""
        return {}

    async def close(self) -> None:
        """Release connections held for the server's lifetime."""
        return None


class OfferCache:
    """Offers per (backend, requirements), kept for the backend's `offers_ttl`, with one call in
    flight per key: a burst of placements costs one catalog or API call, not one each. Keyed by
    the backend object, not its type: two projects' backends of one type have different
    credentials and regions."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[tuple[int, OfferRequirements], tuple[float, list[Any]]] = {}
        self._inflight: dict[tuple[int, OfferRequirements], asyncio.Future[list[Any]]] = {}

    async def get(
        self, backend: Compute, req: OfferRequirements
    ) -> list[InstanceOfferWithAvailability]:
        key = (id(backend), req)
        hit = self._values.get(key)
        if hit is not None and self._clock() - hit[0] < backend.offers_ttl:
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            offers = await backend.offers(req)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        self._values[key] = (self._clock(), offers)
        fut.set_result(offers)
        return offers

    def forget(self, backend: Compute) -> None:
        for key in [k for k in self._values if k[0] == id(backend)]:
            del self._values[key]

