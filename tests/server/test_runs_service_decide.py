"""The service rows of `reconcilers/runs.py`: autoscaling, scale to zero, rolling updates."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from dstack.server.reconcilers.runs import (
    JobState,
    RunDecision,
    RunView,
    ServiceView,
    decide,
    desired_replicas,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def rep(
    num: int,
    status: str = "running",
    *,
    ready: bool = True,
    dep: int = 0,
    submitted: float = 1000,
    finished: float | None = None,
    reason: str | None = None,
) -> JobState:
    return JobState(
        replica_num=num,
        job_num=0,
        status=status,
        termination_reason=reason,
        submitted_at=ago(submitted),
        finished_at=ago(finished) if finished is not None else None,
        provisioned=True,
        deployment_num=dep,
        ready=ready and status == "running",
    )


SCALING = ServiceView(
    min_replicas=0,
    max_replicas=3,
    target=2.0,
    scale_up_delay=10,
    scale_down_delay=60,
    rps=0.0,
    held=0,
    deployment_num=0,
)


def view(*jobs: JobState, status: str = "running", **sv) -> RunView:
    return RunView(
        status=status,
        termination_reason=None,
        stop_requested=False,
        stop_abort=False,
        submitted_at=ago(2000),
        resubmission_attempt=0,
        retry=None,
        latest_jobs=tuple(jobs),
        backoff=(1.0,),
        service=replace(SCALING, **sv),
    )


@pytest.mark.parametrize(
    ("rps", "held", "lo", "hi", "want"),
    [
        (0, 0, 0, 3, 0),
        (0.1, 0, 0, 3, 1),
        (4.0, 0, 0, 3, 2),
        (4.1, 0, 0, 3, 3),
        (100, 0, 0, 3, 3),
        (0, 1, 0, 3, 1),
        (0, 0, 1, 3, 1),
    ],
)
def test_desired(rps, held, lo, hi, want):
    sv = replace(SCALING, rps=rps, held=held, min_replicas=lo, max_replicas=hi)
    assert desired_replicas(sv) == want


def test_load_above_target_adds_a_replica_after_the_up_delay():
    d = decide(view(rep(0), rps=3.0), NOW)
    assert d.scale_up == [1]
    d = decide(view(rep(0, submitted=5), rps=3.0), NOW)  # changed 5 s ago, delay 10 s
    assert d.scale_up == []


def test_idle_scales_down_after_the_down_delay_and_to_zero():
    d = decide(view(rep(0), rep(1, submitted=30), rps=0.5), NOW)
    assert d.scale_down == []  # last change 30 s ago < 60 s
    d = decide(view(rep(0), rep(1), rps=0.5), NOW)
    assert d.scale_down == [1]
    d = decide(view(rep(0), rps=0.0), NOW)
    # The last replica is asked to stop; the run stays `running` until its job has left.
    assert d.scale_down == [0] and d.status is None
    asked = replace(rep(0), stop_requested=True)
    assert decide(view(asked, rps=0.0), NOW).status is None
    leaving = rep(0, "terminating", reason="scaled_down")
    assert decide(view(leaving, rps=0.0), NOW).status == "pending"


def test_scaled_to_zero_waits_then_wakes_at_once_on_a_held_request():
    zero = rep(0, "terminated", reason="scaled_down", finished=1)
    d = decide(view(zero, status="pending"), NOW)
    assert d.scale_up == [] and d.status is None
    d = decide(view(zero, status="pending", held=1), NOW)
    assert d.scale_up == [0] and d.status == "submitted"


def test_a_scaled_down_replica_is_not_a_failure():
    d = decide(view(rep(0), rep(1, "terminated", reason="scaled_down", finished=5)), NOW)
    assert d.status is None and d.reason is None


def test_fixed_replicas_are_kept_without_delays():
    d = decide(view(rep(0, submitted=1), target=None, min_replicas=2, max_replicas=2), NOW)
    assert d.scale_up == [1]


def test_rolling_update_surges_one_and_retires_old_only_when_new_is_ready():
    fixed = dict(target=None, min_replicas=2, max_replicas=2, deployment_num=1)
    d = decide(view(rep(0), rep(1), **fixed), NOW)
    assert d.scale_up == [2] and d.scale_down == []
    d = decide(view(rep(0), rep(1), rep(2, "provisioning", dep=1), **fixed), NOW)
    assert d.scale_up == [] and d.scale_down == []  # the new one is not ready yet
    d = decide(view(rep(0), rep(1), rep(2, dep=1), **fixed), NOW)
    assert d.scale_up == [3] and len(d.scale_down) == 1
    d = decide(view(rep(0), rep(2, dep=1), rep(3, dep=1), **fixed), NOW)
    assert d.scale_down == [0] and d.scale_up == []


# -- a replica that fails: never replaced on the spot ------------------------------------

PORT = "ports_binding_failed"
RETRY = {"on_events": ["error"], "duration": 3600}


def test_a_replica_terminating_after_a_failure_is_not_replaced_by_the_scaler():
    fixed = dict(target=None, min_replicas=2, max_replicas=2)
    d = decide(view(rep(0), rep(1, "terminating", reason=PORT), **fixed), NOW)
    assert d.scale_up == [] and d.scale_down == [] and d.status is None
    # Alone, too: the run waits for the end rather than going back to `pending`.
    d = decide(view(rep(0, "terminating", reason=PORT), **fixed), NOW)
    assert d == RunDecision()
    # A replica stopped by scaling is not a failure: the scaler may still move.
    d = decide(view(rep(0), rep(1, "terminating", reason="scaled_down"), **fixed), NOW)
    assert d.scale_up == [2]  # 1 still stops (and may hold its port)


def test_a_failed_replica_ends_the_run_without_retry():
    fixed = dict(target=None, min_replicas=2, max_replicas=2)
    d = decide(view(rep(0), rep(1, "failed", reason=PORT, finished=1), **fixed), NOW)
    assert d.status == "terminating" and d.reason == "job_failed" and d.scale_up == []


def test_a_failed_replica_with_retry_backs_off_by_its_failure_streak():
    fixed = dict(target=None, min_replicas=2, max_replicas=2)
    failed = replace(rep(1, "failed", reason=PORT, finished=3), failed_streak=3)
    v = replace(view(rep(0), failed, **fixed), retry=RETRY, backoff=(1.0, 2.0, 4.0, 8.0))
    d = decide(v, NOW)
    assert d.status == "pending" and d.values == {"resubmission_attempt": 1}
    # The service keeps running, so the attempt count was reset; the streak (3) still sets
    # the wait: 4 s since the failure, not 1 s.
    pending = replace(v, status="pending", resubmission_attempt=1)
    assert decide(pending, NOW) == RunDecision()
    later = replace(pending, latest_jobs=(rep(0), replace(failed, finished_at=ago(4))))
    d = decide(later, NOW)
    assert d.status == "submitted" and d.resubmit == [(1, 0)] and d.waited == 4.0


def test_a_replica_failing_while_scaled_to_zero_is_judged_by_retry_first():
    failed = rep(0, "failed", reason=PORT, finished=1)
    d = decide(view(failed, status="pending"), NOW)
    assert d.status == "failed" and d.reason == "job_failed"  # nothing else to stop
    v = replace(view(failed, status="pending"), retry=RETRY)
    d = decide(v, NOW)
    assert d.resubmit == [] and d.values == {"resubmission_attempt": 1}


def test_a_replica_number_still_stopping_is_not_reused():
    # Scaled to zero, then a request arrives while replica 0 still shuts down (it may still
    # hold its port): the new replica takes the next number.
    stopping = rep(0, "terminating", reason="scaled_down")
    d = decide(view(stopping, status="pending", held=1), NOW)
    assert d.scale_up == [1]


def test_a_replica_asked_to_stop_is_not_live_before_the_job_reconciler_acts():
    """Between the run's stop request (scaled_down) and the job going `terminating`, the scaler
    must neither pick another replica to stop nor reuse the number (it still holds its port)."""
    fixed = dict(target=None, min_replicas=2, max_replicas=2)
    asked = replace(rep(2), stop_requested=True)
    d = decide(view(rep(0), rep(1), asked, **fixed), NOW)
    assert d == RunDecision()  # two live replicas: nothing more to stop
    d = decide(view(rep(0), asked, **fixed), NOW)
    assert d.scale_up == [1] and d.scale_down == []
    d = decide(view(rep(1), asked, **fixed), NOW)
    assert d.scale_up == [0]  # not 2: it is still on its way out
