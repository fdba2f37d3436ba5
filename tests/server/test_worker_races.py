"""Races and failures inside the job and instance workers' acts, on a real SQLite database:
two jobs placed on the same free blocks, and an act that fails in a way nobody foresaw."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.reconcilers.base import Requeued
from dstack.server.reconcilers.instance_worker import InstanceReconciler
from dstack.server.reconcilers.instances import Act, InstanceDecision
from dstack.server.reconcilers.job_worker import JobReconciler, Snapshot
from dstack.server.scheduler.placement import Candidate

from .test_backend_seam import Counting
from .test_claim import make_ctx, run_row, seed_owners
from .test_scheduler import offer


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    from dstack.server.db.migrate import migrate
    from dstack.server.db.session import Database

    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"

    async def upgrade() -> None:
        db = Database(url)
        await migrate(db.engine)
        await db.close()

    asyncio.run(upgrade())
    return url


def test_two_jobs_placed_on_the_same_free_blocks_never_both_take_them(
    db_url: str, tmp_path: Path
) -> None:
    """J1 and J2 both saw a 2-block instance free and both want its 2 blocks. J1 reserves
    first; J2's reservation reads the instance's version afresh, so only a recount of the
    blocks can tell it they are gone: it must give its lease back and place again."""

    async def scenario() -> None:
        ctx = make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx.db)
        now = utcnow()
        run = run_row(o)
        inst = t.Instance(
            id=str(uuid.uuid4()), project_id=o.project_id, name="f-0", backend="fake",
            status="idle", total_blocks=2, created_at=now, last_processed_at=now,
        )  # fmt: skip
        jobs = [
            t.Job(
                id=str(uuid.uuid4()),
                project_id=o.project_id,
                run_id=run.id,
                run_name=run.run_name,
                job_name=f"j{i}",
                job_spec="{}",
                status="submitted",
                submitted_at=now,
                last_processed_at=now,
                lock_token=f"tok{i}",
            )  # fmt: skip
            for i in range(2)
        ]
        async with ctx.db.session() as s:
            s.add_all([run, inst])
            await s.flush()
            s.add_all(jobs)
            await s.commit()
        worker = JobReconciler(ctx, agents=None)  # type: ignore[arg-type]
        place = Candidate(offer(backend="fake"), "fleet-id", "fleet", inst.id, 2)

        def snap(job: t.Job) -> Any:
            return Snapshot(job, run, SimpleNamespace(id=o.project_id), None, None, place)  # type: ignore[arg-type]

        # J1 reserves and commits, as `_write` does (the job row takes the blocks).
        async with ctx.db.session() as s:
            values: dict[str, Any] = {}
            await worker._reserve(s, snap(jobs[0]), values, now, "tok0")
            await s.execute(
                t.Job.__table__.update()
                .where(t.Job.id == jobs[0].id)
                .values(instance_id=inst.id, used_blocks=2, status="provisioning")
            )
            await s.commit()
        async with ctx.db.session() as s:
            with pytest.raises(Requeued):
                await worker._reserve(s, snap(jobs[1]), {}, now, "tok1")
        async with ctx.db.session() as s:
            j2 = (await s.execute(select(t.Job).where(t.Job.id == jobs[1].id))).scalar_one()
            assert j2.instance_id is None and j2.lock_token is None and j2.dirty
        await ctx.db.close()

    asyncio.run(scenario())


def test_jobs_placed_together_on_a_shared_instance_all_reserve_it(
    db_url: str, tmp_path: Path
) -> None:
    """Four jobs of one claim placed on the same instance from the same snapshot reserve it
    at once, as `_write` does (reserve, take the blocks, commit), all interleaved: every one
    gets its place while the blocks last. (A compare-and-swap on a version read before the
    write lock let the first through and sent the others back to the queue, again and again.)
    The fifth finds the blocks gone and places again."""

    async def scenario() -> None:
        ctx = make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx.db)
        now = utcnow()
        run = run_row(o)
        inst = t.Instance(
            id=str(uuid.uuid4()), project_id=o.project_id, name="f-0", backend="fake",
            status="idle", total_blocks=4, created_at=now, last_processed_at=now,
        )  # fmt: skip
        jobs = [
            t.Job(
                id=str(uuid.uuid4()), project_id=o.project_id, run_id=run.id,
                run_name=run.run_name, job_name=f"j{i}", job_spec="{}", status="submitted",
                submitted_at=now, last_processed_at=now, lock_token=f"tok{i}",
            )  # fmt: skip
            for i in range(5)
        ]
        async with ctx.db.session() as s:
            s.add_all([run, inst])
            await s.flush()
            s.add_all(jobs)
            await s.commit()
        worker = JobReconciler(ctx, agents=None)  # type: ignore[arg-type]
        place = Candidate(offer(backend="fake"), "fleet-id", "fleet", inst.id, 1)

        async def reserve(i: int) -> bool:
            job = jobs[i]
            snap = Snapshot(job, run, SimpleNamespace(id=o.project_id), None, None, place)  # type: ignore[arg-type]
            async with ctx.db.session() as s:
                try:
                    await worker._reserve(s, snap, {}, now, f"tok{i}")
                except Requeued:
                    return False
                await s.execute(
                    t.Job.__table__.update()
                    .where(t.Job.id == job.id)
                    .values(instance_id=inst.id, used_blocks=1, status="provisioning")
                )
                await s.commit()
            return True

        placed = await asyncio.gather(*(reserve(i) for i in range(5)))
        assert sorted(placed) == [False, True, True, True, True]
        async with ctx.db.session() as s:
            rows = (await s.execute(select(t.Job))).scalars().all()
            assert sum(j.instance_id == inst.id for j in rows) == 4
            assert sum(j.used_blocks or 0 for j in rows) == 4
        await ctx.db.close()

    asyncio.run(scenario())


class Broken(Counting):
    async def create_instance(self, host: Any, offer: Any) -> Any:
        raise KeyError("hostname")  # a bug, not a BackendError

    async def terminate(self, host: Any) -> str | None:
        raise RuntimeError("boom")


def test_an_unforeseen_error_in_an_act_ends_it_with_the_reason(db_url: str, tmp_path: Path) -> None:
    ctx = make_ctx(db_url, tmp_path)
    ctx.box = SimpleNamespace(decrypt=lambda v: v, encrypt=lambda v: v)  # type: ignore[assignment]
    worker = InstanceReconciler(ctx, agents=None)  # type: ignore[arg-type]
    inst = t.Instance(id="i", project_id="p", name="f-0", backend="fake", offer=None)
    backend = Broken()

    async def act(action: Act, b: Any) -> Any:
        return await worker._act(inst, InstanceDecision(action), b, None, None)

    created = asyncio.run(act(Act.CREATE, backend))
    assert not created.ok and created.message == "internal error during create: KeyError"
    assert not asyncio.run(act(Act.TERMINATE, backend)).ok
    # A backend this server no longer has: the row is let go, saying nothing was cleaned up.
    gone = asyncio.run(act(Act.TERMINATE, None))
    assert gone.ok and "nothing was cleaned up" in (gone.message or "")
    assert not asyncio.run(act(Act.CREATE, None)).ok
    asyncio.run(ctx.db.close())
