"""The reconcilers' claim path (reconcilers/base.py), on SQLite and on PostgreSQL.

What several server replicas sharing one database rely on: one statement claims, in priority
then age order; two claimers never take the same row; a stale lease's write is refused; a long
pass keeps its lease through the heartbeat and notices when it is taken over; a wake is never
lost; and (db/session.py, strict mode) a task never opens a session while its own uncommitted
writes hold the write lock.

Time is not measured here: leases are expired by giving a reconciler a clock that runs ahead
(`Reconciler.now`), and waits are bounded only as a guard against a hang.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database, SessionNesting
from dstack.server.reconcilers.base import LeaseLost, Reconciler
from dstack.server.reconcilers.job_worker import JobReconciler
from dstack.server.services.context import ServerContext
from dstack.server.services.hub import Hub
from dstack.server.settings import Settings

HANG_GUARD = 60.0  # seconds; only ever reached when the behaviour under test is broken


# -- databases ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Any]:
    from e2e import pg  # tests/e2e/pg.py: a private cluster, as test_postgres.py starts it

    yield from pg.private_cluster("dstack-test-claim-pg-")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database (so migration 0007 runs on both dialects)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        name = f"claim_{uuid.uuid4().hex[:12]}"

        async def create() -> None:
            admin = create_async_engine(cluster.url(), isolation_level="AUTOCOMMIT")
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
            await admin.dispose()

        asyncio.run(create())
        url = cluster.url(name)

    async def upgrade() -> None:
        db = Database(url, strict=True)
        await migrate(db.engine)
        await db.close()

    asyncio.run(upgrade())
    return url


def make_ctx(
    url: str, tmp_path: Path, hub: Hub | None = None, lease: float = 30.0
) -> ServerContext:
    settings = Settings(
        server_dir=tmp_path, database_url=url, lease_seconds=lease, resync_seconds=3600
    )
    return ServerContext(
        settings=settings,
        db=Database(url, strict=True),
        box=None,  # type: ignore[arg-type]
        hub=hub or Hub(),
        instance_id=uuid.uuid4().hex[:8],
    )


# -- rows -----------------------------------------------------------------------------------


@dataclass
class Owners:
    user_id: str
    project_id: str


async def seed_owners(db: Database) -> Owners:
    o = Owners(str(uuid.uuid4()), str(uuid.uuid4()))
    now = utcnow()
    async with db.session() as s:
        s.add(t.User(id=o.user_id, name=f"u{o.user_id[:8]}", token_hash=o.user_id, created_at=now))
        await s.flush()
        s.add(t.Project(id=o.project_id, name=f"p{o.project_id[:8]}", owner_id=o.user_id,
                        created_at=now))  # fmt: skip
        await s.commit()
    return o


def run_row(o: Owners, *, priority: int = 0, status: str = "submitted", **kw: Any) -> t.Run:
    now = utcnow()
    rid = str(uuid.uuid4())
    values: dict[str, Any] = dict(
        id=rid, project_id=o.project_id, user_id=o.user_id, run_name=f"r-{rid[:8]}",
        run_spec="{}", status=status, submitted_at=now, last_processed_at=now,
        priority=priority, dirty=True,
    )  # fmt: skip
    values.update(kw)
    return t.Run(**values)


def job_row(o: Owners, run: t.Run, submitted_at: datetime) -> t.Job:
    return t.Job(
        id=str(uuid.uuid4()), project_id=o.project_id, run_id=run.id, run_name=run.run_name,
        job_name=f"{run.run_name}-0-0", job_spec="{}", status="submitted",
        submitted_at=submitted_at, last_processed_at=submitted_at, dirty=True,
    )  # fmt: skip


async def add_runs(db: Database, o: Owners, count: int, **kw: Any) -> list[str]:
    async with db.session() as s:
        rows = [run_row(o, **kw) for _ in range(count)]
        s.add_all(rows)
        await s.commit()
    return [r.id for r in rows]


async def lease_of(db: Database, run_id: str) -> tuple[str | None, str | None, datetime | None]:
    async with db.session() as s:
        row = (
            await s.execute(
                select(t.Run.lock_owner, t.Run.lock_token, t.Run.lock_expires_at).where(
                    t.Run.id == run_id
                )
            )
        ).one()
    return row[0], row[1], row[2]


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until `predicate` holds; the bound only turns a hang into a failure."""

    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), HANG_GUARD)
    except asyncio.TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


# -- a reconciler to drive ------------------------------------------------------------------


class Toy(Reconciler):
    """Reconciles `runs` rows in `submitted`; what a pass does is up to the test."""

    kind = "runs"
    table = t.Run
    active_statuses = ("submitted",)

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
        self.skew = timedelta(0)  # how far this claimer's clock runs ahead
        self.act: Callable[[Toy, str, str], Awaitable[None]] | None = None

    def now(self) -> datetime:
        return utcnow() + self.skew

    def interval(self, status: str) -> float:
        return 3600.0

    async def process(self, row_id: str, token: str) -> None:
        if self.act is not None:
            await self.act(self, row_id, token)

    async def apply(self, row_id: str, token: str, **values: Any) -> None:
        async with self.ctx.db.session() as s:
            await self.guarded_update(s, row_id, token, values, self.now())
            await s.commit()


async def run_until(loop: Reconciler, event: asyncio.Event) -> None:
    """Run the reconciler's loop until `event` is set (bounded by the hang guard), then stop it
    and wait for its passes."""
    runner = asyncio.create_task(loop.run_forever())
    try:
        await asyncio.wait_for(event.wait(), HANG_GUARD)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await loop.drain()


# -- claim ----------------------------------------------------------------------------------


def test_jobs_are_claimed_by_run_priority_then_submission_time(db_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx = make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx.db)
        base = utcnow() - timedelta(hours=1)
        low, mid, high = (run_row(o, priority=p) for p in (-1, 5, 50))
        mid2 = run_row(o, priority=5)
        plan = [  # (run, minutes after base): inserted in no useful order
            (low, 0), (mid, 30), (high, 40), (mid2, 10), (mid, 20), (high, 45), (low, 1),
        ]  # fmt: skip
        async with ctx.db.session() as s:
            s.add_all([low, mid, high, mid2])
            await s.flush()
            jobs = [job_row(o, run, base + timedelta(minutes=m)) for run, m in plan]
            s.add_all(jobs)
            await s.commit()
        by_id = {j.id: (r.priority, m) for j, (r, m) in zip(jobs, plan, strict=True)}
        expected = [(50, 40), (50, 45), (5, 10), (5, 20), (5, 30), (-1, 0), (-1, 1)]

        statements: list[str] = []

        def count(_conn: Any, _cur: Any, stmt: str, *_: Any) -> None:
            statements.append(stmt)

        worker = JobReconciler(ctx, agents=None)  # type: ignore[arg-type]
        event.listen(ctx.db.engine.sync_engine, "before_cursor_execute", count)
        first = await worker.claim(limit=3)
        event.remove(ctx.db.engine.sync_engine, "before_cursor_execute", count)
        rest = await worker.claim()

        assert [by_id[i] for i, _ in first] == expected[:3]
        assert [by_id[i] for i, _ in rest] == expected[3:]
        # One statement stamped the whole batch (no select-then-update per row).
        assert len(statements) == 1 and statements[0].lstrip().upper().startswith("UPDATE")
        async with ctx.db.session() as s:
            leased = (await s.execute(select(t.Job.lock_owner, t.Job.dirty))).all()
        assert set(leased) == {(worker.owner, False)}
        assert await worker.claim() == []  # everything is leased now
        await ctx.db.close()

    asyncio.run(scenario())


def test_two_claimers_never_take_the_same_row(db_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        hub = Hub()
        ctx_a, ctx_b = make_ctx(db_url, tmp_path, hub), make_ctx(db_url, tmp_path, hub)
        o = await seed_owners(ctx_a.db)
        ids = set(await add_runs(ctx_a.db, o, 120))
        a, b = Toy(ctx_a), Toy(ctx_b)
        got: dict[str, list[str]] = {a.owner: [], b.owner: []}

        async def drain(r: Toy) -> None:
            while claimed := await r.claim(limit=7):
                got[r.owner].extend(i for i, _ in claimed)
                await asyncio.sleep(0)

        await asyncio.gather(drain(a), drain(b), drain(a), drain(b))
        taken = got[a.owner] + got[b.owner]
        assert len(taken) == len(set(taken)), "a row was claimed twice"
        assert set(taken) == ids
        async with ctx_a.db.session() as s:
            owners = dict((await s.execute(select(t.Run.id, t.Run.lock_owner))).all())
        for owner, claimed_ids in got.items():
            assert {owners[i] for i in claimed_ids} <= {owner}
        await ctx_a.db.close()
        await ctx_b.db.close()

    asyncio.run(scenario())


def test_a_stale_lease_write_is_discarded(db_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx_a, ctx_b = make_ctx(db_url, tmp_path), make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx_a.db)
        (rid,) = await add_runs(ctx_a.db, o, 1)
        a, b = Toy(ctx_a), Toy(ctx_b)
        [(_, token_a)] = await a.claim()
        assert await b.claim() == []  # held
        # Two hours on: A's lease has expired, and the row is due again (interval: an hour).
        b.skew = timedelta(hours=2)
        [(_, token_b)] = await b.claim()
        with pytest.raises(LeaseLost):
            await a.apply(rid, token_a, status="running")
        assert not await a.extend(rid, token_a)
        async with ctx_a.db.session() as s:
            assert (await s.get(t.Run, rid)).status == "submitted"  # type: ignore[union-attr]
        await b.apply(rid, token_b, status="running")
        async with ctx_a.db.session() as s:
            assert (await s.get(t.Run, rid)).status == "running"  # type: ignore[union-attr]
        await ctx_a.db.close()
        await ctx_b.db.close()

    asyncio.run(scenario())


def test_a_long_pass_keeps_its_lease_through_the_heartbeat(db_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        lease = 0.6  # beats every 0.2 s of real time; expiry is judged by the skewed clocks
        ctx_a, ctx_b = make_ctx(db_url, tmp_path, lease=lease), make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx_a.db)
        (rid,) = await add_runs(ctx_a.db, o, 1)
        a, b = Toy(ctx_a), Toy(ctx_b)
        proceed = asyncio.Event()

        async def long_act(r: Toy, row_id: str, token: str) -> None:
            await proceed.wait()  # an SSH bootstrap, say, much longer than the lease
            await r.apply(row_id, token, status="running")

        a.act = long_act
        [claimed] = await a.claim()
        _, _, first_expiry = await lease_of(ctx_a.db, rid)
        assert first_expiry is not None
        a.start([claimed])
        # B's clock is two hours on, far past the first expiry (and the row is due again): only
        # the heartbeat can keep the lease now. A's clock is three hours on, so an expiry its
        # heartbeat sets is later than B's "now" however slowly this machine runs.
        b.skew = timedelta(hours=2)
        a.skew = timedelta(hours=3)

        async def extended() -> bool:
            _, _, expiry = await lease_of(ctx_a.db, rid)
            return expiry is not None and expiry > first_expiry + timedelta(hours=2, minutes=30)

        await until(extended, "the heartbeat extended the lease")
        assert await b.claim() == []  # the row is still A's
        proceed.set()
        await a.drain()
        assert a.leases_lost == 0
        owner, token, _ = await lease_of(ctx_a.db, rid)
        assert (owner, token) == (None, None)
        async with ctx_a.db.session() as s:
            assert (await s.get(t.Run, rid)).status == "running"  # type: ignore[union-attr]
        await ctx_a.db.close()
        await ctx_b.db.close()

    asyncio.run(scenario())


def test_the_heartbeat_notices_a_lease_taken_over(db_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx_a, ctx_b = make_ctx(db_url, tmp_path, lease=0.6), make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx_a.db)
        (rid,) = await add_runs(ctx_a.db, o, 1)
        a, b = Toy(ctx_a), Toy(ctx_b)
        taken_over = asyncio.Event()
        seen: list[bool] = []

        async def stalled(r: Toy, row_id: str, token: str) -> None:
            seen.append(r.lease_lost())
            await taken_over.wait()

            async def noticed() -> bool:
                return r.lease_lost()

            # Writes nothing: only the heartbeat can find out that the row is B's now.
            await until(noticed, "the heartbeat noticed the takeover")

        a.act = stalled
        a.start(await a.claim())
        b.skew = timedelta(hours=2)  # past any expiry A's heartbeat can set; the row is due
        [(_, token_b)] = await b.claim()
        taken_over.set()
        await a.drain()
        assert seen == [False]
        assert a.leases_lost == 1
        owner, token, _ = await lease_of(ctx_a.db, rid)
        assert (owner, token) == (b.owner, token_b)  # A's heartbeat never touched B's lease
        await ctx_a.db.close()
        await ctx_b.db.close()

    asyncio.run(scenario())


# -- wakes ----------------------------------------------------------------------------------


def test_a_wake_while_one_waiter_is_busy_is_kept_for_it() -> None:
    """Two loops of one kind (two reconcilers, or two replicas' worth in one process): A sleeps,
    B is claiming when the wake comes. A wakes and goes on; B's next wait must still return at
    once. With one shared event, A clearing it on waking lost B's wake."""

    async def scenario() -> None:
        hub = Hub()
        a, b = hub.waiter("jobs"), hub.waiter("jobs")
        other = hub.waiter("runs")
        sleeping = asyncio.create_task(a.wait(HANG_GUARD))
        await asyncio.sleep(0)  # A is asleep now
        hub.wake("jobs")
        assert await sleeping is True
        assert await a.wait(0) is False  # A consumed its own wake...
        assert await b.wait(0) is True  # ...and B's is still there
        assert await b.wait(0) is False
        assert await other.wait(0) is False  # another kind was not woken

    asyncio.run(scenario())


def test_a_wake_between_claim_and_wait_is_not_lost(db_url: str, tmp_path: Path) -> None:
    """The loop claims (nothing due), and before it sleeps a service commits a dirty row and
    wakes it. Its sleep (resync and intervals are an hour) must end at once and take the row."""

    async def scenario() -> None:
        ctx = make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx.db)
        processed = asyncio.Event()
        added: list[str] = []

        class Racing(Toy):
            async def claim(self, limit: int | None = None) -> list[tuple[str, str]]:
                claimed = await super().claim(limit)
                if not added:  # the first, empty claim: the service acts right after it
                    added.extend(await add_runs(self.ctx.db, o, 1))
                    self.ctx.hub.wake(self.kind)
                return claimed

        async def act(r: Toy, row_id: str, token: str) -> None:
            assert row_id == added[0]
            await r.apply(row_id, token, status="running")
            processed.set()

        loop = Racing(ctx)
        loop.act = act
        await run_until(loop, processed)
        await ctx.db.close()

    asyncio.run(scenario())


def test_a_pass_that_leaves_its_row_due_is_taken_again_at_once(db_url: str, tmp_path: Path) -> None:
    """A pass whose write leaves its row due (`dirty`: the next step of a new status, or a mark
    someone made while the pass held the row) is claimed again right after it, not after the
    status's interval (an hour here): its wake is sent once the row is no longer in flight."""

    async def scenario() -> None:
        ctx = make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx.db)
        (rid,) = await add_runs(ctx.db, o, 1)
        passes: list[str] = []
        done = asyncio.Event()

        async def act(r: Toy, row_id: str, token: str) -> None:
            passes.append(row_id)
            if len(passes) == 1:
                await r.apply(row_id, token, dirty=True)  # the next step is due now
            elif len(passes) == 2:
                async with r.ctx.db.session() as s:  # a service marks it while it is held
                    await s.execute(update(t.Run).where(t.Run.id == row_id).values(dirty=True))
                    await s.commit()
                r.ctx.hub.wake(r.kind)  # finds the row leased: nothing to claim yet
                await r.apply(row_id, token)
            else:
                await r.apply(row_id, token, status="running")
                done.set()

        loop = Toy(ctx)
        loop.act = act
        await run_until(loop, done)
        assert passes == [rid, rid, rid]
        await ctx.db.close()

    asyncio.run(scenario())


def test_a_row_comes_due_on_its_interval_even_while_the_loop_sleeps_a_resync(
    db_url: str, tmp_path: Path
) -> None:
    """While its only row is in flight the loop has nothing to reckon with and sleeps the whole
    resync period (an hour here). The pass ends without marking the row: it falls due after its
    status's interval (0.2 s), and the loop must be there then, not an hour later."""

    async def scenario() -> None:
        ctx = make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx.db)
        (rid,) = await add_runs(ctx.db, o, 1)
        passes: list[str] = []
        done = asyncio.Event()

        class Polled(Toy):
            def interval(self, status: str) -> float:
                return 0.2

        async def act(r: Toy, row_id: str, token: str) -> None:
            passes.append(row_id)
            await asyncio.sleep(0.05)  # the loop goes to sleep meanwhile
            if len(passes) < 3:
                await r.apply(row_id, token)  # nothing new: due again after its interval
            else:
                await r.apply(row_id, token, status="running")
                done.set()

        loop = Polled(ctx)
        loop.act = act
        await run_until(loop, done)
        assert passes == [rid, rid, rid]
        await ctx.db.close()

    asyncio.run(scenario())


def test_a_row_marked_due_in_memory_is_taken_at_once_and_only_by_its_loop(
    db_url: str, tmp_path: Path
) -> None:
    """`mark_due` (an agent's long poll saw the row's job change) makes a row that is not due
    for an hour due now to this loop, without writing it: another claimer does not see it,
    and a mark made while the row is in flight takes it again right after its pass."""

    async def scenario() -> None:
        ctx = make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx.db)
        (rid,) = await add_runs(ctx.db, o, 1, dirty=False)
        loop, other = Toy(ctx), Toy(ctx)
        assert await loop.claim() == []
        await loop.mark_due([rid])
        assert await other.claim() == []  # in memory: only the loop that was told
        passes: list[str] = []
        done = asyncio.Event()

        async def act(r: Toy, row_id: str, token: str) -> None:
            passes.append(row_id)
            if len(passes) == 1:
                await r.mark_due([row_id])  # it moved again while this pass held it
                await r.apply(row_id, token)
            else:
                await r.apply(row_id, token, status="running")
                done.set()

        loop.act = act
        await run_until(loop, done)
        assert passes == [rid, rid]
        async with ctx.db.session() as s:
            assert (await s.get(t.Run, rid)).dirty is False  # type: ignore[union-attr]
        await ctx.db.close()

    asyncio.run(scenario())


# -- no write lock across two sessions --------------------------------------------------------


def test_strict_sessions_refuse_a_second_session_over_uncommitted_writes(
    db_url: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        ctx = make_ctx(db_url, tmp_path)
        db = ctx.db
        o = await seed_owners(db)
        (rid,) = await add_runs(db, o, 1)

        async with db.session() as s:
            await s.get(t.Run, rid)  # reads hold no write lock
            async with db.session() as inner:
                await inner.get(t.Run, rid)
            await s.execute(update(t.Run).where(t.Run.id == rid).values(priority=2))
            with pytest.raises(SessionNesting):
                async with db.session():
                    pass
            await s.commit()
            async with db.session() as inner:  # committed: nothing held any more
                await inner.get(t.Run, rid)

        async with db.session() as s:  # ORM writes count once flushed, not before
            s.add(run_row(o))
            async with db.session():
                pass
            await s.flush()
            with pytest.raises(SessionNesting):
                async with db.session():
                    pass
            await s.rollback()
            async with db.session():
                pass

        async with db.session() as s:  # raw SQL writes count too
            await s.execute(text("UPDATE runs SET priority = 3"))
            with pytest.raises(SessionNesting):
                async with db.session():
                    pass
            await s.rollback()

        async with db.session() as s:  # another task's sessions are its own business
            await s.execute(update(t.Run).values(priority=4))

            async def elsewhere() -> None:
                async with db.session() as other:
                    await other.execute(select(t.Run.id))

            await asyncio.create_task(elsewhere())
            await s.commit()

        lax = Database(db_url, strict=False)
        async with lax.session() as s:
            await s.execute(update(t.Run).values(priority=5))
            async with lax.session() as other:  # not checked: would block only on a write
                await other.execute(select(t.Run.id))
            await s.commit()
        await lax.close()
        await db.close()

    asyncio.run(scenario())


def test_strict_sessions_catch_a_release_inside_a_writing_session(
    db_url: str, tmp_path: Path
) -> None:
    """The pattern of InstanceReconciler._apply: a pass writes in its session (a version
    check), then calls `release()`, which opens a second session of the same task. On SQLite
    that release waits on the pass's own write lock for the whole busy timeout."""

    async def scenario() -> None:
        ctx = make_ctx(db_url, tmp_path)
        o = await seed_owners(ctx.db)
        (rid,) = await add_runs(ctx.db, o, 1)
        errors: list[BaseException] = []

        async def apply_then_release(r: Toy, row_id: str, token: str) -> None:
            try:
                async with r.ctx.db.session() as s:
                    await s.execute(
                        update(t.Run)
                        .where(t.Run.id == row_id, t.Run.version == 0)
                        .values(version=t.Run.version)
                    )
                    await r.release(row_id, token)
            except SessionNesting as e:
                errors.append(e)
                raise

        r = Toy(ctx)
        r.act = apply_then_release
        r.start(await r.claim())
        await r.drain()
        assert len(errors) == 1
        # The loop then released the lease itself, outside the broken session.
        owner, token, _ = await lease_of(ctx.db, rid)
        assert (owner, token) == (None, None)
        await ctx.db.close()

    asyncio.run(scenario())
