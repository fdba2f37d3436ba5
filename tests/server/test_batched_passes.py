"""Submissions that find no capacity, through the real job and run reconcilers on SQLite: the
passes a claim starts together load their snapshots in one session and write in one
transaction, and each job and run still ends with every step's event."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from dstack.models.runs import ApplyRunPlanInput, RunSpec
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database
from dstack.server.reconcilers.base import LeaseLost
from dstack.server.reconcilers.job_worker import JobReconciler
from dstack.server.reconcilers.run_worker import RunReconciler
from dstack.server.reconcilers.shared_writes import SharedWrites
from dstack.server.services import run_apply
from dstack.server.services.context import ServerContext
from dstack.server.services.crypto import Box
from dstack.server.settings import Settings

N = 6


async def setup(tmp_path: Path) -> tuple[ServerContext, t.User, t.Project]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", strict=True)
    await migrate(db.engine)
    settings = Settings(server_dir=tmp_path, database_url=db.url, resync_seconds=3600)
    ctx = ServerContext(settings=settings, db=db, box=Box(tmp_path / "key"))
    async with db.session() as s:
        user = t.User(id=str(uuid.uuid4()), name="u", token_hash="h", created_at=utcnow())
        s.add(user)
        await s.flush()
        project = t.Project(id=str(uuid.uuid4()), name="p", owner_id=user.id, created_at=utcnow())
        s.add(project)
        await s.commit()
    return ctx, user, project


async def submit(ctx: ServerContext, user: t.User, project: t.Project, name: str) -> None:
    spec = RunSpec(run_name=name, configuration={"type": "task", "commands": ["true"]})
    async with ctx.db.session() as s:
        await run_apply.apply_plan(ctx, s, user, project, ApplyRunPlanInput(run_spec=spec), False)


def count_commits(db: Database) -> list[int]:
    commits = [0]

    def on_commit(_conn: Any) -> None:
        commits[0] += 1

    event.listen(db.engine.sync_engine, "commit", on_commit)
    return commits


async def one_round(rec: Any) -> int:
    claimed = await rec.claim()
    rec.start(claimed)
    await rec.drain()
    return len(claimed)


def test_no_capacity_submissions_end_in_one_batched_pass_each(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        for i in range(N):
            await submit(ctx, user, project, f"nc-{i}")
        jobs = JobReconciler(ctx, agents=None)  # type: ignore[arg-type]
        runs = RunReconciler(ctx)
        assert await one_round(runs) == 0  # a task's run is not due until a job moves
        commits = count_commits(ctx.db)
        assert await one_round(jobs) == N
        assert commits[0] <= 2  # the claim, then one shared write (was a session each)
        assert await one_round(runs) == N
        async with ctx.db.session() as s:
            job_rows = list((await s.execute(select(t.Job))).scalars())
            run_rows = list((await s.execute(select(t.Run))).scalars())
            messages = [e.message for e in (await s.execute(select(t.Event))).scalars()]
        assert {j.status for j in job_rows} == {"failed"}
        assert {j.termination_reason for j in job_rows} == {"failed_to_start_due_to_no_capacity"}
        assert {r.status for r in run_rows} == {"failed"}
        to_terminating = [m for m in messages if m.startswith("Job status changed SUBMITTED")]
        to_failed = [m for m in messages if m == "Job status changed TERMINATING -> FAILED"]
        assert len(to_terminating) == N and len(to_failed) == N
        assert all("FAILED_TO_START_DUE_TO_NO_CAPACITY" in m for m in to_terminating)
        await ctx.db.close()

    asyncio.run(scenario())


def test_shared_writes_fail_alone_only_for_an_isolated_error(tmp_path: Path) -> None:
    """A lost lease fails its own write; any other error rolls back every write of the turn."""

    async def scenario() -> None:
        ctx, user, _ = await setup(tmp_path)
        shared = SharedWrites(ctx.db, isolated=(LeaseLost,))

        def rename(name: str, fail: BaseException | None = None) -> Any:
            async def write(s: Any) -> None:
                if fail is not None:
                    raise fail
                (await s.get(t.User, user.id)).email = name

            return write

        results = await asyncio.gather(
            shared.run(rename("a@x")), shared.run(rename("", LeaseLost("gone"))),
            return_exceptions=True,
        )  # fmt: skip
        assert results[0] is None and isinstance(results[1], LeaseLost)
        async with ctx.db.session() as s:
            assert (await s.get(t.User, user.id)).email == "a@x"
        results = await asyncio.gather(
            shared.run(rename("b@x")), shared.run(rename("", KeyError("bug"))),
            return_exceptions=True,
        )  # fmt: skip
        assert all(isinstance(r, KeyError) for r in results)
        async with ctx.db.session() as s:
            assert (await s.get(t.User, user.id)).email == "a@x"  # nothing of that turn
        await ctx.db.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("foreign", [True, False])
def test_a_snapshot_is_none_once_the_lease_is_not_ours(tmp_path: Path, foreign: bool) -> None:
    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        await submit(ctx, user, project, "one")
        jobs = JobReconciler(ctx, agents=None)  # type: ignore[arg-type]
        ((row_id, token),) = await jobs.claim()
        snap = await jobs.snapshots.load(row_id, "someone-else" if foreign else token)
        assert (snap is None) == foreign
        if not foreign:
            assert snap.job.id == row_id and snap.run.run_name == "one"
            assert snap.placement is None and not snap.queued and snap.no_capacity
        await ctx.db.close()

    asyncio.run(scenario())
