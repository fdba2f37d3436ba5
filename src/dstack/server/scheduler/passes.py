"""One scheduling pass: many queued jobs placed against one pool snapshot, pure.

Each job gets what `rank()` would give it against the pool as the pass has left it so far:
a job placed on a host takes its blocks, so the next job sees them busy. The work is shared:
jobs with equal requirements (and equal tried offers) form a group whose fit is checked once
per host shape; a host's free blocks are a counter; a group's best backend offer is found once;
once nothing is free for a group, its ranking (the no-capacity message's rejections) is built
once and holds for its remaining jobs, since a pass only ever takes blocks.

Jobs with volumes or multi-node jobs are ranked in full against the current pool (their
places depend on the host itself, or the replica's rules in `multinode.choose` decide); the
caller accounts what it then chooses with `take()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from dstack.models.instances import InstanceStatus
from dstack.server.scheduler.placement import (
    Candidate,
    FleetCapacity,
    OfferKey,
    PoolInstance,
    Ranking,
    Requirements,
)
from dstack.server.scheduler.ranking import rank
from dstack.server.scheduler.shapes import Fit, candidate, fit

_REQ_FIELDS = tuple(f.name for f in fields(Requirements) if f.name != "resources")


@dataclass(frozen=True, slots=True)
class QueuedJob:
    id: str
    req: Requirements
    tried: frozenset[OfferKey] = frozenset()


@dataclass(slots=True)
class PassPlacement:
    job_id: str
    candidate: Candidate | None  # the best place free now (None: nothing is)
    queued: bool  # nothing free, but something fits: the job waits
    # The full ranking, when nothing was free (its rejections say why) or for a job ranked
    # in full (volumes, multi-node); None for a job the fast path placed.
    ranking: Ranking | None = None


@dataclass(slots=True)
class _Entry:
    """A shape a group fits, with its score's plain parts."""

    price: float
    waste: float
    shape: int
    fit: Fit


@dataclass(slots=True)
class _Group:
    req: Requirements
    tried: frozenset[OfferKey]
    entries: list[_Entry]  # shapes a job of the group could be free on, best score first
    offer_best: Candidate | None  # the best free backend offer
    failed: Ranking | None = None  # nothing free any more (a pass only takes blocks)


class PoolPass:
    """A pool snapshot and the blocks this pass has taken on it."""

    def __init__(self, pool: list[PoolInstance], capacity: list[FleetCapacity]) -> None:
        self.pool = pool
        self.capacity = capacity
        self.free = [i.total_blocks - i.busy_blocks for i in pool]
        self._index = {inst.id: n for n, inst in enumerate(pool)}
        by_shape: dict[tuple[Any, ...], list[int]] = {}
        for n, inst in enumerate(pool):
            by_shape.setdefault(inst.shape, []).append(n)
        self.shapes = list(by_shape.values())  # pool indexes per shape, in pool order
        # Per (shape, blocks): members before this one have fewer free blocks than that.
        self._next: dict[tuple[int, int], int] = {}
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self._res_keys: dict[int, tuple[Any, str]] = {}
        self._current: list[PoolInstance] = pool

    # -- the pass ---------------------------------------------------------------------------

    def place(self, job: QueuedJob) -> PassPlacement:
        """Where `job` goes now; a pool host it gets has its blocks taken."""
        req = job.req
        if req.volumes or req.multinode:
            r = rank(req, self.current_pool(), self.capacity, job.tried)
            if not req.multinode and r.best is not None:
                self.take(r.best)
            return PassPlacement(job.id, r.best, r.only_busy, r)
        g = self._group(job)
        if g.failed is None:
            found = self._best_pool(g)
            if found is not None:
                n, f = found
                cand = candidate(self.pool[n], f, True)
                self.take(cand)
                return PassPlacement(job.id, cand, False)
            if g.offer_best is not None:
                return PassPlacement(job.id, g.offer_best, False)
            g.failed = rank(req, self.current_pool(), self.capacity, g.tried)
        return PassPlacement(job.id, None, g.failed.only_busy, g.failed)

    def take(self, c: Candidate) -> None:
        """Account a placement the caller made (a host's blocks are taken)."""
        n = self._index.get(c.instance_id) if c.instance_id else None
        if n is not None and c.blocks:
            self.free[n] -= c.blocks
            if self._current is self.pool:
                self._current = list(self.pool)
            self._current[n] = self._now(n, self.pool[n])

    def current_pool(self) -> list[PoolInstance]:
        """The pool as this pass has left it (busy blocks counted, as `pool.py` loads it).
        One list, updated in place as the pass takes blocks."""
        return self._current

    def _now(self, n: int, inst: PoolInstance) -> PoolInstance:
        busy = inst.total_blocks - self.free[n]
        if busy == inst.busy_blocks:
            return inst
        status = inst.status
        if status == InstanceStatus.IDLE.value and busy > 0:
            status = InstanceStatus.BUSY.value
        now = replace(inst, busy_blocks=busy, status=status)
        now.__dict__["shape"] = inst.shape  # idle and busy are one status class
        return now

    # -- groups -----------------------------------------------------------------------------

    def _group(self, job: QueuedJob) -> _Group:
        key = (self._req_key(job.req), job.tried)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = self._new_group(job.req, job.tried)
        return g

    def _req_key(self, req: Requirements) -> tuple[Any, ...]:
        """Equal requirements, equal key; the resources' canonical JSON is made once per
        resources object."""
        cached = self._res_keys.get(id(req.resources))
        if cached is None or cached[0] is not req.resources:
            res = req.resources
            dumped = res.model_dump_json() if res is not None else ""
            cached = self._res_keys[id(res)] = (res, dumped)
        return (cached[1], *(getattr(req, name) for name in _REQ_FIELDS))

    def _new_group(self, req: Requirements, tried: frozenset[OfferKey]) -> _Group:
        wanted = set(req.fleets) if req.fleets else None
        entries = []
        for s, members in enumerate(self.shapes):
            inst = self.pool[members[0]]
            if wanted is not None and inst.fleet_name not in wanted:
                continue
            f = fit(req, inst)
            if not f.fits:
                continue
            if not (f.shared and f.starting):  # a starting shared host is never free
                entries.append(_Entry(inst.price, f.waste, s, f))
        entries.sort(key=lambda e: (e.price, e.waste, self.shapes[e.shape][0]))
        return _Group(req, tried, entries, rank(req, [], self.capacity, tried).best)

    def _best_pool(self, g: _Group) -> tuple[int, Fit] | None:
        """The free host `rank()` would put first: the lowest (price, waste), then the
        first in pool order. Shapes with nothing free left are dropped from the group."""
        best: tuple[float, float, int, Fit] | None = None
        spent = False
        for e in g.entries:
            if best is not None and (e.price, e.waste) != (best[0], best[1]):
                break
            n = self._first_free(e)
            if n is None:
                spent = True
            elif best is None or n < best[2]:
                best = (e.price, e.waste, n, e.fit)
        if spent:
            g.entries = [e for e in g.entries if self._first_free(e) is not None]
        return None if best is None else (best[2], best[3])

    def _first_free(self, e: _Entry) -> int | None:
        members = self.shapes[e.shape]
        if e.fit.shared:
            return members[0]
        need = e.fit.blocks
        key = (e.shape, need)
        i = self._next.get(key, 0)
        while i < len(members) and self.free[members[i]] < need:
            i += 1
        self._next[key] = i
        return members[i] if i < len(members) else None


def place_pass(
    jobs: Sequence[QueuedJob], pool: list[PoolInstance], capacity: list[FleetCapacity]
) -> list[PassPlacement]:
    """Place `jobs` in order (the claim order: priority, then submission) against one pool
    snapshot; each job sees the blocks the jobs before it took."""
    p = PoolPass(pool, capacity)
    return [p.place(j) for j in jobs]
