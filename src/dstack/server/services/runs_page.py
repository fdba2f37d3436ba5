"""runs/list pages from each run's serialized JSON, kept while the run has not changed.

Building a run's view (parsing its stored specs, pydantic models, loading full job rows) costs
far more than the page's SQL, and most listed runs are finished and never change again. So a
page is one statement (`_page_rows`: the page's runs, with their user and fleet names, their
jobs' ids and change tags, and the notes of provisioning jobs' instances); each run whose
fingerprint matches the cached one is spliced in as bytes, and only the others are loaded and
built (`runs_view.run_model`, as `runs.to_models` does) and serialized with pydantic-core.

The fingerprint holds every input of a run's JSON: the run's and its jobs' `change_tag`s
(a fresh random value on every write of the row, by any server replica: tables.py), the job
ids (a new submission, a deleted row), the project and user names, the fleet, the submissions
limit and the instance notes its jobs show. The one input it cannot hold is the clock: a run
with a priced submission that has not finished shows a cost that grows with time, so its JSON
is built on every read and never kept.

A whole page is kept too (`RunJsonCache.pages`), under every row its statement read (so every
run's fingerprint) and the names of the caller's projects, once each of its runs came from the
cache: a repeated read of an unchanged page is then its statement and one comparison, not 100
lookups and a 400 KB join. A page with a run whose cost grows is never complete, so never kept.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Hashable
from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import BindParameter, Select, and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.runs import JobStatus, Run
from dstack.server.db import tables as t
from dstack.server.services.runs import page_query
from dstack.server.services.runs_view import run_model

MAX_BYTES = 64 * 1024 * 1024
PAGE_SHARE = 4  # whole pages may hold a quarter as much again as the runs
_RUN_JSON = TypeAdapter(Run)


class _KeyedBytes:
    """Bytes by id, each with the key it was built from; least recently read dropped first once
    the total passes `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[Hashable, tuple[Any, bytes]] = OrderedDict()

    def get(self, run_id: Hashable, key: Any) -> bytes | None:
        item = self._items.get(run_id)
        if item is None or item[0] != key:
            return None
        self._items.move_to_end(run_id)
        return item[1]

    def put(self, run_id: Hashable, key: Any, body: bytes) -> None:
        old = self._items.pop(run_id, None)
        if old is not None:
            self.size -= len(old[1])
        if len(body) > self.max_bytes:
            return
        self._items[run_id] = (key, body)
        self.size += len(body)
        while self.size > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.size -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)


class RunJsonCache(_KeyedBytes):
    """Serialized runs by run id, each with the fingerprint it was built from; and `pages`:
    whole answers by request, each with the rows it was built from."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        super().__init__(max_bytes)
        self.pages = _KeyedBytes(max_bytes // PAGE_SHARE)


# One cache per database (keyed by its engine): ids and tags mean something only there, and
# tests run several servers, each on its own database, in one process.
_caches: weakref.WeakKeyDictionary[Any, RunJsonCache] = weakref.WeakKeyDictionary()


def cache_for(s: AsyncSession) -> RunJsonCache:
    engine = s.get_bind()
    cache = _caches.get(engine)
    if cache is None:
        cache = _caches[engine] = RunJsonCache()
    return cache


async def list_page(
    s: AsyncSession,
    projects: dict[str, t.Project],
    *,
    only_active: bool,
    limit: int,
    job_submissions_limit: int | None,
    ascending: bool,
    prev_submitted_at: datetime | None,
    prev_run_id: str | None,
    cache: RunJsonCache | None = None,
) -> bytes:
    """The runs/list answer, byte for byte what `json_response(list[Run], runs.list_runs(...))`
    gives for the same rows."""
    cache = cache if cache is not None else cache_for(s)
    after = prev_submitted_at is not None
    params: dict[str, Any] = {"project_ids": list(projects), "limit": limit}
    if after:
        params.update(prev_at=prev_submitted_at, prev_id=prev_run_id)
    stmt = _statement(ascending, only_active, after, after and prev_run_id is not None)
    # Plain tuples: the page is kept under them, and comparing tuples costs a tenth of Rows.
    rows = list(map(tuple, (await s.execute(stmt, params)).all()))
    request = (stmt, tuple(projects), limit, params.get("prev_at"), params.get("prev_id"),
               job_submissions_limit)  # fmt: skip
    read = (rows, [(pid, p.name) for pid, p in projects.items()])
    whole = cache.pages.get(request, read)
    if whole is not None:
        return whole
    page: list[tuple[str, int, str, str | None, str | None, str | None]] = []
    jobs: dict[str, list[tuple[str, int, str | None]]] = {}
    notes: dict[str, str] = {}
    for run_id, run_tag, project_id, fleet_id, user, fleet, job_id, job_tag, iid, note in rows:
        if run_id not in jobs:
            page.append((run_id, run_tag, project_id, fleet_id, user, fleet))
            jobs[run_id] = []
        if job_id is not None:
            jobs[run_id].append((job_id, job_tag, iid))
        if note is not None:
            notes[iid] = note
    if not page:
        return b"[]"
    tags = {
        run_id: [(jid, tag, notes.get(iid or "")) for jid, tag, iid in run_jobs]
        for run_id, run_jobs in jobs.items()
    }
    context = {
        run_id: (projects[project_id].name, user or "", fleet_id, fleet, job_submissions_limit)
        for run_id, _, project_id, fleet_id, user, fleet in page
    }
    bodies: dict[str, bytes] = {}
    for run_id, run_tag, *_ in page:
        hit = cache.get(run_id, _key(run_tag, tags[run_id], context[run_id]))
        if hit is not None:
            bodies[run_id] = hit
    missing = [r[0] for r in page if r[0] not in bodies]
    if missing:
        bodies.update(await _build(s, missing, context, notes, cache))
    answer = b"[" + b",".join(bodies[r[0]] for r in page if r[0] in bodies) + b"]"
    if not missing:  # every run as cached under these very rows: the page is theirs
        cache.pages.put(request, read, answer)
    return answer



@lru_cache(maxsize=16)
def _statement(ascending: bool, only_active: bool, after: bool, after_id: bool) -> Select[Any]:
    """One statement per shape of page, built once with bind parameters: building this join
    and its cache key anew cost SQLAlchemy about as much as running it."""
    return _page_rows(
        bindparam("project_ids", expanding=True),
        ascending=ascending,
        only_active=only_active,
        limit=bindparam("limit"),
        prev_submitted_at=bindparam("prev_at") if after else None,
        prev_run_id=bindparam("prev_id") if after_id else None,
    )


def _page_rows(project_ids: BindParameter[Any], *, ascending: bool, **page: Any) -> Select[Any]:
    """The page's runs (`runs.page_query`) joined with what their JSON shows besides their
    rows, one row per job, in page order: one statement for the whole page. The instance's
    note is read for provisioning jobs only, as `runs.instance_notes` does."""
    cols = (t.Run.id, t.Run.change_tag, t.Run.project_id, t.Run.fleet_id, t.Run.user_id)
    p = page_query(select(*cols, t.Run.submitted_at), project_ids, ascending=ascending, **page)
    p = p.subquery("page")
    provisioning = and_(
        t.Instance.id == t.Job.instance_id, t.Job.status == JobStatus.PROVISIONING.value
    )
    order = (p.c.submitted_at, p.c.id)
    q = (
        select(
            p.c.id,
            p.c.change_tag,
            p.c.project_id,
            p.c.fleet_id,
            t.User.name,
            t.Fleet.name,
            t.Job.id,
            t.Job.change_tag,
            t.Job.instance_id,
            t.Instance.status_message,
        )  # fmt: skip
        .select_from(p)
        .outerjoin(t.User, t.User.id == p.c.user_id)
        .outerjoin(t.Fleet, t.Fleet.id == p.c.fleet_id)
        .outerjoin(t.Job, t.Job.run_id == p.c.id)
        .outerjoin(t.Instance, provisioning)
    )
    return q.order_by(*(c.asc() if ascending else c.desc() for c in order))


def _key(run_tag: int, jobs: list[tuple[str, int, str | None]], context: tuple) -> Hashable:
    return (run_tag, tuple(sorted(jobs)), context)


async def _build(
    s: AsyncSession,
    run_ids: list[str],
    context: dict[str, tuple],
    notes: dict[str, str],
    cache: RunJsonCache,
) -> dict[str, bytes]:
    """The runs not in the cache, built from their rows read now. Each is kept under the
    fingerprint of the very rows it was built from (and the names and notes it shows), so a
    row written between this page's queries can never leave its older JSON looking current."""
    runs = (await s.execute(select(t.Run).where(t.Run.id.in_(run_ids)))).scalars().all()
    jobs_by_run: dict[str, list[t.Job]] = {rid: [] for rid in run_ids}
    for job in (await s.execute(select(t.Job).where(t.Job.run_id.in_(run_ids)))).scalars():
        jobs_by_run[job.run_id].append(job)
    fleets = {c[2]: c[3] for c in context.values() if c[2] is not None and c[3] is not None}
    moved = {r.fleet_id for r in runs if r.fleet_id and r.fleet_id not in fleets}
    if moved:  # placed on a fleet since the page's first query
        found = await s.execute(select(t.Fleet.id, t.Fleet.name).where(t.Fleet.id.in_(moved)))
        fleets.update(dict(found.all()))
    bodies = {}
    for run in runs:
        project_name, user_name, _, _, limit = context[run.id]
        name = fleets.get(run.fleet_id) if run.fleet_id else None
        model = run_model(
            run,
            jobs_by_run[run.id],
            project_name=project_name,
            user_name=user_name,
            fleet=t.Fleet(id=run.fleet_id, name=name) if name is not None else None,
            submissions_limit=limit,
            instance_notes=notes,
        )
        body = _RUN_JSON.dump_json(model, by_alias=True)
        bodies[run.id] = body
        if not _costs_grow(model):
            job_tags = [
                (j.id, j.change_tag, notes.get(j.instance_id or "")) for j in jobs_by_run[run.id]
            ]
            built_from = (project_name, user_name, run.fleet_id, name, limit)
            cache.put(run.id, _key(run.change_tag, job_tags, built_from), body)
    return bodies


def _costs_grow(model: Run) -> bool:
    """True when the run's `cost` depends on the time of the read: a priced submission that
    has not finished yet."""
    return any(
        sub.job_provisioning_data is not None
        and sub.job_provisioning_data.price
        and sub.finished_at is None
        for job in model.jobs
        for sub in job.job_submissions
    )
