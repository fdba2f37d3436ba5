"""Carries out the run decisions of `runs.py`. A run has no side effects outside the database:
it moves its own status, asks its jobs to stop (a request on the job row that the job
reconciler turns into a transition: parents request, children transition), submits new job
rows (resubmissions, new replicas) and, when it ends, the run that replaces it."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import and_, not_, select, update

from dstack.models.configurations import parse_configuration
from dstack.models.readiness import ReplicaFacts, is_ready
from dstack.models.runs import JobSpec, JobStatus, JobTerminationReason, RunSpec, RunStatus
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.reconcilers.base import Reconciler
from dstack.server.reconcilers.runs import (
    FINISHED,
    RUN_FINISHED,
    JobState,
    RunDecision,
    RunView,
    ServiceView,
    decide,
    failure_streak,
    is_live_replica,
)
from dstack.server.reconcilers.shared_writes import SharedWrites
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.jobspecs import build_job_specs, replica_spec
from dstack.server.services.run_apply import new_job_row, submit_replacement
from dstack.server.services.service_stats import request_rate

# A service's spec as stored (`RunSpec.model_dump_json`: compact JSON). Text elsewhere in a
# spec that reads the same (a nested mapping of that type) only makes the run resynced.
_SERVICE_MARK = '"type":"service"'
_LAZY_STATUSES = tuple(s.value for s in RunStatus if not s.is_finished() and s != RunStatus.PENDING)
_PREFETCHED = "runs.prefetched"  # session.info key: (runs by id, jobs by run id)


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
    active_statuses = tuple(s.value for s in RunStatus if not s.is_finished())

    def interval(self, status: str) -> float:
        return self.ctx.settings.resync_seconds if status != RunStatus.PENDING.value else 1.0

    def lazy(self) -> Any:
        """Runs that are not services, past `pending`: their decision reads only their jobs
        (each job status change marks its run `dirty` in the same write: job_facts.
        note_status) and their own stop or replacement request (written with `dirty`), never
        the clock. A service's scaling reads request rates and readiness, a pending run its
        backoff or schedule: those keep the status's interval."""
        return and_(
            t.Run.status.in_(_LAZY_STATUSES),
            not_(t.Run.run_spec.contains(_SERVICE_MARK, autoescape=True)),
        )

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
        # Nothing isolated: a pass that loses its lease may have written its jobs' stop
        # requests or new rows already, so the shared transaction is rolled back whole.
        self.shared = SharedWrites(ctx.db, isolated=(), prefetch=self._prefetch)

    async def _prefetch(self, s: Any, run_ids: list[str]) -> None:
        """The runs of the turn's passes and all their jobs, in two queries (was two a run)."""
        q = select(t.Run).where(t.Run.id.in_(run_ids))
        runs = await s.execute(q.execution_options(populate_existing=True))
        jobs: dict[str, list[t.Job]] = {rid: [] for rid in run_ids}
        for job in (await s.execute(select(t.Job).where(t.Job.run_id.in_(run_ids)))).scalars():
            jobs[job.run_id].append(job)
        s.info[_PREFETCHED] = ({r.id: r for r in runs.scalars()}, jobs)

    async def process(self, row_id: str, token: str) -> None:
        """Load, decide and apply in one transaction, shared with the passes of the same
        claim (shared_writes.py): one commit for them all."""
        now = utcnow()
        woke: set[str] = set()

        async def work(s: Any) -> None:
            runs, jobs_of = s.info[_PREFETCHED]
            run = runs.get(row_id)
            if run is None or run.lock_token != token:
                return
            jobs = jobs_of[run.id]
            latest = latest_jobs(jobs)
            service = await self._service_view(s, run, now)
            d = decide(self._view(run, latest, jobs, service, now), now)
            woke_jobs, replaced = await self._apply(s, run, latest, d, token, now)
            if woke_jobs or replaced:
                woke.add("jobs")
            if replaced:
                woke.add("runs")

        await self.shared.run(work, key=row_id)
        if woke:
            self.ctx.hub.wake(*sorted(woke))

    async def _service_view(self, s: Any, run: t.Run, now: datetime) -> ServiceView | None:
        conf = RunSpec.model_validate_json(run.run_spec).configuration
        if conf.get("type") != "service":
            return None
        replicas = conf.get("replicas") or {}
        scaling = conf.get("scaling") or None
        if conf.get("groups"):  # fixed counts (services/runs.py refuses ranges): their sum
            total = sum(int((g.get("replicas") or {}).get("min") or 0) for g in conf["groups"])
            replicas, scaling = {"min": total, "max": total}, None
        window = int((scaling or {}).get("window") or 60)
        rps, held = await request_rate(s, run.id, window, now)
        return ServiceView(
            min_replicas=int(replicas.get("min") or 0),
            max_replicas=int(replicas.get("max") or replicas.get("min") or 1),
            target=float(scaling["target"]) if scaling else None,
            scale_up_delay=float(scaling.get("scale_up_delay", 300)) if scaling else 0.0,
            scale_down_delay=float(scaling.get("scale_down_delay", 600)) if scaling else 0.0,
            rps=rps,
            held=held,
            deployment_num=run.deployment_num,
        )

    def _view(
        self,
        run: t.Run,
        latest: list[t.Job],
        jobs: list[t.Job],
        service: ServiceView | None,
        now: datetime,
    ) -> RunView:
        conf = RunSpec.model_validate_json(run.run_spec).configuration
        cooldown = self.ctx.settings.service_unhealthy_cooldown
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
                    deployment_num=j.deployment_num,
                    ready=is_ready(_replica_facts(j), now, cooldown),
                    failed_streak=_failed_streak(jobs, j),
                    stop_requested=j.stop_requested,
                )
                for j in latest
            ),
            backoff=self.ctx.settings.retry_backoff,
            service=service,
            replacement=run.replacement_spec is not None,
            schedule=tuple((conf.get("schedule") or {}).get("cron") or ()),
            next_triggered_at=run.next_triggered_at,
            stop_criteria=conf.get("stop_criteria"),
        )

    async def _apply(
        self, s: Any, run: t.Run, latest: list[t.Job], d: RunDecision, token: str, now: datetime
    ) -> tuple[bool, bool]:
        """Write the decision; returns (jobs to wake, a replacement run was submitted)."""
        values: dict[str, Any] = dict(d.values)
        woke = False
        if d.reason and not d.status and d.reason != run.termination_reason:
            values["termination_reason"] = d.reason
        if d.terminate_jobs_reason:
            busy = await self._request_stop(s, latest, d.terminate_jobs_reason, now)
            woke = True
            if busy:
                values["dirty"] = True  # a job worker holds one: wake it again after its pass
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
            events.run_event(s, run, _resubmit_message(prev, d.waited), now)
            woke = True
        if d.submit_new:
            _submit_all(s, run, now)
            woke = True
        if d.scale_up or d.scale_down:
            await self._scale(s, run, latest, d, now)
            woke = True
        if d.status and d.status != run.status:
            values["status"] = d.status
            if d.reason:
                values["termination_reason"] = d.reason
            if d.status in RUN_FINISHED:
                values["finished_at"] = now
            else:
                values["dirty"] = True
            msg = f"Run status changed {run.status.upper()} -> {d.status.upper()}"
            if d.reason:
                msg += f". Termination reason: {d.reason.upper()}"
            if values.get("next_triggered_at") is not None:
                msg += f". Waiting for the schedule: next start {values['next_triggered_at']}"
            events.run_event(s, run, msg, now)
        await self.guarded_update(s, run.id, token, values, now)
        replaced = False
        if values.get("status") in RUN_FINISHED:
            # Re-read inside this transaction, after the final write: an `apply --force` that
            # committed after our snapshot is seen here, and one that comes later finds the run
            # finished and submits on its own (services/runs.py). `d.submit_replacement` says
            # the same for a request the snapshot already held.
            replaced = await submit_replacement(s, run, now) is not None
        return woke, replaced

    async def _scale(
        self, s: Any, run: t.Run, latest: list[t.Job], d: RunDecision, now: datetime
    ) -> None:
        """New replicas get the run's current spec and deployment; surplus ones stop."""
        spec = RunSpec.model_validate_json(run.run_spec)
        conf = parse_configuration(spec.configuration)
        last_sub = {j.replica_num: j.submission_num for j in latest if j.job_num == 0}
        live = _live_groups(latest, run.deployment_num)
        for num in d.scale_up:
            js = replica_spec(run.run_name, conf, spec.repo_code_hash, num, live)
            live[js.replica_group] += 1
            s.add(
                new_job_row(
                    run,
                    js.model_dump_json(),
                    num,
                    0,
                    js.job_name,
                    last_sub.get(num, -1) + 1,
                    now,
                )
            )
        if d.scale_up:
            events.run_event(s, run, f"Scaling up: new replicas {d.scale_up}", now)
        if d.scale_down:
            stopping = [j for j in latest if j.job_num == 0 and j.replica_num in d.scale_down]
            await self._request_stop(s, stopping, JobTerminationReason.SCALED_DOWN.value, now)
            # (a replica asked to stop no longer counts as live, so no pass asks again; a job
            # worker mid-pass sees the request on its next poll, within running_job_poll)
            events.run_event(s, run, f"Scaling down: stopping replicas {d.scale_down}", now)

    async def _request_stop(self, s: Any, jobs: list[t.Job], reason: str, now: datetime) -> int:
        """Ask unfinished jobs to stop with `reason` (the job reconciler moves them to
        terminating, jobs.py); an abort also reaches jobs already stopping gracefully. A request
        already there is not written again. Returns how many asked jobs a job worker holds right
        now: it may have read the row before the request, so the run comes back to wake it."""
        abort = reason == JobTerminationReason.ABORTED_BY_USER.value
        busy = 0
        for job in jobs:
            if job.status in FINISHED:
                continue
            terminating = job.status == JobStatus.TERMINATING.value
            asked = job.stop_requested and (job.stop_abort or not abort)
            if not asked and (abort or not terminating):
                await s.execute(
                    update(t.Job)
                    .where(t.Job.id == job.id)
                    .values(
                        stop_requested=True,
                        stop_abort=t.Job.stop_abort | abort,
                        stop_reason=reason
                        if abort or not job.stop_requested
                        else t.Job.stop_reason,
                        dirty=True,
                    )
                )
                asked = True
            leased = job.lock_expires_at is not None and job.lock_expires_at > now
            if asked and not terminating and leased:
                busy += 1
        return busy


def _submit_all(s: Any, run: t.Run, now: datetime) -> None:
    """A scheduled run's first start: its jobs, built from its spec as apply would have."""
    spec = RunSpec.model_validate_json(run.run_spec)
    conf = parse_configuration(spec.configuration)
    for js in build_job_specs(run.run_name, conf, spec.repo_code_hash):
        s.add(
            new_job_row(run, js.model_dump_json(), js.replica_num, js.job_num, js.job_name, 0, now)
        )
    events.run_event(s, run, "Schedule fired: the run's jobs are submitted", now)


def _replica_facts(job: t.Job) -> ReplicaFacts:
    return ReplicaFacts(
        job_num=job.job_num,
        status=job.status,
        has_probes=bool(JobSpec.model_validate_json(job.job_spec).probes),
        probes_passed=job.ready,
        unhealthy_at=job.unhealthy_at,
        stop_requested=job.stop_requested,
    )


def _failed_streak(jobs: list[t.Job], job: t.Job) -> int:
    """See runs.failure_streak: the submissions of this job, oldest first."""
    subs = sorted(
        (j for j in jobs if (j.replica_num, j.job_num) == (job.replica_num, job.job_num)),
        key=lambda j: j.submission_num,
    )
    return failure_streak([(j.status, j.running_at or j.submitted_at, j.finished_at) for j in subs])


def _resubmit_message(prev: t.Job, waited: float) -> str:
    """Why a job is submitted again: how its previous submission ended, and the wait."""
    what = f"replica {prev.replica_num}" + (f" job {prev.job_num}" if prev.job_num else "")
    ended = (prev.termination_reason or prev.status).upper()
    if prev.termination_reason_message:
        ended += f" ({prev.termination_reason_message.splitlines()[0]})"
    msg = f"Resubmitting {what}: submission {prev.submission_num} ended with {ended}"
    return msg + (f"; retried after a {waited:g}s back-off" if waited else "")


def _last_provisioned(jobs: list[t.Job], job: t.Job) -> datetime | None:
    times = [
        j.last_processed_at
        for j in jobs
        if (j.replica_num, j.job_num) == (job.replica_num, job.job_num)
        and j.job_provisioning_data is not None
    ]
    return max(times, default=None)


def _live_groups(latest: list[t.Job], deployment_num: int) -> Counter[str]:
    """Replicas of the current deployment per replica group, stopping ones left out: what a
    new replica's group is chosen against (jobspecs.replica_spec)."""
    out: Counter[str] = Counter()
    for j in latest:
        live = is_live_replica(j.job_num, j.status, j.stop_requested)
        if live and j.deployment_num >= deployment_num:
            out[JobSpec.model_validate_json(j.job_spec).replica_group] += 1
    return out
