"""The job passes' snapshots, loaded together: the passes a claim starts at once (up to a
batch of rows) ask for their snapshots in the same event-loop turn, and one session serves
them all with one query per table and one pool read per project, instead of a session and
five to eight queries per job. Each pass still decides and applies on its own (jobs.py); this
only changes how many round trips the reads take, which on SQLite is what a submission costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from dstack.errors import ServerClientError
from dstack.models.runs import JobSpec, JobStatus
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.reconcilers.job_facts import inactivity_duration, utilization_check
from dstack.server.reconcilers.job_placement import Placer
from dstack.server.reconcilers.job_precedence import check_precedence
from dstack.server.reconcilers.job_snapshot import Snapshot
from dstack.server.reconcilers.job_volumes import VolumeSteps
from dstack.server.services.context import ServerContext
from dstack.server.services.job_volumes import volume_locations
from dstack.server.services.pool import PoolRows, load_pool_rows


class SnapshotLoader:
    def __init__(
        self,
        ctx: ServerContext,
        placer: Placer,
        volumes: VolumeSteps,
        job_spec: Callable[[t.Job], JobSpec],
    ) -> None:
        self.ctx = ctx
        self.placer = placer
        self.volumes = volumes
        self.job_spec = job_spec
        # Rows asked for in this event-loop turn: id -> (lease token, the pass's future).
        self._pending: dict[str, tuple[str, asyncio.Future[Snapshot | None]]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self, row_id: str, token: str) -> Snapshot | None:
        """The snapshot of a leased job, None when the lease is no longer ours."""
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = {}
            # After the passes started with this one have asked (they run first).
            loop.call_soon(self._flush)
        fut: asyncio.Future[Snapshot | None] = loop.create_future()
        self._pending[row_id] = (token, fut)
        return await fut

    def _flush(self) -> None:
        batch, self._pending = self._pending or {}, None
        task = asyncio.create_task(self._serve(batch))
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, batch: dict[str, tuple[str, asyncio.Future[Snapshot | None]]]) -> None:
        try:
            snaps = await self._load_all({k: tok for k, (tok, _) in batch.items()})
        except BaseException as e:  # each pass fails (and releases its row) on its own
            for _, fut in batch.values():
                if not fut.done():
                    fut.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        for row_id, (_, fut) in batch.items():
            got = snaps.get(row_id)
            if fut.done():
                continue
            if isinstance(got, Exception):
                fut.set_exception(got)
            else:
                fut.set_result(got)

    async def _load_all(self, tokens: dict[str, str]) -> dict[str, Snapshot | Exception]:
        snaps: dict[str, Snapshot] = {}
        places: list[tuple[Snapshot, PoolRows]] = []
        now = utcnow()
        async with self.ctx.db.session() as s:
            jobs = await _rows(s, t.Job, tokens, populate=True)
            jobs = {i: j for i, j in jobs.items() if j.lock_token == tokens[i]}
            runs = await _rows(s, t.Run, {j.run_id for j in jobs.values()})
            projects = await _rows(s, t.Project, {j.project_id for j in jobs.values()})
            insts = await _rows(s, t.Instance, {j.instance_id for j in jobs.values()} - {None})
            pools: dict[str, PoolRows] = {}
            for job in jobs.values():
                run, project = runs[job.run_id], projects[job.project_id]
                inst = insts.get(job.instance_id) if job.instance_id else None
                snap = snaps[job.id] = Snapshot(job, run, project, inst, self.job_spec(job))
                rows = await self._fill(s, snap, pools, now)
                if rows is not None:
                    places.append((snap, rows))
        wheres = await asyncio.gather(
            *(self.placer.place(p.run, p.job, p.spec, rows, p.mounts) for p, rows in places),
            return_exceptions=True,
        )
        out: dict[str, Snapshot | Exception] = dict(snaps)
        for (snap, _), where in zip(places, wheres, strict=True):
            if isinstance(where, Exception):
                out[snap.job.id] = where  # that pass alone fails
            elif isinstance(where, BaseException):
                raise where
            else:
                snap.placement, snap.queued, snap.no_capacity = where
        placed = [(p, rows) for p, rows in places if p.placement is not None]
        await check_precedence(self.ctx, self.placer, self.job_spec, placed)
        for snap in snaps.values():
            if snap.job.status == JobStatus.TERMINATING.value and snap.job.volumes:
                # Attachments are made for the volumes placement gave the job: none, none held.
                snap.volumes_held = await self.volumes.held(snap.job.id)
        return out

    async def _fill(
        self, s: Any, snap: Snapshot, pools: dict[str, PoolRows], now: datetime
    ) -> PoolRows | None:
        """What the job's status needs read in the snapshot; the pool rows when it is to be
        placed (read once per project and batch)."""
        job, run = snap.job, snap.run
        if job.status == JobStatus.RUNNING.value:
            snap.inactivity_duration = inactivity_duration(run)
            snap.utilization_violation = await utilization_check(s, job, run, now)
        if job.status != JobStatus.SUBMITTED.value or job.instance_id is not None:
            return None
        try:
            snap.mounts = await volume_locations(self.ctx, s, job.project_id, snap.spec, job.id)
        except ServerClientError as e:
            snap.volume_error = e.message
            return None
        if job.project_id not in pools:
            pools[job.project_id] = await load_pool_rows(self.ctx, s, job.project_id)
        return pools[job.project_id]


async def _rows(s: Any, table: Any, ids: Any, *, populate: bool = False) -> dict[str, Any]:
    if not ids:
        return {}
    q = select(table).where(table.id.in_(sorted(ids)))
    if populate:
        q = q.execution_options(populate_existing=True)
    return {r.id: r for r in (await s.execute(q)).scalars()}
