"""The long poll of `logs/poll` (`wait`): a follower's request with nothing new to read is held
until there is, instead of the client polling with a backing-off sleep.

What ends the wait: new records in the server's copy of the job's log, the run finishing, the
followed submission finishing with a newer one of the same job there to follow (a retry), or
the wait running out. Every reconciler pass that ends wakes the waiters of this process
(`WAKE`) to look again: log records are appended, and runs and jobs change status, only in
passes. A periodic look is the safety net for what a pass of another server replica did.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from dstack.models.runs import JobStatus, RunStatus
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext

WAKE = "log-followers"  # hub kind: a reconciler pass ended
MAX_WAIT = 30.0
# Looks at least this often without a wake (other replicas), at most this often with many.
SAFETY_LOOK = 0.5
MIN_LOOK = 0.02


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def _settled(ctx: ServerContext, run_id: str, job_id: str) -> bool:
    """Nothing more will come for this follower: its run finished, or its submission did and
    a newer one of the same job exists."""
    async with ctx.db.session() as s:
        status = (await s.execute(select(t.Run.status).where(t.Run.id == run_id))).scalar()
        if status is None or RunStatus(status).is_finished():
            return True
        job = (
            await s.execute(
                select(t.Job.status, t.Job.replica_num, t.Job.job_num, t.Job.submission_num)
                .where(t.Job.id == job_id)
            )
        ).first()
        if job is None:
            return True
        if not JobStatus(job.status).is_finished():
            return False
        newer = select(func.count()).where(
            t.Job.run_id == run_id,
            t.Job.replica_num == job.replica_num,
            t.Job.job_num == job.job_num,
            t.Job.submission_num > job.submission_num,
        )
        return bool((await s.execute(newer)).scalar())


async def wait_for_more(
    ctx: ServerContext, path: Path, offset: int, run_id: str, job_id: str, wait: float
) -> None:
    """Return once the log at `path` has bytes past `offset`, the follower is settled, or
    `wait` seconds have passed."""
    waiter = ctx.hub.waiter(WAKE)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, MAX_WAIT)
    while True:
        if _size(path) > offset or await _settled(ctx, run_id, job_id):
            return
        left = deadline - loop.time()
        if left <= 0:
            return
        await waiter.wait(min(left, SAFETY_LOOK))
        await asyncio.sleep(MIN_LOOK)  # a burst of passes costs one look
