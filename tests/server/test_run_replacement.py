"""`apply --force` against an active run, on a real SQLite database: the request is recorded
on the run in one call, and the run reconciler submits the new run in the transaction that
finishes the old one (also when the request arrives after the reconciler's snapshot)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from dstack.models.runs import ApplyRunPlanInput, RunSpec
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database
from dstack.server.reconcilers.run_worker import RunReconciler
from dstack.server.services import run_apply
from dstack.server.services import runs as svc
from dstack.server.services.context import ServerContext
from dstack.server.services.crypto import Box
from dstack.server.settings import Settings


def spec(command: str) -> RunSpec:
    return RunSpec(run_name="rr", configuration={"type": "task", "commands": [command]})


async def setup(tmp_path: Path) -> tuple[ServerContext, t.User, t.Project]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(db.engine)
    settings = Settings(server_dir=tmp_path, database_url=db.url)
    ctx = ServerContext(settings=settings, db=db, box=Box(tmp_path / "key"))
    async with db.session() as s:
        user = t.User(id=str(uuid.uuid4()), name="u", token_hash="h", created_at=utcnow())
        s.add(user)
        await s.flush()
        project = t.Project(id=str(uuid.uuid4()), name="p", owner_id=user.id, created_at=utcnow())
        s.add(project)
        await s.commit()
    return ctx, user, project


async def apply(ctx: ServerContext, user: t.User, project: t.Project, command: str, force: bool):
    async with ctx.db.session() as s:
        plan = ApplyRunPlanInput(run_spec=spec(command))
        return await run_apply.apply_plan(ctx, s, user, project, plan, force)


async def runs(ctx: ServerContext) -> list[t.Run]:
    async with ctx.db.session() as s:
        return list((await s.execute(select(t.Run).order_by(t.Run.submitted_at))).scalars())


async def finish_jobs(ctx: ServerContext, run_id: str) -> None:
    """What the job reconciler does for the stop request (it is not running here): the jobs
    end, and each status change marks their run due (job_facts.note_status)."""
    async with ctx.db.session() as s:
        await s.execute(
            update(t.Job)
            .where(t.Job.run_id == run_id)
            .values(status="terminated", termination_reason="terminated_by_user")
        )
        await s.execute(update(t.Run).where(t.Run.id == run_id).values(dirty=True))
        await s.commit()


async def reconcile(rec: RunReconciler, run_id: str) -> None:
    claimed = dict(await rec.claim())
    assert run_id in claimed, "the run was not due"
    await rec.process(run_id, claimed[run_id])


def test_force_records_a_replacement_and_the_reconciler_submits_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        first = await apply(ctx, user, project, "sleep 100", force=False)
        answer = await apply(ctx, user, project, "echo new", force=True)
        assert answer.id == first.id  # the old run, now asked to stop
        (old,) = await runs(ctx)
        assert old.stop_requested and old.replacement_spec is not None
        assert old.replacement_user_id == user.id

        rec = RunReconciler(ctx)
        await reconcile(rec, old.id)  # -> terminating; its job is asked to stop
        async with ctx.db.session() as s:
            job = (await s.execute(select(t.Job).where(t.Job.run_id == old.id))).scalar_one()
        assert job.status == "submitted"  # the run asks, it does not write the job's status
        assert job.stop_requested and job.stop_reason == "terminated_by_user"
        assert len(await runs(ctx)) == 1  # nothing new while the old run is active

        await finish_jobs(ctx, old.id)
        await reconcile(rec, old.id)
        old_row, new = await runs(ctx)
        assert old_row.status == "terminated" and old_row.termination_reason == "stopped_by_user"
        assert old_row.replacement_spec is None  # carried out, cleared
        assert new.run_name == "rr" and new.status == "submitted" and new.user_id == user.id
        assert RunSpec.model_validate_json(new.run_spec).configuration["commands"] == ["echo new"]
        async with ctx.db.session() as s:
            jobs = list((await s.execute(select(t.Job).where(t.Job.run_id == new.id))).scalars())
            events = [e.message for e in (await s.execute(select(t.Event))).scalars()]
        assert [j.status for j in jobs] == ["submitted"]
        assert f"Run submitted, replacing run {old.id}" in events
        await ctx.db.close()

    asyncio.run(scenario())


def test_a_request_after_the_reconcilers_snapshot_is_not_lost(tmp_path: Path) -> None:
    """The reconciler decided to end the run on a snapshot without the request; the request
    commits before the final write, which re-reads it and submits the replacement."""

    class Racing(RunReconciler):
        async def _apply(self, s: Any, run: t.Run, *args: Any, **kw: Any) -> Any:
            async with self.ctx.db.session() as other:  # the API, in between
                plan = ApplyRunPlanInput(run_spec=spec("echo late"))
                u = await other.get(t.User, run.user_id)
                p = await other.get(t.Project, run.project_id)
                await run_apply.apply_plan(self.ctx, other, u, p, plan, True)
            return await super()._apply(s, run, *args, **kw)

    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        first = await apply(ctx, user, project, "true", force=False)
        await finish_jobs(ctx, first.id)  # every job ended: this pass ends the run
        await reconcile(Racing(ctx), first.id)
        old, new = await runs(ctx)
        assert old.id == first.id and old.status == "failed"  # its jobs were terminated
        assert RunSpec.model_validate_json(new.run_spec).configuration["commands"] == ["echo late"]
        assert new.status == "submitted"
        await ctx.db.close()

    asyncio.run(scenario())


def test_force_against_a_run_that_just_ended_submits_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        first = await apply(ctx, user, project, "sleep 100", force=False)
        async with ctx.db.session() as s:
            stale = (await s.execute(select(t.Run))).scalar_one()
            async with ctx.db.session() as other:  # the reconciler ends it meanwhile
                await other.execute(update(t.Run).values(status="terminated"))
                await other.commit()
            conf = svc.parse_run_configuration(spec("echo new"))
            answer = await run_apply._request_replacement(
                ctx, s, user, project, stale, spec("echo new"), conf
            )
        assert answer is None  # nothing recorded on an ended run
        (old,) = await runs(ctx)
        assert old.replacement_spec is None
        new = await apply(ctx, user, project, "echo new", force=True)
        assert new.id != first.id and new.status.value == "submitted"
        await ctx.db.close()

    asyncio.run(scenario())


def test_stop_cancels_a_pending_replacement(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        await apply(ctx, user, project, "sleep 100", force=False)
        await apply(ctx, user, project, "echo new", force=True)
        async with ctx.db.session() as s:
            await svc.stop_runs(ctx, s, user, project, ["rr"], abort=False)
        (old,) = await runs(ctx)
        assert old.stop_requested and old.replacement_spec is None
        await finish_jobs(ctx, old.id)
        await reconcile(RunReconciler(ctx), old.id)  # every job ended: the run ends now
        (old,) = await runs(ctx)
        assert old.status == "terminated"  # and no new run
        await ctx.db.close()

    asyncio.run(scenario())
