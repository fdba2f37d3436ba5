"""What server replicas on one database agree on (db/cluster.py, db/notify.py), on SQLite and
on PostgreSQL: the startup lock excludes, exactly one replica holds a cluster lease and another
takes it over when it lapses or is given back, a second live single-instance row is refused by
the database, and (Postgres) a wake on one replica reaches the others' loops.

Leases are expired with a clock that runs ahead, not by waiting."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.cluster import ClusterLease, startup_lock, take_lease
from dstack.server.db.migrate import migrate
from dstack.server.db.notify import PgWakes
from dstack.server.db.session import Database
from dstack.server.services.hub import Hub

GUARD = 30.0  # seconds; reached only when the behaviour under test is broken


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Any]:
    from e2e import pg

    yield from pg.private_cluster("dstack-test-cluster-pg-")


def fresh_pg(cluster: Any) -> str:
    name = f"cl_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = create_async_engine(cluster.url(), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()

    asyncio.run(create())
    return cluster.url(name)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    else:
        url = fresh_pg(request.getfixturevalue("pg_cluster"))

    async def upgrade() -> None:
        db = Database(url, strict=True)
        await migrate(db.engine)
        await db.close()

    asyncio.run(upgrade())
    return url


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_one_of_many_concurrent_takers_wins_the_lease(db_url: str) -> None:
    async def main() -> list[bool]:
        dbs = [Database(db_url, strict=True) for _ in range(6)]
        now = utcnow()
        try:
            return await asyncio.gather(
                *(
                    take_lease(db, "probes", f"owner-{i}", now + timedelta(seconds=30), now)
                    for i, db in enumerate(dbs)
                )
            )
        finally:
            for db in dbs:
                await db.close()

    won = asyncio.run(main())
    assert won.count(True) == 1, won


def test_a_lapsed_or_released_lease_is_taken_over(db_url: str) -> None:
    async def main() -> None:
        clock = Clock()
        db_a, db_b = Database(db_url, strict=True), Database(db_url, strict=True)
        a = ClusterLease(db_a, "probes", "a", 9.0, clock)
        b = ClusterLease(db_b, "probes", "b", 9.0, clock)
        try:
            assert await a.held()
            assert not await b.held()
            clock.advance(4)  # a renews (a third used up); b looks again and is refused
            assert await a.held() and not await b.held()
            clock.advance(9.5)  # a stopped renewing (killed): its lease ran out
            assert await b.held()
            assert not await a.held()  # the old holder notices and stops
            await b.release()  # a clean stop gives it back: taken at the next look
            clock.advance(3.5)
            assert await a.held()
        finally:
            await db_a.close()
            await db_b.close()

    asyncio.run(main())


def test_the_startup_lock_excludes_a_second_server(db_url: str) -> None:
    async def main() -> list[str]:
        order: list[str] = []
        db_a, db_b = Database(db_url, strict=True), Database(db_url, strict=True)
        inside = asyncio.Event()

        async def first() -> None:
            async with startup_lock(db_a):
                order.append("a in")
                inside.set()
                await asyncio.sleep(0.5)
                order.append("a out")

        async def second() -> None:
            await inside.wait()
            async with startup_lock(db_b):
                order.append("b in")

        try:
            await asyncio.wait_for(asyncio.gather(first(), second()), GUARD)
        finally:
            await db_a.close()
            await db_b.close()
        return order

    assert asyncio.run(main()) == ["a in", "a out", "b in"]


def test_a_second_live_single_instance_row_is_refused(db_url: str) -> None:
    async def main() -> None:
        db = Database(db_url, strict=True)
        now = utcnow()
        uid, pid = str(uuid.uuid4()), str(uuid.uuid4())

        def inst(status: str) -> t.Instance:
            return t.Instance(
                id=str(uuid.uuid4()), project_id=pid, name="local-0", backend="local",
                status=status, created_at=now, last_processed_at=now, single_key="local",
            )  # fmt: skip

        try:
            async with db.session() as s:
                s.add(t.User(id=uid, name="u", token_hash=uid, created_at=now))
                await s.flush()
                s.add(t.Project(id=pid, name="p", owner_id=uid, created_at=now))
                await s.flush()
                first = inst("pending")
                s.add(first)
                await s.commit()
            async with db.session() as s:
                s.add(inst("pending"))
                with pytest.raises(IntegrityError):
                    await s.commit()
            async with db.session() as s:  # once the first is gone, a new one may exist
                (await s.get(t.Instance, first.id)).status = "terminated"
                await s.commit()
            async with db.session() as s:
                s.add(inst("pending"))
                await s.commit()
        finally:
            await db.close()

    asyncio.run(main())


def test_a_wake_on_one_replica_reaches_the_others(pg_cluster: Any) -> None:
    url = fresh_pg(pg_cluster)

    async def main() -> None:
        dbs = [Database(url, strict=True) for _ in range(3)]
        hubs = [Hub() for _ in dbs]
        bridges = [PgWakes(dbs[i].engine, f"r{i}", hubs[i].wake_local) for i in range(3)]
        for hub, bridge in zip(hubs, bridges, strict=True):
            hub.forward = bridge.send
            await bridge.start()
        try:
            for bridge in bridges:
                await asyncio.wait_for(bridge.connected.wait(), GUARD)
            waiters = [hub.waiter("jobs") for hub in hubs]
            others = [hub.waiter("runs") for hub in hubs]
            hubs[0].wake("jobs")
            for w in waiters[1:]:
                assert await w.wait(GUARD), "the wake did not cross replicas"
            assert waiters[0].woken  # locally, at once
            assert not any(w.woken for w in others)  # only the kind that was woken
            await asyncio.sleep(0.3)
            assert bridges[0].received == 0  # its own notification is not delivered back
        finally:
            for bridge in bridges:
                await bridge.stop()
            for db in dbs:
                await db.close()

    asyncio.run(main())


def test_two_replicas_creating_the_single_instance_at_once_make_one(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two server processes (two contexts: the job worker's in-process lock does not span
    them) each place a job on a single-instance backend, both having seen no live instance
    (the stale view is forced). The database refuses the second instance; that job gives its
    lease back, due again, and places onto the first instance on its next pass."""
    import json
    from types import SimpleNamespace

    from dstack.server.backends.registry import BackendRegistry
    from dstack.server.reconcilers import job_worker
    from dstack.server.reconcilers.base import Requeued
    from dstack.server.scheduler.placement import Candidate
    from dstack.server.services.bootstrap import local_fleet_spec

    from .test_backend_seam import Counting
    from .test_claim import make_ctx, run_row, seed_owners
    from .test_scheduler import offer

    async def stale_view(_s: Any) -> set[str]:
        return set()

    monkeypatch.setattr(job_worker, "live_backend_types", stale_view)

    async def scenario() -> None:
        ctxs = [make_ctx(db_url, tmp_path) for _ in range(2)]
        for ctx in ctxs:
            ctx.backends = BackendRegistry(shared=[Counting(single_instance=True)])
        o = await seed_owners(ctxs[0].db)
        now = utcnow()
        run = run_row(o, run_spec=json.dumps({"configuration": {"type": "task"}}))
        fleet = t.Fleet(
            id=str(uuid.uuid4()), project_id=o.project_id, name="fl", status="active",
            spec=local_fleet_spec(["fake"]).model_dump_json(), created_at=now,
            last_processed_at=now,
        )  # fmt: skip
        jobs = [
            t.Job(
                id=str(uuid.uuid4()), project_id=o.project_id, run_id=run.id,
                run_name=run.run_name, job_name=f"j{i}", job_spec="{}", status="submitted",
                submitted_at=now, last_processed_at=now, lock_token=f"tok{i}", dirty=False,
            )  # fmt: skip
            for i in range(2)
        ]
        async with ctxs[0].db.session() as s:
            s.add_all([run, fleet])
            await s.flush()
            s.add_all(jobs)
            await s.commit()
        workers = [job_worker.JobReconciler(ctx, agents=None) for ctx in ctxs]  # type: ignore[arg-type]
        place = Candidate(offer(backend="fake"), fleet.id, "fl", None, 1)
        project = SimpleNamespace(id=o.project_id)

        def snap(job: t.Job) -> Any:
            return job_worker.Snapshot(job, run, project, None, None, place)  # type: ignore[arg-type]

        async with ctxs[0].db.session() as s:
            await workers[0]._add_instance(s, snap(jobs[0]), {}, now, "tok0")
            await s.commit()
        async with ctxs[1].db.session() as s:
            with pytest.raises(Requeued):
                await workers[1]._add_instance(s, snap(jobs[1]), {}, now, "tok1")
        async with ctxs[1].db.session() as s:
            rows = (await s.execute(text("SELECT count(*) FROM instances"))).scalar()
            assert rows == 1
            j1 = await s.get(t.Job, jobs[1].id)
            assert j1.lock_token is None and j1.dirty and j1.instance_id is None
        for ctx in ctxs:
            await ctx.db.close()

    asyncio.run(scenario())
