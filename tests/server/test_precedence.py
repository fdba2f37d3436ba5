"""Queue precedence (scheduler/precedence.py and the `yield` row of jobs.py): a queued job
never takes a host a queued job ahead of it could take now, and a job ahead that fits nowhere,
or fits beside it, blocks nobody."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import update

from dstack.models.runs import JobStatus
from dstack.server.db import tables as t
from dstack.server.reconcilers.jobs import decide
from dstack.server.scheduler.precedence import Rival, outranked_by, waiting_message
from dstack.server.scheduler.ranking import rank

from .test_job_volumes import VWorld, task, vscenario
from .test_jobs_decide import NOW, view
from .test_scheduler import BLOCK_HOST, cap, inst, offer, req


def rival(name: str, resources: dict | None = None, **kw: object) -> Rival:
    return Rival(f"{name}-job", name, 90, req(resources), **kw)  # type: ignore[arg-type]


def test_a_rival_that_fits_the_host_takes_it_first() -> None:
    host = inst()
    place = rank(req(), [host], []).best
    assert place is not None
    found = outranked_by(place, host, [rival("high")])
    assert found is not None and found.run_name == "high"
    assert waiting_message(found, host) == (
        "run high (priority 90) is ahead in the queue for instance fleet-i1"
    )


def test_a_rival_that_fits_nowhere_blocks_nobody() -> None:
    host = inst(cpus=8)
    place = rank(req(), [host], []).best
    assert place is not None
    too_big = rival("huge", {"cpu": "64.."})
    other_fleet = Rival("x", "pinned", 90, req(fleets=("elsewhere",)))
    assert outranked_by(place, host, [too_big, other_fleet]) is None


def test_a_rival_that_fits_beside_the_job_blocks_nobody() -> None:
    host = inst(**BLOCK_HOST)  # 4 blocks of 2 GPUs
    place = rank(req({"gpu": "A100:2"}), [host], []).best
    assert place is not None and place.blocks == 1
    assert outranked_by(place, host, [rival("beside", {"gpu": "A100:2"})]) is None
    # ...but one that needs the whole host does not fit beside it.
    whole = rival("whole", {"gpu": "A100:8"})
    assert outranked_by(place, host, [whole]) is whole


def test_a_rival_of_the_same_claim_competes_only_for_the_host_it_was_placed_on() -> None:
    host = inst()
    place = rank(req(), [host], []).best
    assert place is not None
    assert outranked_by(place, host, [rival("elsewhere", in_batch=True, placed_on="i2")]) is None
    assert outranked_by(place, host, [rival("nowhere", in_batch=True)]) is None
    same = rival("same", in_batch=True, placed_on="i1")
    assert outranked_by(place, host, [same]) is same


def test_a_rival_whose_place_its_own_pass_decides_blocks_nobody() -> None:
    host = inst()
    place = rank(req(), [host], []).best
    assert place is not None
    assert outranked_by(place, host, [Rival("v", "volumes", 90, None)]) is None


def test_a_new_instance_is_never_held_back() -> None:
    host = inst()
    new = rank(req(), [], [cap(offer())]).best
    assert new is not None and new.instance_id is None
    assert outranked_by(new, host, [rival("high")]) is None


def test_the_job_behind_yields_and_says_why() -> None:
    host = inst()
    place = rank(req(), [host], []).best
    base = dict(status=JobStatus.SUBMITTED.value, instance_id=None, instance_status=None,
                agent_job=None, running_at=None, placement=place)  # fmt: skip
    assert decide(view(**base), NOW).action == "assign"
    d = decide(view(**base, outranked="run high (priority 90) is ahead"), NOW)
    assert (d.action, d.status, d.message) == ("yield", None, "run high (priority 90) is ahead")
    # A stop still wins over waiting.
    stop = decide(view(**base, outranked="x", stop_requested=True), NOW)
    assert stop.status == JobStatus.TERMINATING.value


# -- through the job reconciler, on SQLite with test doubles ------------------------------


def _queue_two(tmp_path: Path, body: Any) -> None:
    async def main(w: VWorld) -> None:
        await w.run({**task([]), "priority": 10}, name="low")
        await w.run({**task([]), "priority": 90}, name="high")
        await body(w, await w.job("low"), await w.job("high"))

    vscenario(tmp_path, main, hosts=1)


async def _only_due(w: VWorld, job_id: str) -> list[tuple[str, str]]:
    async with w.ctx.db.session() as s:
        await s.execute(update(t.Job).values(dirty=t.Job.id == job_id))
        await s.commit()
    return await w.jobs.claim(100)


def test_a_lone_pass_of_the_lower_job_leaves_the_host_to_the_higher(tmp_path: Path) -> None:
    """The lower job's pass comes round first (a resync) while the one host is free: it
    waits, says why, and the higher job is made due and takes the host."""

    async def body(w: VWorld, low: t.Job, high: t.Job) -> None:
        claimed = await _only_due(w, low.id)
        assert [r for r, _ in claimed] == [low.id]
        await w.jobs.process(*claimed[0])
        assert (await w.job("low")).status == JobStatus.SUBMITTED.value
        assert "Job waits: run high (priority 90) is ahead in the queue for instance f-0" in (
            await w.events()
        )
        async with w.ctx.db.session() as s:  # nothing dirty: only the nudge makes it due
            await s.execute(update(t.Job).values(dirty=False))
            await s.commit()
        claimed = await w.jobs.claim(100)
        assert [r for r, _ in claimed] == [high.id]
        await w.jobs.process(*claimed[0])
        assert (await w.job("high")).instance_id == w.hosts[0]
        await w.step(w.jobs)  # the host is busy now: the lower job queues
        assert (await w.job("low")).status == JobStatus.SUBMITTED.value

    _queue_two(tmp_path, body)


def test_passes_of_one_claim_give_the_host_to_the_higher_job(tmp_path: Path) -> None:
    """Both placed side by side on the same view of the pool: the lower one stands back."""

    async def body(w: VWorld, low: t.Job, high: t.Job) -> None:
        async with w.ctx.db.session() as s:
            await s.execute(update(t.Job).values(dirty=True))
            await s.commit()
        w.jobs.start(await w.jobs.claim())
        await w.jobs.drain()
        assert (await w.job("high")).instance_id == w.hosts[0]
        assert (await w.job("low")).instance_id is None
        # It stood back (it did not lose a race for the host's version and retry).
        assert "Job waits: run high (priority 90) is ahead in the queue for instance f-0" in (
            await w.events()
        )

    _queue_two(tmp_path, body)
