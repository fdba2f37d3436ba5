"""Jobs: the lifecycle of one job submission, from `submitted` to a final status.

| status       | observation                           | next status / effect                  |
|--------------|---------------------------------------|---------------------------------------|
| submitted    | a pool instance fits                  | provisioning; instance reserved       |
| submitted    | only a backend offer fits             | provisioning; pending instance added  |
| submitted    | fits only instances busy right now    | (wait in the queue)                   |
| submitted    | a pool instance fits, but a queued    | (yield: wait in the queue; the job    |
|              | job ahead of it (priority, then age)  | ahead is made due, the reason is an   |
|              | could take it (6)                     | event, once)                          |
| submitted    | nothing fits                          | terminating: no capacity (1)         |
| submitted    | nothing fits, offers tried before     | terminating: no capacity (1), the     |
|              |                                       | tried offers listed                   |
| submitted    | a volume it mounts is gone or failed  | terminating: volume_error             |
| submitted    | fits only where a volume is in use    | (wait in the queue; the reason is an  |
|              | elsewhere, or not created yet         | event, once)                          |
| provisioning | instance not ready yet                | (wait)                                |
| provisioning | its new instance failed (no offers or | submitted, no instance; the offer is  |
|              | the backend's error), under the cap   | remembered as tried (4)               |
| provisioning | the same, MAX_OFFERS_TRIED reached    | terminating: no capacity (1), listed  |
| provisioning | instance terminated (any other way)   | terminating: instance lost (2)        |
| provisioning | instance ready                        | (start: one call to the agent) (3)    |
| running      | instance terminating or terminated    | terminating at once: spot, or the     |
|              | (the job did not ask for it)          | backend lost the machine (instance    |
|              |                                       | reason unreachable):                  |
|              |                                       | interrupted_by_no_capacity, else      |
|              |                                       | instance_unreachable                  |
| running      | agent: still running                  | (copy logs)                           |
| running      | agent: finished                       | terminating, the agent's reason; the  |
|              |                                       | final step in the same pass (7)       |
| running      | agent unreachable                     | disconnected_at; after the grace:     |
|              |                                       | terminating: instance_unreachable     |
|              |                                       | (spot: interrupted_by_no_capacity)    |
| running      | past max_duration + 2 min (backstop)  | terminating: max_duration_exceeded    |
| running      | dev env: no SSH connection for        | terminating:                          |
|              | inactivity_duration (agent's count)   | inactivity_duration_exceeded          |
| running      | a GPU idle for utilization_policy's   | terminating: terminated_due_to_       |
|              | window (utilization.py)               | utilization_policy                    |
| submitted,   | stop requested (by the run)           | terminating: the request's reason     |
| provisioning,|                                       | (running: unless the agent reports    |
| pulling,     |                                       | the job finished; its own reason wins)|
| running      |                                       |                                       |
| terminating  | abort requested, stopping gracefully  | reason aborted_by_user (if it was     |
|              |                                       | terminated_by_user); abort sent       |
| terminating  | agent job running, no stop sent       | stop sent (abort if aborted_by_user)  |
| terminating  | stop sent, past stop_duration + grace | abort sent                            |
| terminating  | agent job finished/unknown, host gone | logs drained, job removed: final      |
| terminating  | the same, a volume still attached     | detach (5); final once none is held   |

(5) `detach`: detaching, `detach_volume`, then `is_volume_detached` on each pass; forced at
once for an abort, else after stop_duration; given up on after DETACH_TIMEOUT (the attachment
stays `detaching` with a message, the job finishes). `after_detach()` turns it into the final
step once no volume is held.

(1) failed_to_start_due_to_no_capacity, (2) waiting_instance_limit_exceeded.
(7) `settled_at_once`: nothing is left to stop (the agent says the job ended), so the pass
copies the rest of the logs, removes the job from the agent and writes both steps, one event
each (a no-capacity job, which holds nothing, ends the same way).
(6) scheduler/precedence.py: only a job ahead that fits the host now and would not fit beside
this one; a job ahead that fits nowhere blocks nobody.
(4) Offers are tried one after another: placement skips every offer the job tried (same
backend, region, instance type and spot), and each failure is an event ("offer ... failed:
...; trying the next one").
(3) The start's outcome decides the step, `after_start()`:

| start outcome                          | next status / effect                         |
|----------------------------------------|----------------------------------------------|
| agent or peer nodes not ready yet      | (wait; started on a later pass)              |
| a volume is still attached elsewhere   | (wait; attached on a later pass)             |
| a volume could not be attached         | terminating: volume_error                    |
| agent unreachable                      | (wait; the instance check looks at the host) |
| this host cannot run the job           | terminating: executor_error                  |
| the agent refuses the job              | terminating: executor_error                  |
| the app's port is taken on the host    | terminating: ports_binding_failed            |
| started                                | running                                      |

Only this reconciler writes a job's status. Others ask: the run reconciler records
`stop_requested` (with `stop_abort` and `stop_reason`: terminated_by_user, aborted_by_user,
done_by_runner, terminated_by_server or scaled_down) and the rows above carry it out.

Final status by termination reason: done_by_runner -> done; aborted_by_user -> aborted;
the user's, server's and policy stops -> terminated; everything else -> failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from dstack.models.instances import InstanceStatus, InstanceTerminationReason
from dstack.models.runs import JobStatus, JobTerminationReason, TriedOffer
from dstack.server.scheduler.placement import Candidate

MAX_DURATION_BACKSTOP = timedelta(minutes=2)
# Offers one job submission tries before it fails for want of capacity (the original's limit).
MAX_OFFERS_TRIED = 25
# Tried offers a failure message names; the rest are counted ("and N more").
TRIED_SHOWN = 5

TERMINATED_REASONS = {
    r.value
    for r in (
        JobTerminationReason.TERMINATED_BY_USER,
        JobTerminationReason.TERMINATED_BY_SERVER,
        JobTerminationReason.SCALED_DOWN,
        JobTerminationReason.INACTIVITY_DURATION_EXCEEDED,
        JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY,
        JobTerminationReason.MAX_DURATION_EXCEEDED,
    )
}


def final_status(reason: str | None) -> str:
    if reason == JobTerminationReason.DONE_BY_RUNNER.value:
        return JobStatus.DONE.value
    if reason == JobTerminationReason.ABORTED_BY_USER.value:
        return JobStatus.ABORTED.value
    if reason in TERMINATED_REASONS:
        return JobStatus.TERMINATED.value
    return JobStatus.FAILED.value


@dataclass(frozen=True)
class JobView:
    """Everything decide() needs, as plain values."""

    status: str
    termination_reason: str | None
    instance_id: str | None
    instance_status: str | None  # pending provisioning idle terminating terminated
    instance_message: str | None
    agent_job: dict[str, Any] | None  # the agent's state of this job, None if unknown
    agent_reachable: bool
    running_at: datetime | None
    disconnected_at: datetime | None
    stop_sent_at: datetime | None
    max_duration: int | None
    stop_duration: int
    unreachable_grace: float
    terminate_grace: float
    spot: bool = False  # the instance is spot: losing it is an interruption, not an error
    placement: Candidate | None = None
    queued: bool = False  # fits only busy instances
    no_capacity_message: str | None = None
    inactivity_duration: int | None = None  # a dev environment's limit, seconds (None: off)
    inactivity_secs: int | None = None  # the value stored on the job row
    # Why the job breaks its utilization_policy (reconcilers/utilization.py), None: it does not.
    utilization_violation: str | None = None
    # A stop the run reconciler asked for (jobs.stop_requested, stop_abort, stop_reason).
    stop_requested: bool = False
    stop_abort: bool = False
    stop_reason: str | None = None
    # Why the instance ended (InstanceTerminationReason value), when it did.
    instance_reason: str | None = None
    # How the backend said the lost host's jobs end (`HostGone.job_reason`); None: interrupted.
    instance_lost_as: str | None = None
    # The offer of the job's instance when it was created for this job (None: a pool instance).
    new_instance_offer: TriedOffer | None = None
    tried_offers: tuple[TriedOffer, ...] = ()
    # A volume the job mounts cannot be (deleted or failed since the run was submitted).
    volume_error: str | None = None
    # The job still holds a volume attachment (terminating: detached before the job ends).
    volumes_held: bool = False
    # Why the placement goes to a queued job ahead of this one (None: nobody is ahead for it).
    outranked: str | None = None


@dataclass
class Decision:
    action: str  # wait yield assign create_instance start copy_logs stop abort finalize
    status: str | None = None  # new status, if it changes
    reason: str | None = None
    message: str | None = None
    exit_status: int | None = None
    values: dict[str, Any] = field(default_factory=dict)
    event: str | None = None  # said to the user besides the status change


def decide(v: JobView, now: datetime) -> Decision:
    if v.stop_requested and v.status in _STOPPABLE and not _ended_on_its_own(v):
        return Decision(
            "wait",
            status=JobStatus.TERMINATING.value,
            reason=v.stop_reason or JobTerminationReason.TERMINATED_BY_SERVER.value,
        )
    if v.status == JobStatus.SUBMITTED.value:
        return _decide_submitted(v)
    if v.status == JobStatus.PROVISIONING.value:
        return _decide_provisioning(v)
    if v.status == JobStatus.RUNNING.value:
        return _decide_running(v, now)
    if v.status == JobStatus.TERMINATING.value:
        return _decide_terminating(v, now)
    return Decision("wait")


def settled_at_once(v: JobView, d: Decision, now: datetime) -> Decision | None:
    """The step after `d`, decided now on the same table, when `d` sends a job to
    `terminating` that has nothing left to stop, wait for or detach: it holds no instance (a
    no-capacity job), or its agent already reports it finished (a job that ran and exited),
    and it holds no volume. The pass then writes both steps, each with its event, instead of
    leaving the second to another pass: such a job ends in the pass that sees it end. None
    when the next step is anything but the final one."""
    leaving = d.status == JobStatus.TERMINATING.value and v.status != JobStatus.TERMINATING.value
    ended = v.agent_reachable and _agent_finished(v.agent_job)
    if not leaving or v.instance_id is not None and not ended or v.volumes_held:
        return None
    reason = d.reason if d.reason else v.termination_reason
    then = decide(replace(v, status=JobStatus.TERMINATING.value, termination_reason=reason), now)
    return then if then.action == "finalize" else None


_STOPPABLE = tuple(
    s.value
    for s in (JobStatus.SUBMITTED, JobStatus.PROVISIONING, JobStatus.PULLING, JobStatus.RUNNING)
)


_INSTANCE_ENDING = (InstanceStatus.TERMINATING.value, InstanceStatus.TERMINATED.value)
_INSTANCE_READY = (InstanceStatus.IDLE.value, InstanceStatus.BUSY.value)
# The agent reports a job's status with the same values as JobStatus.
_AGENT_FINISHED = (JobStatus.DONE.value, JobStatus.FAILED.value, JobStatus.TERMINATED.value)


def _ended_on_its_own(v: JobView) -> bool:
    """A running job the agent reports finished keeps its own outcome (done, or the error)
    over a stop request that arrived at the same time: that is what really happened."""
    running = v.status == JobStatus.RUNNING.value
    return running and v.agent_reachable and _agent_finished(v.agent_job)


def _escalated(v: JobView) -> str | None:
    """`stop -x` after `stop`: a graceful user stop in flight becomes an abort."""
    user_stop = JobTerminationReason.TERMINATED_BY_USER.value
    if v.stop_requested and v.stop_abort and v.termination_reason == user_stop:
        return JobTerminationReason.ABORTED_BY_USER.value
    return None


def _decide_submitted(v: JobView) -> Decision:
    if v.instance_id is not None:
        return Decision("wait", status=JobStatus.PROVISIONING.value)
    if v.volume_error:
        return Decision(
            "wait",
            status=JobStatus.TERMINATING.value,
            reason=JobTerminationReason.VOLUME_ERROR.value,
            message=v.volume_error,
        )
    if v.placement is None and v.queued:
        return Decision("wait")
    if v.placement is None:
        message = v.no_capacity_message
        if v.tried_offers:
            message = f"No offer left to try: {tried_summary(v.tried_offers)}"
        return Decision(
            "wait",
            status=JobStatus.TERMINATING.value,
            reason=JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY.value,
            message=message,
        )
    if v.outranked is not None:
        return Decision("yield", message=v.outranked)
    if v.placement.instance_id is None:
        return Decision("create_instance", status=JobStatus.PROVISIONING.value)
    return Decision("assign", status=JobStatus.PROVISIONING.value)


def _decide_provisioning(v: JobView) -> Decision:
    if v.instance_status in _INSTANCE_ENDING or v.instance_id is None:
        if _offer_failed(v):
            return _next_offer(v)
        return Decision(
            "wait",
            status=JobStatus.TERMINATING.value,
            reason=JobTerminationReason.WAITING_INSTANCE_LIMIT_EXCEEDED.value,
            message=v.instance_message or "the instance was terminated before the job started",
        )
    if v.instance_status in _INSTANCE_READY and v.agent_reachable:
        return Decision("start", status=JobStatus.RUNNING.value)
    return Decision("wait")


def _agent_finished(job: dict[str, Any] | None) -> bool:
    return job is not None and job.get("status") in _AGENT_FINISHED


def _decide_running(v: JobView, now: datetime) -> Decision:
    if v.instance_status in _INSTANCE_ENDING:
        return _interrupted(v)
    if not v.agent_reachable:
        if v.disconnected_at is None:
            return Decision("wait", values={"disconnected_at": now})
        if (now - v.disconnected_at).total_seconds() >= v.unreachable_grace:
            if v.spot:
                return Decision(
                    "wait",
                    status=JobStatus.TERMINATING.value,
                    reason=JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY.value,
                    message="the spot instance stopped answering",
                )
            return Decision(
                "wait",
                status=JobStatus.TERMINATING.value,
                reason=JobTerminationReason.INSTANCE_UNREACHABLE.value,
                message="the instance stopped answering",
            )
        return Decision("wait")
    values: dict[str, Any] = {"disconnected_at": None} if v.disconnected_at else {}
    if v.agent_job is None:
        return Decision(
            "wait",
            status=JobStatus.TERMINATING.value,
            reason=JobTerminationReason.EXECUTOR_ERROR.value,
            message="the agent has no record of the job",
        )
    if _agent_finished(v.agent_job):
        reason = v.agent_job.get("termination_reason") or (
            JobTerminationReason.DONE_BY_RUNNER.value
            if v.agent_job.get("status") == JobStatus.DONE.value
            else JobTerminationReason.EXECUTOR_ERROR.value
        )
        return Decision(
            "copy_logs",
            status=JobStatus.TERMINATING.value,
            reason=reason,
            message=v.agent_job.get("termination_message"),
            exit_status=v.agent_job.get("exit_status"),
            values=values,
        )
    if v.max_duration is not None and v.running_at is not None:
        deadline = v.running_at + timedelta(seconds=v.max_duration) + MAX_DURATION_BACKSTOP
        if now >= deadline:
            return Decision(
                "copy_logs",
                status=JobStatus.TERMINATING.value,
                reason=JobTerminationReason.MAX_DURATION_EXCEEDED.value,
                message=f"the job ran longer than max_duration ({v.max_duration}s)",
                values=values,
            )
    idle = v.agent_job.get("no_connections_secs")
    if isinstance(idle, int) and idle != v.inactivity_secs:
        values["inactivity_secs"] = idle
    limit = v.inactivity_duration
    if limit is not None and isinstance(idle, int) and idle >= limit:
        return Decision(
            "copy_logs",
            status=JobStatus.TERMINATING.value,
            reason=JobTerminationReason.INACTIVITY_DURATION_EXCEEDED.value,
            message=f"no SSH connection for {idle}s (inactivity_duration is {limit}s)",
            values=values,
        )
    if v.utilization_violation:
        return Decision(
            "copy_logs",
            status=JobStatus.TERMINATING.value,
            reason=JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY.value,
            message=v.utilization_violation,
            values=values,
        )
    return Decision("copy_logs", values=values)


# An instance created for the job that ended for one of these reasons never started: its
# offer is remembered and the next one tried.
_OFFER_FAILURES = (InstanceTerminationReason.NO_OFFERS.value, InstanceTerminationReason.ERROR.value)


def _offer_failed(v: JobView) -> bool:
    return v.new_instance_offer is not None and v.instance_reason in _OFFER_FAILURES


def _next_offer(v: JobView) -> Decision:
    """Back to `submitted` without the instance, its offer remembered: placement skips it."""
    assert v.new_instance_offer is not None
    why = v.instance_message or v.instance_reason or "the instance could not be created"
    failed = v.new_instance_offer.model_copy(update={"message": why})
    tried = (*v.tried_offers, failed)
    values = {"tried_offers": json.dumps([o.model_dump(mode="json") for o in tried])}
    if len(tried) >= MAX_OFFERS_TRIED:
        return Decision(
            "wait",
            status=JobStatus.TERMINATING.value,
            reason=JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY.value,
            message=f"Stopped after {len(tried)} offers: {tried_summary(tried)}",
            values=values,
            event=f"offer {failed.describe()} failed: {why}",
        )
    values.update(instance_id=None, used_blocks=0, job_provisioning_data=None)
    return Decision(
        "wait",
        status=JobStatus.SUBMITTED.value,
        values=values,
        event=f"offer {failed.describe()} failed: {why}; trying the next one",
    )


def tried_summary(tried: tuple[TriedOffer, ...]) -> str:
    """`aws r1 t1 (spot, $1/h): no capacity; ... and 3 more`."""
    shown = "; ".join(f"{o.describe()}: {o.message}" for o in tried[:TRIED_SHOWN])
    rest = len(tried) - TRIED_SHOWN
    return shown + (f"; and {rest} more" if rest > 0 else "")


def _interrupted(v: JobView) -> Decision:
    """The job's instance ended under it (a reclaimed spot instance, a lost host): no need to
    wait for the agent's grace, the host is gone."""
    why = v.instance_message or v.instance_reason or "no reason given"
    if v.instance_lost_as:
        return Decision(
            "wait", status=JobStatus.TERMINATING.value, reason=v.instance_lost_as, message=why
        )
    if v.spot or v.instance_reason == InstanceTerminationReason.UNREACHABLE.value:
        # The backend said the machine is gone (a reclaimed spot instance, a Slurm node that
        # failed or a preempted allocation): capacity taken away, so `retry: interruption`.
        what = "spot instance" if v.spot else "instance"
        return Decision(
            "wait",
            status=JobStatus.TERMINATING.value,
            reason=JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY.value,
            message=f"the {what} was terminated under the job ({why})",
        )
    return Decision(
        "wait",
        status=JobStatus.TERMINATING.value,
        reason=JobTerminationReason.INSTANCE_UNREACHABLE.value,
        message=f"the instance was terminated under the job ({why})",
    )


def _decide_terminating(v: JobView, now: datetime) -> Decision:
    d = _terminating(v, now)
    escalated = _escalated(v)
    if escalated is not None:
        d.values["termination_reason"] = escalated
    return d


def _finish(v: JobView, reason: str | None) -> Decision:
    """The job has stopped: final, once its volumes are detached."""
    if v.volumes_held:
        abort = reason == JobTerminationReason.ABORTED_BY_USER.value or v.stop_abort
        return Decision("detach_abort" if abort else "detach", status=final_status(reason))
    return Decision("finalize", status=final_status(reason))


def after_detach(d: Decision, released: bool) -> Decision:
    """The detach step's outcome: the final step once no volume is held, else wait (still
    terminating)."""
    if released:
        return Decision("finalize", status=d.status, values=d.values)
    return Decision("wait", values=d.values)


def _terminating(v: JobView, now: datetime) -> Decision:
    reason = _escalated(v) or v.termination_reason
    gone = v.instance_id is None or v.instance_status in (InstanceStatus.TERMINATED.value, None)
    if gone or v.agent_job is None and v.agent_reachable:
        return _finish(v, reason)
    if not v.agent_reachable:
        since = v.stop_sent_at or v.disconnected_at
        if since is None:
            return Decision("wait", values={"disconnected_at": now})
        limit = v.stop_duration + v.terminate_grace + v.unreachable_grace
        if (now - since).total_seconds() >= limit:
            return _finish(v, reason)
        return Decision("wait")
    if _agent_finished(v.agent_job):
        return _finish(v, reason)
    if reason == JobTerminationReason.ABORTED_BY_USER.value or v.stop_requested and v.stop_abort:
        # Killing is idempotent, so an abort is sent on every pass until the job is gone; this
        # also escalates a graceful stop already in flight.
        return Decision("abort", values={"stop_sent_at": v.stop_sent_at or now})
    if v.stop_sent_at is None:
        return Decision("stop", values={"stop_sent_at": now})
    if (now - v.stop_sent_at).total_seconds() >= v.stop_duration + v.terminate_grace:
        return Decision("abort", values={"stop_sent_at": now})
    return Decision("copy_logs")


# -- the outcome of the start act ------------------------------------------------------------


class StartKind(str, Enum):
    AGENT_NOT_READY = "agent_not_ready"  # no instance row or no agent client yet
    PEERS_NOT_READY = "peers_not_ready"  # multi-node: peers unplaced, or the master not started
    RUNTIME_ERROR = "runtime_error"  # this host cannot run the job (e.g. no Docker for `image`)
    AGENT_UNREACHABLE = "agent_unreachable"
    AGENT_REFUSED = "agent_refused"  # the agent answered the start with an error
    PORTS_BINDING_FAILED = "ports_binding_failed"  # the app's port is taken on the host
    VOLUME_WAIT = "volume_wait"  # a volume is still attached to (or leaving) another instance
    VOLUME_ERROR = "volume_error"  # a volume could not be attached or mounted there
    STARTED = "started"


@dataclass(frozen=True)
class StartOutcome:
    """What the start act found, as a plain value for `after_start()`."""

    kind: StartKind
    message: str | None = None
    state: dict[str, Any] | None = None  # the agent's state of the job, once it answered

    @classmethod
    def answered(cls, state: dict[str, Any]) -> StartOutcome:
        """The agent took the start: a job it could not give its port never started at all
        (it must never be `running`, or the proxy would route to whatever holds the port)."""
        if state.get("termination_reason") == JobTerminationReason.PORTS_BINDING_FAILED.value:
            return cls(StartKind.PORTS_BINDING_FAILED, state.get("termination_message"), state)
        return cls(StartKind.STARTED, state=state)


def after_start(outcome: StartOutcome) -> Decision:
    """The second pure step of a start: the transition the start's outcome calls for."""
    kind = outcome.kind
    if kind is StartKind.STARTED:
        return Decision("start", status=JobStatus.RUNNING.value)
    waits = (
        StartKind.AGENT_NOT_READY,
        StartKind.PEERS_NOT_READY,
        StartKind.AGENT_UNREACHABLE,
        StartKind.VOLUME_WAIT,
    )
    if kind in waits:
        return Decision("wait")  # still provisioning: the next pass starts it
    if kind is StartKind.PORTS_BINDING_FAILED:
        reason = JobTerminationReason.PORTS_BINDING_FAILED
    elif kind is StartKind.VOLUME_ERROR:
        reason = JobTerminationReason.VOLUME_ERROR
    else:  # RUNTIME_ERROR, AGENT_REFUSED
        reason = JobTerminationReason.EXECUTOR_ERROR
    return Decision(
        "start",
        status=JobStatus.TERMINATING.value,
        reason=reason.value,
        message=outcome.message,
    )
