"""Pool hosts as shapes: hosts that differ only in who they are (id, name, machine, zone) and
in how many of their blocks are taken fit a job alike (`PoolInstance.shape`). The fit -- which
share of the host the job needs, or why it cannot go there -- is checked once per (job
requirements, shape) in plain data; a host's own candidate is then a few comparisons, its
pydantic offer built only when read and its rejection formatted only when read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dstack.models.instances import Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.server.scheduler.matching import mismatch, share, share_view
from dstack.server.scheduler.pins import pinned_out
from dstack.server.scheduler.placement import (
    _STARTING,
    _UP,
    Candidate,
    Place,
    PoolInstance,
    Ranking,
    Requirements,
    _waste,
    choose_volumes,
    lacking,
    profile_reason,
)
from dstack.server.scheduler.runtime_fit import no_docker_reason, runtime_refusal


@dataclass(slots=True)
class Fit:
    """How a job fits one shape. `pre`: refused before its volumes are looked at
    (unreachable, no Docker, a capability); `reason`: refused after (status, profile,
    resources). Otherwise the job takes `blocks` (0: the whole shared host, no blocks) and
    sees `res`; `starting`: a shared host still starting, which the job waits for."""

    pre: str | None = None
    reason: str | None = None
    blocks: int = 0
    res: Resources | None = None
    shared: bool = False
    starting: bool = False
    waste: float = 0.0
    # `pre` refuses a field of the configuration (the plan names those when nothing fits);
    # `pre_at(host)` words it for one host, when the words name the host.
    field: bool = False
    pre_at: Callable[[str], str] | None = None

    @property
    def fits(self) -> bool:
        return self.pre is None and self.reason is None


def fit(req: Requirements, inst: PoolInstance) -> Fit:
    """The fit of `req` on `inst`'s shape: nothing read here is outside `inst.shape`."""
    if inst.unreachable:
        return Fit(pre="unreachable")
    if req.docker and not inst.docker:
        named = req.runtime is not None and bool(req.runtime.container_fields)
        return Fit(pre=no_docker_reason(req.runtime), field=named)
    needs, facts = req.runtime, inst.facts
    if needs is not None and runtime_refusal(needs, facts, inst.name) is not None:

        def words(host: str) -> str:
            return runtime_refusal(needs, facts, host) or ""

        return Fit(pre="", field=True, pre_at=words)
    why = lacking(req, inst.backend, inst.capabilities)
    if why:
        return Fit(pre=why)
    if inst.shared and not req.exclusive and inst.status in (*_STARTING, *_UP):
        return _shared_fit(req, inst)
    if inst.status not in _UP:
        return Fit(reason=inst.status)
    reason = _profile(req, inst)
    if reason:
        return Fit(reason=reason)
    first_reason = None
    total = inst.total_blocks
    for k in range(total if req.multinode else 1, total + 1):
        why = mismatch(req.resources, share_view(inst.resources, k, total))
        if why is None:
            res = share(inst.resources, k, total)
            return Fit(blocks=k, res=res, waste=_waste(res))
        first_reason = first_reason or why
    return Fit(reason=first_reason)


def _profile(req: Requirements, inst: PoolInstance) -> str | None:
    return profile_reason(
        req, inst.backend, inst.region, inst.instance_type, inst.price, inst.resources.spot
    )


def _shared_fit(req: Requirements, inst: PoolInstance) -> Fit:
    """A non-exclusive job on a shared instance: the whole host, no blocks, never busy; an
    instance still starting is waited for (the job queues) rather than refused."""
    reason = _profile(req, inst) or mismatch(req.resources, inst.resources)
    if reason:
        return Fit(reason=reason)
    res = inst.resources
    return Fit(res=res, shared=True, starting=inst.status in _STARTING, waste=_waste(res))


def available(f: Fit, free_blocks: int) -> bool:
    return not f.starting if f.shared else f.blocks <= free_blocks


def candidate(inst: PoolInstance, f: Fit, free: bool) -> Candidate:
    """`inst` as a place for the job (`free`: it can take it now); the offer is built when
    read."""

    def make() -> InstanceOfferWithAvailability:
        return InstanceOfferWithAvailability(
            backend=inst.backend,
            instance={"name": inst.instance_type, "resources": f.res},
            region=inst.region,
            price=inst.price,  # a share costs what the instance costs (server.md §4.4)
            availability=InstanceAvailability.IDLE if free else InstanceAvailability.BUSY,
            blocks=f.blocks,
            total_blocks=inst.total_blocks,
            instance_id=inst.id,
            fleet_name=inst.fleet_name,
        )

    return Candidate(
        None,
        inst.fleet_id,
        inst.fleet_name,
        inst.id,
        f.blocks,
        make=make,
        plain=(free, inst.price, f.waste, inst.total_blocks),
    )


def _fleet_reason(fleet: str, wanted: set[str]) -> str:
    return f"fleet {fleet} not in {sorted(wanted)}"


def pool_candidates(
    req: Requirements, pool: list[PoolInstance], wanted: set[str] | None, out: Ranking
) -> None:
    """Each pool host as a candidate or a rejection, in pool order."""
    fits: dict[tuple, Fit] = {}
    reject, accept = out.reject, out.candidates.append
    for inst in pool:
        if wanted is not None and inst.fleet_name not in wanted:
            reject((inst.name, lambda f=inst.fleet_name: _fleet_reason(f, wanted)))
            continue
        if req.instances is not None:
            pinned = pinned_out(req.instances, inst)
            if pinned:
                reject(pinned)
                continue
        key = inst.shape
        f = fits.get(key)
        if f is None:
            f = fits[key] = fit(req, inst)
        if f.pre is not None:
            why = f.pre_at(inst.name) if f.pre_at else f.pre
            reject((inst.name, why))
            if f.field:
                out.field_refusals.append(f"{inst.name}: {why}")
            continue
        volumes, waiting = (), None
        if req.volumes:
            zones = (inst.availability_zone,) if inst.availability_zone else None
            place = Place(inst.backend, inst.region, zones, inst.fleet_name, inst.id, inst.host_key)
            volumes, misplaced, waiting = choose_volumes(req.volumes, place)
            if misplaced:
                reject((inst.name, misplaced))
                continue
        if f.reason is not None:
            reject((inst.name, f.reason))
            continue
        cand = candidate(inst, f, available(f, inst.total_blocks - inst.busy_blocks))
        accept(cand.with_volumes(volumes, waiting) if volumes else cand)
