"""Runs: a run's status follows its jobs; user stops and retries are carried out here.

| status      | observation                        | next status / effect                  |
|-------------|------------------------------------|---------------------------------------|
| active      | stop requested                     | terminating: stopped/aborted_by_user; |
|             |                                    | unfinished jobs are asked to stop     |
| active      | a job failed, retry covers it      | pending (resubmitted after backoff)   |
| active      | a job failed, retry window passed  | terminating: retry_limit_exceeded     |
| active      | a job failed, no retry             | terminating: job_failed               |
| active      | every job done                     | terminating: all_jobs_done            |
| active      | `stop_criteria: master-done`, job  | terminating: all_jobs_done (workers   |
|             | 0 done                             | are asked to stop)                    |
| active      | jobs in progress                   | running if any job runs, else         |
|             |                                    | provisioning if any provisions,       |
|             |                                    | else submitted                        |
| pending     | backoff elapsed                    | submitted; new job submissions        |
|             |                                    | (event: why the previous one ended)   |
| pending     | scheduled, next start not reached  | (waits; `next_triggered_at`)          |
| pending     | scheduled, next start reached      | submitted; every job submitted anew   |
| any         | scheduled, becomes final (not by   | pending, `next_triggered_at` = the    |
|             | the user's stop)                   | next cron time after now              |
| terminating | unfinished jobs                    | they are asked to stop (again: an     |
|             |                                    | abort escalates a graceful stop)      |
| terminating | every job finished                 | done / failed / terminated            |
| any         | becomes final, replacement pending | the replacement is submitted as a new |
|             |                                    | run of the same name (same commit)    |

The run never writes a job's status: it records a stop request on the job (`stop_requested`,
`stop_abort`, `stop_reason`, the job termination reason below) and the job reconciler carries
it out (jobs.py). A job asked to stop counts as on its way out from then on.

Replacement (`apply --force` against an active run that cannot be updated in place): the API
records the new spec on the run (`replacement_spec`) and asks the run to stop; when the run
reaches a final status, the same transaction inserts the new run. So the one-active-run-per-name
index holds at every instant, the old run keeps its own history (status, reason, cost, events,
logs) and `ps`, `logs NAME` and `event` show the new run as the latest of the name once it
exists. (A new deployment inside the same run would have mixed two runs' retries, reasons and
timings in one row.) `dstack stop` of the name cancels a pending replacement.

Services (see `_decide_service`) also scale, in `active` and in `pending` (scaled to zero):

| observation                                   | effect                                      |
|-----------------------------------------------|---------------------------------------------|
| replicas of an older deployment are live      | rolling: one new replica at a time; an old  |
|                                               | one stops (scaled_down) per new ready one   |
| desired > live, none live or up delay passed  | new replicas (submitted)                    |
| desired < live, down delay passed             | surplus replicas -> terminating: scaled_down |
| no replica live or starting                   | pending (waiting for requests)              |
| a replica is terminating after a failure      | no new replica until it has ended; then the |
|                                               | failure rows above apply (retry or fail)    |

A replica's failure is never replaced by the scaler on the spot: that was a crash loop (a
replica whose port is taken, say, re-added as fast as it failed). It ends, then retry decides.
New replicas take the lowest numbers neither live nor still stopping (a stopping replica may
still hold `port + N` on the process runtime).

Backoff: the wait before a resubmission is `backoff[k - 1]` (capped at the last entry), where k
is the larger of the run's `resubmission_attempt` and the job's failure streak: how many of its
submissions in a row failed within STARTED_FINE_SECONDS of starting. A service keeps running
while one replica fails, so its attempt count is reset; the streak still grows.

desired = min(max(ceil(rps / target), replicas.min), replicas.max) with `scaling`, else
replicas.min; a request held by the proxy for a scaled-to-zero service asks for one at once.
A replica stopped by scaling is not a failure.

Run termination reason -> run status: all_jobs_done -> done; stopped_by_user, aborted_by_user
-> terminated; the rest -> failed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dstack.models.runs import (
    JobStatus,
    JobTerminationReason,
    RetryEvent,
    RunStatus,
    RunTerminationReason,
)

RS, JS = RunStatus, JobStatus
RR, JR = RunTerminationReason, JobTerminationReason
FINISHED = tuple(s.value for s in JobStatus if s.is_finished())
RUN_FINISHED = tuple(s.value for s in RunStatus if s.is_finished())
RUN_FINAL = {
    RR.ALL_JOBS_DONE.value: RS.DONE.value,
    RR.STOPPED_BY_USER.value: RS.TERMINATED.value,
    RR.ABORTED_BY_USER.value: RS.TERMINATED.value,
}
JOB_REASON_FOR_RUN = {
    RR.ALL_JOBS_DONE.value: JR.DONE_BY_RUNNER.value,
    RR.STOPPED_BY_USER.value: JR.TERMINATED_BY_USER.value,
    RR.ABORTED_BY_USER.value: JR.ABORTED_BY_USER.value,
}
# A submission that ran this long before failing started fine: its failure starts a new streak.
STARTED_FINE_SECONDS = 600.0
RETRY_EVENT = {
    JR.FAILED_TO_START_DUE_TO_NO_CAPACITY.value: RetryEvent.NO_CAPACITY.value,
    JR.INTERRUPTED_BY_NO_CAPACITY.value: RetryEvent.INTERRUPTION.value,
}


def retry_event(reason: str | None) -> str | None:
    """The retry event a failed job's reason maps to; None when it never retries."""
    if reason in RETRY_EVENT:
        return RETRY_EVENT[reason]
    from dstack.server.reconcilers.jobs import final_status

    return RetryEvent.ERROR.value if final_status(reason) == JS.FAILED.value else None


def failure_streak(history: Sequence[tuple[str, datetime | None, datetime | None]]) -> int:
    """How many of one job's submissions in a row, newest first, failed soon after starting.

    `history` is (status, started_at, finished_at) per submission, oldest first; started_at is
    when it began running (its submission time if it never ran)."""
    streak = 0
    for status, started, finished in reversed(history):
        if status != JS.FAILED.value:
            break
        if started and finished and (finished - started).total_seconds() >= STARTED_FINE_SECONDS:
            break
        streak += 1
    return streak


@dataclass(frozen=True)
class JobState:
    replica_num: int
    job_num: int
    status: str
    termination_reason: str | None
    submitted_at: datetime
    finished_at: datetime | None
    provisioned: bool
    # When the latest submission of this job that got an instance was last seen; None if no
    # submission ever got one. The retry window counts from it (server.md §3.3).
    last_provisioned_at: datetime | None = None
    deployment_num: int = 0
    ready: bool = False  # a service replica ready to serve (models/readiness.is_ready)
    failed_streak: int = 0  # see failure_streak(): this submission and the failed ones before
    stop_requested: bool = False  # the run asked it to stop; the job reconciler has not yet

    @property
    def stopping(self) -> bool:
        """On its way out: terminating, or asked to stop and not finished yet."""
        if self.status in FINISHED:
            return False
        return self.status == JS.TERMINATING.value or self.stop_requested


@dataclass(frozen=True)
class ServiceView:
    min_replicas: int
    max_replicas: int
    target: float | None  # requests per second per replica; None: a fixed count
    scale_up_delay: float
    scale_down_delay: float
    rps: float  # over the scaling window, from the proxy's stats in the database
    held: int  # requests the proxy is holding for want of a replica
    deployment_num: int


@dataclass(frozen=True)
class RunView:
    status: str
    termination_reason: str | None
    stop_requested: bool
    stop_abort: bool
    submitted_at: datetime
    resubmission_attempt: int
    retry: dict[str, Any] | None  # {"on_events": [...], "duration": seconds}
    latest_jobs: tuple[JobState, ...]
    backoff: tuple[float, ...]
    service: ServiceView | None = None
    replacement: bool = False  # `apply --force` left a spec to submit once this run ends
    schedule: tuple[str, ...] = ()  # `schedule.cron`: the run starts at these times (UTC)
    stop_criteria: str | None = None  # `master-done`: the run is done when job 0 is
    next_triggered_at: datetime | None = None  # waiting for this start (pending only)


@dataclass
class RunDecision:
    status: str | None = None
    reason: str | None = None
    terminate_jobs_reason: str | None = None  # unfinished jobs go terminating with this
    resubmit: list[tuple[int, int]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    scale_up: list[int] = field(default_factory=list)  # new service replicas (replica_num)
    scale_down: list[int] = field(default_factory=list)  # replicas to stop: scaled_down
    waited: float = 0.0  # the backoff a resubmission waited, for its event
    submit_replacement: bool = False  # the run ends now: submit its pending replacement
    submit_new: bool = False  # a schedule fired on a run without jobs: submit them all


def decide(v: RunView, now: datetime) -> RunDecision:
    d = _decide(v, now)
    if v.replacement and d.status in RUN_FINISHED:
        d.submit_replacement = True
    elif v.schedule and d.status in RUN_FINISHED and not _stopped_by_user(v, d):
        _rearm(v, d, now)
    return d


def _stopped_by_user(v: RunView, d: RunDecision) -> bool:
    reason = d.reason or v.termination_reason
    by_user = (RR.STOPPED_BY_USER.value, RR.ABORTED_BY_USER.value)
    return v.stop_requested or reason in by_user


def _rearm(v: RunView, d: RunDecision, now: datetime) -> None:
    """A scheduled run that ended on its own waits for its next start instead of ending."""
    from dstack.models.cron import next_fire

    d.status, d.reason = RS.PENDING.value, None
    d.values.update(
        next_triggered_at=next_fire(list(v.schedule), now),
        termination_reason=None,
        resubmission_attempt=0,
    )


def _decide_scheduled(v: RunView, now: datetime) -> RunDecision:
    """Pending until the next start; then every job is submitted (anew, or for the first
    time when the run has none yet)."""
    due = v.next_triggered_at
    if due is not None and now < due:
        return RunDecision()
    return RunDecision(
        status=RS.SUBMITTED.value,
        resubmit=[(j.replica_num, j.job_num) for j in v.latest_jobs],
        submit_new=not v.latest_jobs,
        values={"next_triggered_at": None, "resubmission_attempt": 0},
    )


def _decide(v: RunView, now: datetime) -> RunDecision:
    if v.status == RS.TERMINATING.value:
        return _decide_terminating(v)
    if v.stop_requested:
        reason = RR.ABORTED_BY_USER if v.stop_abort else RR.STOPPED_BY_USER
        return _terminate(v, reason.value)
    if v.status == RS.PENDING.value and v.next_triggered_at is not None:
        return _decide_scheduled(v, now)
    if v.status == RS.PENDING.value:
        return _decide_pending(v, now)
    return _decide_active(v, now)


def _terminate(v: RunView, reason: str) -> RunDecision:
    unfinished = [j for j in v.latest_jobs if j.status not in FINISHED]
    job_reason = JOB_REASON_FOR_RUN.get(reason, JR.TERMINATED_BY_SERVER.value)
    if not unfinished:
        return RunDecision(status=RUN_FINAL.get(reason, RS.FAILED.value), reason=reason)
    return RunDecision(
        status=RS.TERMINATING.value, reason=reason, terminate_jobs_reason=job_reason
    )


def _decide_terminating(v: RunView) -> RunDecision:
    reason = v.termination_reason or RR.SERVER_ERROR.value
    if v.stop_abort and reason == RR.STOPPED_BY_USER.value:
        # `stop -x` after `stop`: escalate the graceful stop in flight to an abort.
        aborted = RR.ABORTED_BY_USER.value
        return RunDecision(reason=aborted, terminate_jobs_reason=JOB_REASON_FOR_RUN[aborted])
    if all(j.status in FINISHED for j in v.latest_jobs):
        return RunDecision(status=RUN_FINAL.get(reason, RS.FAILED.value))
    return RunDecision(
        terminate_jobs_reason=JOB_REASON_FOR_RUN.get(reason, JR.TERMINATED_BY_SERVER.value)
    )


def _backoff(v: RunView, failed: list[JobState]) -> float:
    attempts = max([v.resubmission_attempt, *(j.failed_streak for j in failed)])
    i = min(max(attempts - 1, 0), len(v.backoff) - 1)
    return v.backoff[i]


def _failed(v: RunView) -> list[JobState]:
    """Jobs whose end calls for retry or failure; a replica scaled down is neither."""
    return [
        j
        for j in v.latest_jobs
        if j.status in FINISHED
        and j.status != JS.DONE.value
        and j.termination_reason != JR.SCALED_DOWN.value
    ]


def _decide_pending(v: RunView, now: datetime) -> RunDecision:
    """Backoff counts from the last failure, a time that does not move on every pass."""
    if v.service is not None:
        failed = _failed(v)
        if not failed:
            return _decide_service(v, v.service, now)
        if not v.resubmission_attempt:
            # A replica failed while the service waited for requests: retry has not judged it.
            return _decide_active(v, now)
    else:
        failed = [j for j in v.latest_jobs if j.status in FINISHED]
    since = max((j.finished_at or j.submitted_at for j in failed), default=v.submitted_at)
    wait = _backoff(v, failed) if v.resubmission_attempt else 0.0
    if (now - since).total_seconds() < wait:
        return RunDecision()
    resubmit = [(j.replica_num, j.job_num) for j in failed]
    return RunDecision(status=RS.SUBMITTED.value, resubmit=resubmit, waited=wait)


def _retry_allowed(v: RunView, job: JobState, now: datetime) -> str:
    """'retry', 'exceeded' or 'no'."""
    event = retry_event(job.termination_reason)
    if v.retry is None or event is None or event not in v.retry.get("on_events", []):
        return "no"
    if job.provisioned:
        start = job.finished_at or now
    elif job.last_provisioned_at is not None:
        start = job.last_provisioned_at
    else:
        start = v.submitted_at
    if (now - start).total_seconds() > float(v.retry.get("duration") or 3600):
        return "exceeded"
    return "retry"


def _decide_active(v: RunView, now: datetime) -> RunDecision:
    jobs = v.latest_jobs
    failed = _failed(v)
    for job in failed:
        verdict = _retry_allowed(v, job, now)
        if verdict == "no":
            return _terminate(v, RR.JOB_FAILED.value)
        if verdict == "exceeded":
            return _terminate(v, RR.RETRY_LIMIT_EXCEEDED.value)
    if failed:
        return RunDecision(
            status=RS.PENDING.value, values={"resubmission_attempt": v.resubmission_attempt + 1}
        )
    if jobs and all(j.status == JS.DONE.value for j in jobs):
        return _terminate(v, RR.ALL_JOBS_DONE.value)
    if v.stop_criteria == "master-done" and _master_done(jobs):
        return _terminate(v, RR.ALL_JOBS_DONE.value)
    if v.service is not None:
        return _decide_service(v, v.service, now)
    # A stopping or finished job does not move the run back to `submitted`: only jobs still
    # on their way up decide the status.
    moving = [j for j in jobs if not j.stopping and j.status not in FINISHED]
    if not moving:
        return RunDecision()
    status = _status_of(moving)
    if status == v.status:
        return RunDecision()
    return RunDecision(status=status, values=_started_values(status))


def _master_done(jobs: Sequence[JobState]) -> bool:
    """Job 0 of every replica finished well (the workers are then stopped)."""
    masters = [j for j in jobs if j.job_num == 0]
    return bool(masters) and all(j.status == JS.DONE.value for j in masters)


def _status_of(jobs: Sequence[JobState]) -> str:
    """The run status its jobs on their way up imply."""
    if any(j.status == JS.RUNNING.value for j in jobs):
        return RS.RUNNING.value
    if any(j.status in (JS.PROVISIONING.value, JS.PULLING.value) for j in jobs):
        return RS.PROVISIONING.value
    return RS.SUBMITTED.value


def _started_values(status: str) -> dict[str, Any]:
    """A run that got capacity starts its retry count over."""
    started = status in (RS.PROVISIONING.value, RS.RUNNING.value)
    return {"resubmission_attempt": 0} if started else {}


def desired_replicas(sv: ServiceView) -> int:
    want = sv.min_replicas if sv.target is None else math.ceil(sv.rps / sv.target - 1e-9)
    if sv.held > 0:
        want = max(want, 1)
    return max(sv.min_replicas, min(sv.max_replicas, want))


def _last_scaled(v: RunView, live: list[JobState]) -> datetime:
    """When the replica set last changed: a replica submitted or one that ended."""
    times = [j.submitted_at for j in live]
    times += [j.finished_at for j in v.latest_jobs if j.finished_at is not None]
    return max(times, default=v.submitted_at)


def _free_nums(v: RunView, live: list[JobState], n: int) -> list[int]:
    """The lowest replica numbers neither live nor still stopping: a replica that stops may
    hold its port (`port + N` on the process runtime) until it has exited."""
    taken = {j.replica_num for j in live}
    taken |= {j.replica_num for j in v.latest_jobs if j.stopping}
    out, num = [], 0
    while len(out) < n:
        if num not in taken:
            out.append(num)
        num += 1
    return out


def _surplus(live: list[JobState], n: int) -> list[int]:
    """Which replicas to stop first: not ready, then the newest numbers."""
    order = sorted(live, key=lambda j: (j.ready, j.status == JS.RUNNING.value, -j.replica_num))
    return [j.replica_num for j in order[:n]]


def _failing(v: RunView) -> bool:
    """A job on its way out after a failure: its end decides retry or failure, so nothing may
    take its place before (a replacement would hide the failure and loop)."""
    from dstack.server.reconcilers.jobs import final_status

    return any(
        j.status == JS.TERMINATING.value and final_status(j.termination_reason) == JS.FAILED.value
        for j in v.latest_jobs
    )


def is_live_replica(job_num: int, status: str, stop_requested: bool = False) -> bool:
    """A replica counts (for scaling, rolling, groups) by its job 0 while not on its way out:
    neither finished, terminating, nor asked to stop. Whether it is also ready to serve is
    `models/readiness.is_ready`, the proxy's own predicate."""
    if job_num != 0 or status in FINISHED:
        return False
    return status != JS.TERMINATING.value and not stop_requested


def _stop_unacknowledged(j: Any, scale_down: Any) -> bool:
    """A replica asked to stop (now or earlier) whose job has not turned `terminating` yet."""
    if j.job_num != 0 or j.status in FINISHED or j.status == JS.TERMINATING.value:
        return False
    return bool(j.stop_requested) or j.replica_num in scale_down


def _decide_service(v: RunView, sv: ServiceView, now: datetime) -> RunDecision:
    if _failing(v):
        return RunDecision()
    live = [j for j in v.latest_jobs if is_live_replica(j.job_num, j.status, j.stop_requested)]
    desired = desired_replicas(sv)
    d = RunDecision()
    old = [j for j in live if j.deployment_num < sv.deployment_num]
    if old:
        # Rolling update: surge one new replica at a time; retire an old one for each new one
        # that is ready, so the ready count never drops below what serves now.
        new = [j for j in live if j.deployment_num >= sv.deployment_num]
        ready_new = [j for j in new if j.ready]
        goal = max(desired, 1) if desired else 0
        if len(new) < goal and len(ready_new) == len(new):
            d.scale_up = _free_nums(v, live, 1)
        stop = min(len(old), max(0, len(ready_new) + len(old) - goal)) if goal else len(old)
        d.scale_down = _surplus(old, stop)
    else:
        since = (now - _last_scaled(v, live)).total_seconds()
        fixed = sv.target is None
        if desired > len(live) and (not live or fixed or since >= sv.scale_up_delay):
            d.scale_up = _free_nums(v, live, desired - len(live))
        elif desired < len(live) and (fixed or since >= sv.scale_down_delay):
            d.scale_down = _surplus(live, len(live) - desired)
    staying = [j for j in live if j.replica_num not in d.scale_down]
    if d.scale_up:
        running = any(j.status == JS.RUNNING.value for j in staying)
        status = RS.RUNNING.value if running else RS.SUBMITTED.value
    elif not staying:
        # Scaled to zero: waiting for requests, once every replica asked to stop has left
        # (until its job turns `terminating`, the run keeps the status it had).
        leaving = any(_stop_unacknowledged(j, d.scale_down) for j in v.latest_jobs)
        status = v.status if leaving else RS.PENDING.value
    else:
        status = _status_of(staying)
    if status != v.status:
        d.status = status
        d.values = _started_values(status)
    return d
