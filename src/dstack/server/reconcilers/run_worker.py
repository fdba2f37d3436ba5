"""Carries out the run decisions of `runs.py`. A run has no side effects outside the database:
it moves its own status and asks its jobs to terminate or be resubmitted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update

from dstack.models.runs import RunSpec
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.reconcilers.base import Reconciler
from dstack.server.reconcilers.runs import (
    FINISHED,
    JOB_REASON_FOR_RUN,
    JobState,
    RunDecision,
    RunView,
    decide,
)
from dstack.server.services import events
from dstack.server.services.runs import new_job_row


def latest_jobs(jobs: list[t.Job]) -> list[t.Job]:
    latest: dict[tuple[int, int], t.Job] = {}
    for j in jobs:
        key = (j.replica_num, j.job_num)
        if key not in latest or j.submission_num > latest[key].submission_num:
            latest[key] = j
    return [latest[k] for k in sorted(latest)]


class RunReconciler(Reconciler):
    kind = "runs"
    table = t.Run
    active_statuses = ("pending", "submitted", "provisioning", "running", "terminating")

    def interval(self, status: str) -> float:
        return self.ctx.settings.resync_seconds if status != "pending" else 1.0

    async def process(self, row_id: str, token: str) -> None:
        now = utcnow()
        async with self.ctx.db.session() as s:
            run = await self.load_row(s, row_id, token)
            if run is None:
                return
            jobs = list((await s.execute(select(t.Job).where(t.Job.run_id == run.id))).scalars())
            latest = latest_jobs(jobs)
            d = decide(self._view(run, latest, jobs), now)
            woke_jobs = await self._apply(s, run, latest, d, token, now)
            await s.commit()
        if woke_jobs:
            self.ctx.hub.wake("jobs")

    def _view(self, run: t.Run, latest: list[t.Job], jobs: list[t.Job]) -> RunView:
        conf = RunSpec.model_validate_json(run.run_spec).configuration
        return RunView(
            status=run.status,
            termination_reason=run.termination_reason,
            stop_requested=run.stop_requested,
            stop_abort=run.stop_abort,
            submitted_at=run.submitted_at,
            resubmission_attempt=run.resubmission_attempt,
            retry=conf.get("retry"),
            latest_jobs=tuple(
                JobState(
                    replica_num=j.replica_num,
                    job_num=j.job_num,
                    status=j.status,
                    termination_reason=j.termination_reason,
                    submitted_at=j.submitted_at,
                    finished_at=j.finished_at,
                    provisioned=j.job_provisioning_data is not None,
                    last_provisioned_at=_last_provisioned(jobs, j),
                )
                for j in latest
            ),
            backoff=self.ctx.settings.retry_backoff,
        )

    async def _apply(
        self, s: Any, run: t.Run, latest: list[t.Job], d: RunDecision, token: str, now: datetime
    ) -> bool:
        values: dict[str, Any] = dict(d.values)
        woke = False
        if d.reason and not d.status and d.reason != run.termination_reason:
            values["termination_reason"] = d.reason
            await self._escalate(s, run, d.reason)
        if d.terminate_jobs_reason:
            pending = await self._terminate_jobs(s, latest, d.terminate_jobs_reason, now)
            woke = True
            if pending:
                values["dirty"] = True  # some jobs were busy; come back at once
        for replica_num, job_num in d.resubmit:
            prev = next(j for j in latest if (j.replica_num, j.job_num) == (replica_num, job_num))
            s.add(
                new_job_row(
                    run,
                    prev.job_spec,
                    replica_num,
                    job_num,
                    prev.job_name,
                    prev.submission_num + 1,
                    now,
                )
            )
            woke = True
        if d.status and d.status != run.status:
            values["status"] = d.status
            if d.reason:
                values["termination_reason"] = d.reason
            if d.status in FINISHED:
                values["finished_at"] = now
            else:
                values["dirty"] = True
            msg = f"Run status changed {run.status.upper()} -> {d.status.upper()}"
            if d.reason:
                msg += f". Termination reason: {d.reason.upper()}"
            events.record(
                s,
                project_id=run.project_id,
                target_type="run",
                target_id=run.id,
                target_name=run.run_name,
                message=msg,
                now=now,
                within_run_id=run.id,
            )
        await self.guarded_update(s, run.id, token, values, now)
        return woke

    async def _escalate(self, s: Any, run: t.Run, reason: str) -> None:
        """Jobs already stopping gracefully take the new reason (an abort kills at once)."""
        await s.execute(
            update(t.Job)
            .where(
                t.Job.run_id == run.id,
                t.Job.status == "terminating",
                t.Job.termination_reason == "terminated_by_user",
            )
            .values(termination_reason=JOB_REASON_FOR_RUN.get(reason, reason), dirty=True)
        )

    async def _terminate_jobs(self, s: Any, latest: list[t.Job], reason: str, now: datetime) -> int:
        """Send unfinished jobs to terminating, skipping any a job worker holds right now;
        returns how many are still to do."""
        left = 0
        for job in latest:
            if job.status in FINISHED or job.status == "terminating":
                continue
            res = await s.execute(
                update(t.Job)
                .where(
                    t.Job.id == job.id,
                    t.Job.status == job.status,
                    or_(t.Job.lock_expires_at.is_(None), t.Job.lock_expires_at < now),
                )
                .values(
                    status="terminating",
                    termination_reason=job.termination_reason or reason,
                    dirty=True,
                    version=t.Job.version + 1,
                )
            )
            if res.rowcount != 1:
                left += 1
                continue
            events.record(
                s,
                project_id=job.project_id,
                target_type="job",
                target_id=job.id,
                target_name=job.job_name,
                message=f"Job status changed {job.status.upper()} -> TERMINATING. "
                f"Termination reason: {reason.upper()}",
                now=now,
                within_run_id=job.run_id,
            )
        return left


def _last_provisioned(jobs: list[t.Job], job: t.Job) -> datetime | None:
    times = [
        j.last_processed_at
        for j in jobs
        if (j.replica_num, j.job_num) == (job.replica_num, job.job_num)
        and j.job_provisioning_data is not None
    ]
    return max(times, default=None)
