"""Ranking: every place a job could go, best first -- the pool's hosts by shape
(scheduler/shapes.py) and what each fleet's backends could add -- with why each other place was
refused. The plan `dstack apply` shows and the real placement both come from `rank()`."""

from __future__ import annotations

from dstack.server.scheduler.placement import (
    Candidate,
    FleetCapacity,
    OfferKey,
    Place,
    PoolInstance,
    Ranking,
    Requirements,
    _zone_reason,
    choose_volumes,
    lacking,
    mismatch,
    no_docker_reason,
    offer_key,
    profile_reason,
)
from dstack.server.scheduler.shapes import pool_candidates


def _backend_candidates(
    req: Requirements, cap: FleetCapacity, out: Ranking, tried: frozenset[OfferKey]
) -> None:
    """A catalog holds thousands of offers but few distinct machines: the resource check runs
    once per `Resources` object (the catalog shares one between offers of the same shape), and
    what depends only on the backend once per backend."""
    if req.docker and not cap.docker and cap.offers:
        backends = sorted({o.backend for o in cap.offers})
        why = f"fleet {cap.fleet_name} ({', '.join(backends)}): {no_docker_reason(req.runtime)}"
        out.reject(why)
        if req.runtime is not None and req.runtime.container_fields:
            out.field_refusals.append(why)
        return
    lacks: dict[str, str | None] = {}
    fits: dict[int, str | None] = {}
    for offer in cap.offers:
        backend, res = offer.backend, offer.instance.resources
        if backend not in lacks:
            lacks[backend] = lacking(req, backend, cap.capabilities.get(backend))
        reason = lacks[backend] or profile_reason(
            req, backend, offer.region, offer.instance.name, offer.price, res.spot
        )
        if reason is None:
            key = id(res)
            if key not in fits:
                fits[key] = mismatch(req.resources, res)
            reason = fits[key]
        if reason is None and req.docker:
            reason = cap.no_docker.get((backend, offer.region))
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
            out.reject(f"{backend} offer {offer.instance.name}: {reason}")
            continue
        cand = Candidate(offer, cap.fleet_id, cap.fleet_name, None, 1)
        out.candidates.append(cand.with_volumes(volumes, waiting) if volumes else cand)


def _score(c: Candidate) -> tuple[bool, bool, float, float]:
    return (not c.available, c.instance_id is None, c.price, c.waste)


def rank(
    req: Requirements,
    pool: list[PoolInstance],
    capacity: list[FleetCapacity],
    tried: frozenset[OfferKey] = frozenset(),
) -> Ranking:
    """Every place the job could go, best first, plus why each other place was refused.
    `tried`: offers this job's earlier instances failed on, never chosen again. Pool hosts are
    checked once per shape (scheduler/shapes.py); places of equal score keep pool order, then
    offer order."""
    out = Ranking()
    wanted = set(req.fleets) if req.fleets else None
    pool_candidates(req, pool, wanted, out)
    # A run pinned to named instances (`instances`) never provisions a new one.
    if req.creation_policy != "reuse" and req.instances is None:
        for cap in capacity:
            if wanted is None or cap.fleet_name in wanted:
                _backend_candidates(req, cap, out, tried)
    out.candidates.sort(key=_score)
    return out
