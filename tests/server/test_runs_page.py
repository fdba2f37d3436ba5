"""runs/list from cached run JSON (services/runs_page.py) against the page built afresh
(`runs.list_runs` + `json_response`), byte for byte, on a real migrated SQLite database, after
each kind of write the server makes to run and job rows: ORM flushes, Core updates, bulk
updates by primary key, new submissions, a fleet assigned, instance notes, deletion; with
cursors, submission limits and `only_active`. The control step writes a job while keeping its
change tag, as no server code does, and the comparison must then see the stale page."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from dstack.models.runs import JobSpec, Run
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database
from dstack.server.routers.fast_json import json_response
from dstack.server.services import runs as svc
from dstack.server.services.runs_page import RunJsonCache, list_page

T0 = utcnow() - timedelta(hours=1)


class Counting(RunJsonCache):
    def __init__(self, max_bytes: int = 1 << 26) -> None:
        super().__init__(max_bytes)
        self.hits = 0

    def get(self, run_id: str, key: Any) -> bytes | None:
        body = super().get(run_id, key)
        self.hits += body is not None
        return body


def _jpd(price: float) -> str:
    return (
        '{"backend": "fake", "instance_type": {"name": "x", "resources": {"cpus": 2, '
        f'"memory_mib": 1024}}}}, "instance_id": "i", "price": {price}}}'
    )


class World:
    """A project with two users, a fleet, two instances and runs in every kind of state."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.user_ids = [str(uuid.uuid4()) for _ in range(2)]
        self.project_id = str(uuid.uuid4())
        self.fleet_id = str(uuid.uuid4())
        self.instance_ids = [str(uuid.uuid4()) for _ in range(2)]
        self.runs: list[str] = []
        self.jobs: dict[str, list[str]] = {}

    async def seed(self) -> None:
        async with self.db.session() as s:
            for i, uid in enumerate(self.user_ids):
                s.add(t.User(id=uid, name=f"user{i}", token_hash=uid, created_at=T0))
            await s.flush()
            s.add(t.Project(id=self.project_id, name="main", owner_id=self.user_ids[0],
                            created_at=T0))  # fmt: skip
            await s.flush()
            s.add(t.Fleet(id=self.fleet_id, project_id=self.project_id, name="f", status="active",
                          spec="{}", created_at=T0, last_processed_at=T0))  # fmt: skip
            await s.flush()
            for n, iid in enumerate(self.instance_ids):
                s.add(t.Instance(id=iid, project_id=self.project_id, name=f"f-{n}", backend="fake",
                                 status="provisioning", status_message=f"pending {n}",
                                 created_at=T0, last_processed_at=T0))  # fmt: skip
            await s.commit()
        states: list[dict[str, Any]] = [
            {"status": "submitted"},
            {"status": "provisioning", "instance_id": self.instance_ids[0]},
            {"status": "done", "instance_id": self.instance_ids[0], "finished_at": T0},
            {"status": "running", "instance_id": self.instance_ids[1], "jpd": _jpd(0.0)},
            {"status": "running", "instance_id": self.instance_ids[1], "jpd": _jpd(1e-9)},
            {"status": "failed", "termination_reason": "failed_to_start_due_to_no_capacity"},
            {"status": "submitted"},
        ]
        for n, state in enumerate(states):
            # Two runs share a timestamp: the cursor's id tie-break is exercised.
            await self.add_run(n, T0 + timedelta(seconds=min(n, 5)), **state)

    async def add_run(self, n: int, at: datetime, **job: Any) -> None:
        rid = str(uuid.uuid4())
        name = f"r{n}"
        spec = {"run_name": name, "configuration": {"type": "task", "commands": ["true"]}}
        run_status = "running" if job["status"] in ("provisioning", "running") else "submitted"
        if job["status"] in ("done", "failed"):
            run_status = job["status"]
        async with self.db.session() as s:
            s.add(t.Run(id=rid, project_id=self.project_id, user_id=self.user_ids[n % 2],
                        run_name=name, run_spec=json.dumps(spec), status=run_status,
                        submitted_at=at, last_processed_at=at))  # fmt: skip
            await s.flush()
            await self._add_job(s, rid, name, 0, at, **job)
            await s.commit()
        self.runs.append(rid)

    async def _add_job(
        self, s: Any, rid: str, name: str, num: int, at: datetime, jpd: str | None = None, **kw: Any
    ) -> str:
        jid = str(uuid.uuid4())
        s.add(t.Job(id=jid, project_id=self.project_id, run_id=rid, run_name=name,
                    job_name=f"{name}-0-0", submission_num=num, submitted_at=at,
                    last_processed_at=at, job_provisioning_data=jpd,
                    job_spec=JobSpec(job_name=f"{name}-0-0").model_dump_json(), **kw))  # fmt: skip
        self.jobs.setdefault(rid, []).append(jid)
        return jid


PAGES: list[dict[str, Any]] = [
    {},
    {"limit": 3},
    {"limit": 2, "ascending": True},
    {"job_submissions_limit": 1},
    {"only_active": True},
]


def _args(kw: dict[str, Any]) -> dict[str, Any]:
    args = dict(only_active=False, limit=100, job_submissions_limit=None, ascending=False,
                prev_submitted_at=None, prev_run_id=None)  # fmt: skip
    args.update(kw)
    return args


async def _both(db: Database, cache: RunJsonCache, kw: dict[str, Any]) -> tuple[bytes, bytes]:
    async with db.session() as s:
        projects = {p.id: p for p in (await s.execute(select(t.Project))).scalars()}
        user = (await s.execute(select(t.User).limit(1))).scalar_one()
        fresh = await svc.list_runs(s, user, projects, **_args(kw))
        cached = await list_page(s, projects, cache=cache, **_args(kw))
    return cached, bytes(json_response(list[Run], fresh).body)


async def _check(db: Database, cache: RunJsonCache, label: str) -> None:
    """Every page shape twice (the second from the cache), and the pages a cursor walks."""
    for kw in PAGES:
        for _ in range(2):
            cached, fresh = await _both(db, cache, kw)
            assert cached == fresh, f"{label}: {kw}"
    for ascending in (False, True):
        walked: list[str] = []
        kw: dict[str, Any] = {"limit": 2, "ascending": ascending}
        while True:
            cached, fresh = await _both(db, cache, kw)
            assert cached == fresh, f"{label}: walk {kw}"
            page = [Run.model_validate(r) for r in json.loads(cached)]
            if not page:
                break
            walked += [r.id for r in page]
            kw = dict(kw, prev_submitted_at=page[-1].submitted_at, prev_run_id=page[-1].id)
        everything, _ = await _both(db, cache, {"ascending": ascending})
        listed = [r["id"] for r in json.loads(everything)]
        assert walked == listed, f"{label}: the walk is not the whole list in order"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")


def test_cached_pages_equal_fresh_pages_after_every_kind_of_write(db: Database) -> None:
    async def scenario() -> None:
        await migrate(db.engine)
        w = World(db)
        await w.seed()
        cache = Counting()
        await _check(db, cache, "seeded")
        assert cache.hits > 0
        priced = w.runs[4]  # a running job with a price: its cost grows, never cached
        assert cache.get(priced, None) is None and priced not in cache._items
        assert w.runs[3] in cache._items  # running at price 0: a constant cost
        # Whole pages read again unchanged come from `cache.pages` (the checks after each
        # write below compare those against fresh pages too); a page showing the priced run
        # is never complete, so never kept.
        kept = [body for _, body in cache.pages._items.values()]
        again, fresh = await _both(db, cache, {"limit": 2, "ascending": True})
        assert again == fresh and any(again is body for body in kept)
        assert all(priced.encode() not in body for body in kept)

        async with db.session() as s:  # ORM flush
            job = await s.get(t.Job, w.jobs[w.runs[0]][0])
            job.status = "provisioning"
            job.instance_id = w.instance_ids[1]
            await s.commit()
        await _check(db, cache, "orm flush")

        async with db.session() as s:  # Core update of a run
            await s.execute(update(t.Run).where(t.Run.id == w.runs[6]).values(status="terminated"))
            await s.commit()
        await _check(db, cache, "core update")

        async with db.session() as s:  # ORM bulk update by primary key
            await s.execute(
                update(t.Job),
                [{"id": w.jobs[w.runs[1]][0], "status": "pulling"},
                 {"id": w.jobs[w.runs[3]][0], "exit_status": 3, "status": "failed",
                  "termination_reason": "container_exited_with_error"}],
            )  # fmt: skip
            await s.commit()
        await _check(db, cache, "bulk update")

        async with db.session() as s:  # a new submission of a failed run's job
            await w._add_job(s, w.runs[5], "r5", 1, utcnow(), status="submitted")
            await s.commit()
        await _check(db, cache, "resubmission")

        async with db.session() as s:  # a note changes on an instance (no tag of its own)
            await s.execute(
                update(t.Instance)
                .where(t.Instance.id == w.instance_ids[1])
                .values(status_message="pending in Slurm (Resources)")
            )
            await s.execute(update(t.Run).where(t.Run.id == w.runs[0]).values(fleet_id=w.fleet_id))
            await s.commit()
        await _check(db, cache, "note and fleet")

        async with db.session() as s:  # a run deleted leaves the pages
            await s.execute(update(t.Run).where(t.Run.id == w.runs[2]).values(deleted=True))
            await s.commit()
        await _check(db, cache, "deleted")

        # Control: a write that keeps the row's tag (no server code does) leaves the cache
        # stale, and the comparison sees it.
        async with db.session() as s:
            await s.execute(
                update(t.Job)
                .where(t.Job.id == w.jobs[w.runs[1]][0])
                .values(status="running", change_tag=t.Job.change_tag)
            )
            await s.commit()
        with pytest.raises(AssertionError):
            await _check(db, cache, "control")
        await db.close()

    asyncio.run(scenario())


def test_the_cache_keeps_within_its_bytes_dropping_the_least_recently_listed() -> None:
    cache = RunJsonCache(max_bytes=10)
    cache.put("a", 1, b"aaaa")
    cache.put("b", 1, b"bbbb")
    assert cache.get("a", 1) == b"aaaa"  # a is now the most recent
    cache.put("c", 1, b"cccc")
    assert cache.get("b", 1) is None and cache.get("a", 1) == b"aaaa" and cache.size == 8
    assert cache.get("a", 2) is None  # another fingerprint is a miss
    cache.put("a", 2, b"AAAAAA")  # replaces a's entry, not added beside it
    assert len(cache) == 2 and cache.size == 10
    cache.put("d", 1, b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get("d", 1) is None and cache.size == 10


@pytest.mark.parametrize("ascending", [False, True])
@pytest.mark.parametrize("cursor", [False, True])
def test_a_page_is_an_index_range_without_a_sort(db: Database, ascending: bool, cursor: bool):
    async def plan() -> list[str]:
        await migrate(db.engine)
        kw = _args({"ascending": ascending})
        if cursor:
            kw.update(prev_submitted_at=T0, prev_run_id="x")
        del kw["job_submissions_limit"]
        stmt = svc.page_query(select(t.Run), ["p"], **kw)
        sql = str(stmt.compile(db.engine, compile_kwargs={"literal_binds": True}))
        async with db.engine.connect() as conn:
            rows = (await conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))).all()
        await db.close()
        return [r[-1] for r in rows]

    steps = asyncio.run(plan())
    assert any("USING INDEX ix_runs_list" in step for step in steps), steps
    assert not any("TEMP B-TREE" in step for step in steps), steps
