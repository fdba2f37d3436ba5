"""The queued jobs ahead of the ones a claim is placing (scheduler/precedence.py decides
which of them a placement would wrong). Read after placement, one query per project, and only
for a batch with a job about to take blocks on a pool host: a submission that creates its own
instance, or finds nothing, costs nothing here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select

from dstack.models.runs import JobSpec, JobStatus
from dstack.server.db import tables as t
from dstack.server.reconcilers.job_placement import Placer
from dstack.server.scheduler.precedence import Rival, outranked_by, waiting_message
from dstack.server.services.context import ServerContext
from dstack.server.services.job_volumes import named_mounts
from dstack.server.services.pool import PoolRows

if TYPE_CHECKING:
    from dstack.server.reconcilers.job_snapshot import Snapshot


def _key(snap: Snapshot) -> tuple[int, Any]:
    """Sorts ahead-first: priority descending, then submitted first."""
    return (-(snap.run.priority or 0), snap.job.submitted_at)


def _takes_blocks(snap: Snapshot) -> bool:
    c = snap.placement
    return c is not None and c.instance_id is not None and bool(c.blocks)


async def check_precedence(
    ctx: ServerContext,
    placer: Placer,
    job_spec: Callable[[t.Job], JobSpec],
    placed: Sequence[tuple[Snapshot, PoolRows]],
) -> None:
    """Set `outranked` on each snapshot whose placement takes a host a queued job ahead of it
    could take now."""
    by_project: dict[str, list[tuple[Snapshot, PoolRows]]] = {}
    for snap, rows in placed:
        by_project.setdefault(snap.job.project_id, []).append((snap, rows))
    for project_id, group in by_project.items():
        takers = [(snap, rows) for snap, rows in group if _takes_blocks(snap)]
        if not takers:
            continue
        last = max((snap for snap, _ in takers), key=_key)
        ahead = await _queued_ahead(ctx, project_id, last, {s.job.id for s, _ in group})
        outside = [_rival(placer, job_spec, job, run) for job, run in ahead]
        for snap, rows in takers:
            _check(placer, snap, rows, group, outside)


def _check(
    placer: Placer,
    snap: Snapshot,
    rows: PoolRows,
    group: list[tuple[Snapshot, PoolRows]],
    outside: list[tuple[tuple[int, Any], Rival]],
) -> None:
    inst = next((i for i in rows.instances if i.id == snap.placement.instance_id), None)
    if inst is None:
        return
    mine = _key(snap)
    rivals = [(k, r) for k, r in outside if k < mine]
    for other, _ in group:
        if other is not snap and _key(other) < mine:
            rivals.append((_key(other), _batch_rival(placer, other)))
    rivals.sort(key=lambda kr: kr[0])
    found = outranked_by(snap.placement, inst, [r for _, r in rivals])
    if found is not None:
        snap.outranked = (found, waiting_message(found, inst))


def _batch_rival(placer: Placer, snap: Snapshot) -> Rival:
    """A job of the same claim, placed against the same pool: it competes only for the host
    its own pass chose."""
    c = snap.placement
    own_pass = bool(snap.mounts) or snap.spec.jobs_per_replica > 1
    return Rival(
        snap.job.id,
        snap.run.run_name,
        snap.run.priority or 0,
        None if own_pass else placer.requirements(snap.run, snap.spec),
        in_batch=True,
        placed_on=c.instance_id if c is not None else None,
    )


def _rival(
    placer: Placer, job_spec: Callable[[t.Job], JobSpec], job: t.Job, run: t.Run
) -> tuple[tuple[int, Any], Rival]:
    spec = job_spec(job)
    own_pass = named_mounts(spec) or spec.jobs_per_replica > 1
    req = None if own_pass else placer.requirements(run, spec)
    rival = Rival(job.id, run.run_name, run.priority or 0, req)
    return (-(run.priority or 0), job.submitted_at), rival


async def _queued_ahead(
    ctx: ServerContext, project_id: str, last: Snapshot, exclude: set[str]
) -> list[tuple[t.Job, t.Run]]:
    """Queued jobs of the project ahead of `last` (the batch's hindmost taker), not in the
    batch, ahead-first."""
    prio, at = last.run.priority or 0, last.job.submitted_at
    async with ctx.db.session() as s:
        rows = await s.execute(
            select(t.Job, t.Run)
            .join(t.Run, t.Run.id == t.Job.run_id)
            .where(
                t.Job.project_id == project_id,
                t.Job.status == JobStatus.SUBMITTED.value,
                t.Job.instance_id.is_(None),
                t.Job.stop_requested.is_(False),
                t.Job.id.not_in(sorted(exclude)),
                or_(t.Run.priority > prio, and_(t.Run.priority == prio, t.Job.submitted_at < at)),
            )
            .order_by(t.Run.priority.desc(), t.Job.submitted_at)
        )
        return [(job, run) for job, run in rows.all()]
