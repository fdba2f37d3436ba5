"""The shape-grouped scheduler against the straightforward one.

The oracle below is the per-instance ranking the scheduler had before shapes (every host
checked on its own, every block count tried, an eager pydantic offer per candidate, every
rejection formatted): on random pools and requirements, `rank()` must give the same
candidates in the same order, the same best, the same `only_busy`/`waiting` and the same
rejections; and a pass over many jobs (`place_pass`) must give each job what the oracle gives
it against the pool as the jobs before it left it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.server.scheduler.matching import mismatch, share
from dstack.server.scheduler.passes import PoolPass, QueuedJob, place_pass
from dstack.server.scheduler.placement import (
    _STARTING,
    _UP,
    NO_DOCKER,
    Candidate,
    FleetCapacity,
    Place,
    PoolInstance,
    Ranking,
    Requirements,
    VolumeLocation,
    choose_volumes,
    lacking,
    no_capacity_message,
    profile_reason,
)
from dstack.server.scheduler.ranking import _backend_candidates, rank

from .test_scheduler import cap, inst, offer, req

# -- the oracle: one host at a time ------------------------------------------------------------


def _offer(inst: PoolInstance, res: Any, blocks: int, free: bool) -> InstanceOfferWithAvailability:
    return InstanceOfferWithAvailability(
        backend=inst.backend,
        instance={"name": inst.instance_type, "resources": res},
        region=inst.region,
        price=inst.price,
        availability=InstanceAvailability.IDLE if free else InstanceAvailability.BUSY,
        blocks=blocks,
        total_blocks=inst.total_blocks,
        instance_id=inst.id,
        fleet_name=inst.fleet_name,
    )


def _profile(r: Requirements, i: PoolInstance) -> str | None:
    return profile_reason(r, i.backend, i.region, i.instance_type, i.price, i.resources.spot)


def _fit(r: Requirements, i: PoolInstance) -> Candidate | str:
    if i.shared and not r.exclusive and i.status in (*_STARTING, *_UP):
        why = _profile(r, i) or mismatch(r.resources, i.resources)
        if why:
            return f"{i.name}: {why}"
        offer = _offer(i, i.resources, 0, i.status not in _STARTING)
        return Candidate(offer, i.fleet_id, i.fleet_name, i.id, 0)
    if i.status not in _UP:
        return f"{i.name}: {i.status}"
    why = _profile(r, i)
    if why:
        return f"{i.name}: {why}"
    first = None
    for k in range(i.total_blocks if r.multinode else 1, i.total_blocks + 1):
        res = share(i.resources, k, i.total_blocks)
        why = mismatch(r.resources, res)
        if why is None:
            offer = _offer(i, res, k, k <= i.total_blocks - i.busy_blocks)
            return Candidate(offer, i.fleet_id, i.fleet_name, i.id, k)
        first = first or why
    return f"{i.name}: {first}"


def _one(r: Requirements, i: PoolInstance) -> Candidate | str:
    if i.unreachable:
        return f"{i.name}: unreachable"
    if r.docker and not i.docker:
        return f"{i.name}: {NO_DOCKER}"
    why = lacking(r, i.backend, i.capabilities)
    if why:
        return f"{i.name}: {why}"
    zones = (i.availability_zone,) if i.availability_zone else None
    place = Place(i.backend, i.region, zones, i.fleet_name, i.id, i.host_key)
    volumes, misplaced, waiting = choose_volumes(r.volumes, place)
    if misplaced:
        return f"{i.name}: {misplaced}"
    c = _fit(r, i)
    if isinstance(c, str) or not volumes:
        return c
    if waiting:
        busy = c.offer.model_copy(update={"availability": InstanceAvailability.BUSY})
        return Candidate(busy, c.fleet_id, c.fleet_name, c.instance_id, c.blocks, volumes, waiting)
    return Candidate(c.offer, c.fleet_id, c.fleet_name, c.instance_id, c.blocks, volumes)


def oracle_rank(
    r: Requirements, pool: list[PoolInstance], capacity: list[FleetCapacity], tried: Any = None
) -> Ranking:
    out = Ranking()
    wanted = set(r.fleets) if r.fleets else None
    for i in pool:
        if wanted is not None and i.fleet_name not in wanted:
            out.rejections.append(f"{i.name}: fleet {i.fleet_name} not in {sorted(wanted)}")
            continue
        c = _one(r, i)
        (out.rejections if isinstance(c, str) else out.candidates).append(c)  # type: ignore[arg-type]
    if r.creation_policy != "reuse":
        for cp in capacity:
            if wanted is None or cp.fleet_name in wanted:
                _backend_candidates(r, cp, out, tried or frozenset())

    def score(c: Candidate) -> tuple:
        res = c.offer.instance.resources
        waste = res.cpus + res.memory_mib / 1024 + 10 * len(res.gpus)
        free = c.offer.availability.is_available()
        return (not free, c.instance_id is None, c.offer.price, waste)

    out.candidates.sort(key=score)
    return out


# -- random pools and requirements -------------------------------------------------------------

HOSTS = [dict(cpus=8, mem=32), dict(cpus=16, mem=64, gpus=2), dict(cpus=32, mem=256, gpus=8),
         dict(cpus=32, mem=256, gpus=8, gpu="H100"), dict(cpus=4, mem=16, spot=True)]  # fmt: skip
SPECS = [{}, {"gpu": "A100:1"}, {"gpu": "2.."}, {"gpu": "H100:8"}, {"cpu": "12.."},
         {"memory": "100GB.."}, {"gpu": "A100:2", "cpu": "4.."}]  # fmt: skip
EBS = VolumeLocation("v1", "data", backend="aws", region="us-east-1", availability_zone="z1")


@st.composite
def _host(draw: Any, n: int) -> PoolInstance:
    blocks = draw(st.sampled_from([1, 2, 4]))
    status = draw(st.sampled_from(["idle", "idle", "busy", "pending", "terminating"]))
    i = inst(
        f"i{n}",
        fleet=draw(st.sampled_from(["a", "b"])),
        price=draw(st.sampled_from([1.0, 2.0, 4.0])),
        status=status,
        blocks=blocks,
        busy=draw(st.integers(0, blocks)) if status == "busy" else 0,
        unreachable=draw(st.booleans()) and draw(st.booleans()),
        backend=draw(st.sampled_from(["aws", "gcp"])),
        **draw(st.sampled_from(HOSTS)),
    )
    return replace(
        i,
        shared=draw(st.booleans()) and draw(st.booleans()),
        docker=draw(st.booleans()) or draw(st.booleans()),
        capabilities=draw(st.sampled_from([None, frozenset(), frozenset({"spot"})])),
        availability_zone=draw(st.sampled_from([None, "z1", "z2"])),
    )


# One field of a host changed: a near twin tells whether the shape key misses a field.
TWEAKS: dict[str, Any] = {
    "unreachable": st.booleans(), "status": st.sampled_from(["idle", "pending", "terminating"]),
    "docker": st.booleans(), "shared": st.booleans(), "price": st.sampled_from([1.0, 2.0]),
    "capabilities": st.sampled_from([None, frozenset({"spot"})]), "busy_blocks": st.just(1),
    "availability_zone": st.sampled_from(["z1", "z2"]), "fleet_name": st.just("b"),
    "region": st.just("eu"), "instance_type": st.just("other"), "total_blocks": st.just(2),
}  # fmt: skip


@st.composite
def pools(draw: Any, max_size: int = 30) -> list[PoolInstance]:
    """A few host templates repeated (equal shapes), some with one field changed."""
    templates = [draw(_host(n)) for n in range(draw(st.integers(1, 4)))]
    out = []
    for n in range(draw(st.integers(0, max_size))):
        i = replace(draw(st.sampled_from(templates)), id=f"i{n}", name=f"h-{n}")
        if draw(st.booleans()):
            field = draw(st.sampled_from(sorted(TWEAKS)))
            i = replace(i, **{field: draw(TWEAKS[field])})
        if i.busy_blocks > i.total_blocks:
            i = replace(i, busy_blocks=i.total_blocks)
        out.append(i)
    return out


@st.composite
def reqs(draw: Any, volumes: bool = True) -> Requirements:
    return req(
        draw(st.sampled_from(SPECS)),
        spot_policy=draw(st.sampled_from(["on-demand", "spot", "auto"])),
        max_price=draw(st.sampled_from([None, 1.5, 3.0])),
        fleets=draw(st.sampled_from([None, ("a",), ("b", "c")])),
        creation_policy=draw(st.sampled_from(["reuse-or-create", "reuse"])),
        multinode=draw(st.booleans()) and draw(st.booleans()),
        exclusive=draw(st.booleans()) or draw(st.booleans()),
        docker=draw(st.booleans()),
        needs=draw(st.sampled_from([frozenset(), frozenset({"spot"})])),
        volumes=draw(st.sampled_from([(), ((EBS,),)])) if volumes else (),
    )


CAPACITY = [
    cap(offer("small", 0.5, cpus=4, mem=16), offer("gpu", 3.0, gpus=1), fleet="a"),
    cap(offer("big", 9.0, cpus=32, mem=256, gpus=8), fleet="b"),
]


def _same(got: Ranking, want: Ranking) -> None:
    assert got.candidates == want.candidates
    assert got.best == want.best
    assert got.only_busy == want.only_busy
    assert got.waiting == want.waiting
    assert got.rejections == want.rejections
    assert no_capacity_message(got, True) == no_capacity_message(want, True)


FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(pools(), reqs(), st.booleans())
def test_shape_grouped_rank_equals_the_per_instance_rank(
    pool: list[PoolInstance], r: Requirements, offers: bool
) -> None:
    capacity = CAPACITY if offers else []
    _same(rank(r, pool, capacity), oracle_rank(r, pool, capacity))


def test_a_fitting_job_formats_no_rejection() -> None:
    r = rank(req({"gpu": "A100:1"}), [inst("i1", gpus=0), inst("i2", gpus=1)], [])
    assert r.best is not None and r.best.instance_id == "i2"
    assert r._formatted is None and not any(isinstance(x, str) for x in r._rejections)
    assert r.rejections == ["fleet-i1: gpu count 1 (has 0)"]


def test_candidate_offer_is_built_when_read_and_matches() -> None:
    pool = [inst("i1", blocks=4, gpus=8, price=8.0)]
    c = rank(req({"gpu": "A100:2"}), pool, []).candidates[0]
    assert c._offer is None
    assert c.offer.blocks == 1 and len(c.offer.instance.resources.gpus) == 2
    assert c.offer is c.offer  # built once


# -- the pass: each job sees the blocks the jobs before it took --------------------------------


def _take(pool: list[PoolInstance], c: Candidate | None) -> list[PoolInstance]:
    if c is None or c.instance_id is None or not c.blocks:
        return pool
    out = []
    for i in pool:
        if i.id == c.instance_id:
            busy = i.busy_blocks + c.blocks
            i = replace(i, busy_blocks=busy, status="busy" if i.status == "idle" else i.status)
        out.append(i)
    return out


@FAST
@given(pools(max_size=20), st.lists(reqs(), min_size=1, max_size=25), st.booleans())
def test_a_pass_equals_ranking_each_job_in_turn(
    pool: list[PoolInstance], rs: list[Requirements], offers: bool
) -> None:
    capacity = CAPACITY if offers else []
    jobs = [QueuedJob(f"j{n}", r) for n, r in enumerate(rs)]
    placed = place_pass(jobs, pool, capacity)
    current = pool
    for job, got in zip(jobs, placed, strict=True):
        want = oracle_rank(job.req, current, capacity)
        assert got.job_id == job.id
        assert got.candidate == want.best
        assert got.queued == want.only_busy
        if got.candidate is None:
            assert got.ranking is not None
            assert no_capacity_message(got.ranking, True) == no_capacity_message(want, True)
        if not job.req.multinode:
            current = _take(current, want.best)


def test_pass_takes_blocks_until_the_host_is_full_then_queues() -> None:
    host = inst("h", blocks=4, gpus=8, price=8.0)
    jobs = [QueuedJob(f"j{n}", req({"gpu": "A100:2"})) for n in range(5)]
    placed = place_pass(jobs, [host], [])
    assert [p.candidate.blocks if p.candidate else None for p in placed] == [1, 1, 1, 1, None]
    assert placed[4].queued is True and placed[4].ranking is not None


def test_pass_fills_the_cheapest_host_first_in_pool_order_then_the_next() -> None:
    pool = [inst("dear", price=9.0), inst("c1", price=1.0), inst("c2", price=1.0)]
    jobs = [QueuedJob(f"j{n}", req()) for n in range(4)]
    got = [p.candidate.instance_id if p.candidate else None for p in place_pass(jobs, pool, [])]
    assert got == ["c1", "c2", "dear", None]


def test_pass_takes_a_bigger_share_only_where_enough_blocks_are_free() -> None:
    a = inst("a", blocks=4, gpus=8, price=8.0, status="busy", busy=3)  # one block free
    b = inst("b", blocks=4, gpus=8, price=8.0)
    jobs = [QueuedJob("big", req({"gpu": "A100:4"})), QueuedJob("small", req({"gpu": "A100:2"}))]
    big, small = place_pass(jobs, [a, b], [])
    assert (big.candidate.instance_id, big.candidate.blocks) == ("b", 2)  # type: ignore[union-attr]
    assert (small.candidate.instance_id, small.candidate.blocks) == ("a", 1)  # type: ignore[union-attr]


def test_pass_falls_back_to_a_new_instance_when_the_pool_is_taken() -> None:
    jobs = [QueuedJob(f"j{n}", req()) for n in range(3)]
    placed = place_pass(jobs, [inst("h")], [cap(offer("new", 0.5))])
    assert [p.candidate.instance_id for p in placed] == ["h", None, None]  # type: ignore[union-attr]


def test_pass_without_any_fit_gives_the_no_capacity_reasons_once_per_group() -> None:
    jobs = [QueuedJob(f"j{n}", req({"gpu": "H100:8"})) for n in range(3)]
    placed = place_pass(jobs, [inst("h", gpus=2)], [])
    assert all(p.candidate is None and not p.queued for p in placed)
    assert placed[0].ranking is placed[2].ranking
    assert no_capacity_message(placed[0].ranking, True) == (  # type: ignore[arg-type]
        "No instance or offer meets the requirements: fleet-h: gpu count 8 (has 2)"
    )


def test_pass_take_accounts_a_choice_made_by_the_caller() -> None:
    p = PoolPass([inst("h", blocks=2, gpus=2, price=2.0)], [])
    multi = p.place(QueuedJob("m", req({"gpu": "A100:1.."}, multinode=True)))
    assert multi.candidate is not None and multi.candidate.blocks == 2
    assert p.free == [2]  # multi-node: the caller's rules decide, nothing taken yet
    p.take(multi.candidate)
    assert p.free == [0]
    late = p.place(QueuedJob("j", req({"gpu": "A100:1"})))
    assert late.candidate is None and late.queued
    assert p.current_pool()[0].status == "busy" and p.current_pool()[0].busy_blocks == 2
