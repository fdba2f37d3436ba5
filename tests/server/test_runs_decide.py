"""The run transition table of `reconcilers/runs.py`, one row per transition, plus retry."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from dstack.server.reconcilers.runs import (
    JobState,
    RunDecision,
    RunView,
    decide,
    failure_streak,
    retry_event,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
BACKOFF = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RETRY_ALL = {"on_events": ["no-capacity", "interruption", "error"], "duration": 3600}


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def job(
    status: str = "running",
    reason: str | None = None,
    *,
    replica: int = 0,
    num: int = 0,
    submitted: float = 600,
    finished: float | None = None,
    provisioned: bool = True,
    last_provisioned: float | None = None,
) -> JobState:
    return JobState(
        last_provisioned_at=ago(last_provisioned) if last_provisioned is not None else None,
        replica_num=replica,
        job_num=num,
        status=status,
        termination_reason=reason,
        submitted_at=ago(submitted),
        finished_at=ago(finished) if finished is not None else None,
        provisioned=provisioned,
    )


def run(*jobs: JobState, **kw) -> RunView:
    base = dict(
        status="running",
        termination_reason=None,
        stop_requested=False,
        stop_abort=False,
        submitted_at=ago(600),
        resubmission_attempt=0,
        retry=None,
        latest_jobs=tuple(jobs),
        backoff=BACKOFF,
    )
    base.update(kw)
    return RunView(**base)


def stopping(j: JobState) -> JobState:
    """The run already asked this job to stop; the job reconciler has not acted yet."""
    return replace(j, stop_requested=True)


def streak(j: JobState, n: int) -> JobState:
    return replace(j, failed_streak=n)


NO_CAP = "failed_to_start_due_to_no_capacity"
EXIT = "container_exited_with_error"

TABLE = [
    # -- active: stop requested ----------------------------------------------------------
    (
        "active/stop-requested",
        run(job("running"), stop_requested=True),
        RunDecision(
            status="terminating",
            reason="stopped_by_user",
            terminate_jobs_reason="terminated_by_user",
        ),
    ),
    (
        "active/abort-requested",
        run(job("running"), stop_requested=True, stop_abort=True),
        RunDecision(
            status="terminating", reason="aborted_by_user", terminate_jobs_reason="aborted_by_user"
        ),
    ),
    (
        "active/stop-requested-jobs-already-finished",
        run(job("done", "done_by_runner", finished=1), stop_requested=True),
        RunDecision(status="terminated", reason="stopped_by_user"),
    ),
    (
        "active/stop-wins-over-a-retryable-failure",
        run(job("failed", EXIT, finished=1), stop_requested=True, retry=RETRY_ALL),
        RunDecision(status="terminated", reason="stopped_by_user"),
    ),
    (
        "pending/stop-requested",
        run(
            job("failed", EXIT, finished=1),
            status="pending",
            stop_requested=True,
            resubmission_attempt=1,
        ),
        RunDecision(status="terminated", reason="stopped_by_user"),
    ),
    # -- active: a job failed ------------------------------------------------------------
    (
        "active/failed-retry-covers-it",
        run(job("failed", EXIT, finished=1), retry=RETRY_ALL),
        RunDecision(status="pending", values={"resubmission_attempt": 1}),
    ),
    (
        "active/failed-retry-counts-attempts",
        run(job("failed", EXIT, finished=1), retry=RETRY_ALL, resubmission_attempt=3),
        RunDecision(status="pending", values={"resubmission_attempt": 4}),
    ),
    (
        "active/failed-retry-window-passed",
        run(job("failed", EXIT, finished=3601), retry=RETRY_ALL),
        RunDecision(status="failed", reason="retry_limit_exceeded"),
    ),
    (
        "active/failed-retry-window-passed-siblings-terminated",
        run(
            job("failed", EXIT, finished=3601),
            job("running", num=1),
            retry=RETRY_ALL,
        ),
        RunDecision(
            status="terminating",
            reason="retry_limit_exceeded",
            terminate_jobs_reason="terminated_by_server",
        ),
    ),
    (
        "active/failed-no-retry",
        run(job("failed", EXIT, finished=1)),
        RunDecision(status="failed", reason="job_failed"),
    ),
    (
        "active/failed-no-retry-siblings-terminated",
        run(job("failed", EXIT, finished=1), job("running", num=1)),
        RunDecision(
            status="terminating", reason="job_failed", terminate_jobs_reason="terminated_by_server"
        ),
    ),
    (
        "active/failed-event-not-in-on_events",
        run(
            job("failed", EXIT, finished=1),
            retry={"on_events": ["no-capacity"], "duration": 3600},
        ),
        RunDecision(status="failed", reason="job_failed"),
    ),
    (
        "active/non-retryable-reason-despite-retry",
        run(job("terminated", "terminated_by_server", finished=1), retry=RETRY_ALL),
        RunDecision(status="failed", reason="job_failed"),
    ),
    # -- active: all done ----------------------------------------------------------------
    (
        "active/every-job-done",
        run(job("done", "done_by_runner", finished=1), job("done", num=1, finished=1)),
        RunDecision(status="done", reason="all_jobs_done"),
    ),
    # -- active: in progress -------------------------------------------------------------
    (
        "active/a-job-runs",
        run(job("running"), job("provisioning", num=1), status="provisioning"),
        RunDecision(status="running", values={"resubmission_attempt": 0}),
    ),
    (
        "active/a-job-provisions",
        run(job("provisioning"), job("submitted", num=1), status="submitted"),
        RunDecision(status="provisioning", values={"resubmission_attempt": 0}),
    ),
    (
        "active/pulling-counts-as-provisioning",
        run(job("pulling"), status="submitted", resubmission_attempt=2),
        RunDecision(status="provisioning", values={"resubmission_attempt": 0}),
    ),
    (
        "active/only-submitted",
        run(job("submitted"), status="running"),
        RunDecision(status="submitted"),
    ),
    ("active/no-change", run(job("running"), status="running"), RunDecision()),
    ("active/no-jobs-yet", run(status="submitted"), RunDecision()),
    (
        "active/terminating-job-does-not-move-run-back-to-submitted",
        run(job("terminating", EXIT), status="running"),
        RunDecision(),
    ),
    (
        "active/terminating-job-next-to-running-one",
        run(job("terminating", EXIT), job("running", num=1), status="provisioning"),
        RunDecision(status="running", values={"resubmission_attempt": 0}),
    ),
    # -- pending -------------------------------------------------------------------------
    (
        "pending/backoff-elapsed",
        run(
            job("failed", EXIT, finished=15),
            job("failed", EXIT, replica=1, finished=20),
            status="pending",
            resubmission_attempt=1,
        ),
        RunDecision(status="submitted", resubmit=[(0, 0), (1, 0)], waited=15.0),
    ),
    (
        "pending/backoff-not-elapsed",
        run(job("failed", EXIT, finished=14), status="pending", resubmission_attempt=1),
        RunDecision(),
    ),
    (
        "pending/backoff-grows-with-attempts",
        run(job("failed", EXIT, finished=59), status="pending", resubmission_attempt=3),
        RunDecision(),
    ),
    (
        "pending/backoff-third-attempt-elapsed",
        run(job("failed", EXIT, finished=60), status="pending", resubmission_attempt=3),
        RunDecision(status="submitted", resubmit=[(0, 0)], waited=60.0),
    ),
    (
        "pending/backoff-caps-at-last-step",
        run(job("failed", EXIT, finished=600), status="pending", resubmission_attempt=40),
        RunDecision(status="submitted", resubmit=[(0, 0)], waited=600.0),
    ),
    (
        "pending/backoff-caps-at-last-step-not-elapsed",
        run(job("failed", EXIT, finished=599), status="pending", resubmission_attempt=40),
        RunDecision(),
    ),
    (
        "pending/backoff-from-the-last-failure-not-submission",
        run(
            job("failed", NO_CAP, submitted=3000, finished=10, provisioned=False),
            job("failed", NO_CAP, num=1, submitted=3000, finished=100, provisioned=False),
            status="pending",
            resubmission_attempt=1,
            submitted_at=ago(3000),
        ),
        RunDecision(),
    ),
    (
        "pending/no-finished-timestamp-uses-job-submission",
        run(
            job("failed", NO_CAP, submitted=16, finished=None, provisioned=False),
            status="pending",
            resubmission_attempt=1,
        ),
        RunDecision(status="submitted", resubmit=[(0, 0)], waited=15.0),
    ),
    # A job that keeps failing soon after it starts backs off by its own streak, even when
    # the run's attempt count was reset (a service whose other replicas run).
    (
        "pending/backoff-grows-with-the-failure-streak",
        run(
            streak(job("failed", "ports_binding_failed", finished=59), 3),
            status="pending",
            resubmission_attempt=1,
        ),
        RunDecision(),
    ),
    (
        "pending/backoff-of-the-failure-streak-elapsed",
        run(
            streak(job("failed", "ports_binding_failed", finished=60), 3),
            status="pending",
            resubmission_attempt=1,
        ),
        RunDecision(status="submitted", resubmit=[(0, 0)], waited=60.0),
    ),
    (
        "pending/the-longest-streak-of-the-failed-jobs-counts",
        run(
            streak(job("failed", EXIT, finished=119), 2),
            streak(job("failed", EXIT, replica=1, finished=119), 4),
            status="pending",
            resubmission_attempt=1,
        ),
        RunDecision(),
    ),
    (
        "pending/streak-capped-at-the-last-step",
        run(
            streak(job("failed", EXIT, finished=600), 50),
            status="pending",
            resubmission_attempt=1,
        ),
        RunDecision(status="submitted", resubmit=[(0, 0)], waited=600.0),
    ),
    # -- terminating ---------------------------------------------------------------------
    (
        "terminating/unfinished-jobs-stopped-by-user",
        run(job("running"), status="terminating", termination_reason="stopped_by_user"),
        RunDecision(terminate_jobs_reason="terminated_by_user"),
    ),
    (
        "terminating/unfinished-jobs-aborted",
        run(job("running"), status="terminating", termination_reason="aborted_by_user"),
        RunDecision(terminate_jobs_reason="aborted_by_user"),
    ),
    (
        "terminating/unfinished-jobs-all_jobs_done",
        run(job("running"), status="terminating", termination_reason="all_jobs_done"),
        RunDecision(terminate_jobs_reason="done_by_runner"),
    ),
    (
        "terminating/unfinished-jobs-job_failed",
        run(job("terminating", EXIT), status="terminating", termination_reason="job_failed"),
        RunDecision(terminate_jobs_reason="terminated_by_server"),
    ),
    (
        "terminating/finished-all_jobs_done",
        run(job("done", finished=1), status="terminating", termination_reason="all_jobs_done"),
        RunDecision(status="done"),
    ),
    (
        "terminating/finished-stopped_by_user",
        run(
            job("terminated", "terminated_by_user", finished=1),
            status="terminating",
            termination_reason="stopped_by_user",
        ),
        RunDecision(status="terminated"),
    ),
    (
        "terminating/finished-aborted_by_user",
        run(
            job("aborted", "aborted_by_user", finished=1),
            status="terminating",
            termination_reason="aborted_by_user",
        ),
        RunDecision(status="terminated"),
    ),
    (
        "terminating/finished-job_failed",
        run(job("failed", EXIT, finished=1), status="terminating", termination_reason="job_failed"),
        RunDecision(status="failed"),
    ),
    (
        "terminating/finished-retry_limit_exceeded",
        run(
            job("failed", NO_CAP, finished=1),
            status="terminating",
            termination_reason="retry_limit_exceeded",
        ),
        RunDecision(status="failed"),
    ),
    (
        "terminating/finished-missing-reason-is-server_error",
        run(job("failed", EXIT, finished=1), status="terminating", termination_reason=None),
        RunDecision(status="failed"),
    ),
    (
        "terminating/stop-requested-again-changes-nothing",
        run(
            job("terminating", "terminated_by_user"),
            status="terminating",
            termination_reason="stopped_by_user",
            stop_requested=True,
        ),
        RunDecision(terminate_jobs_reason="terminated_by_user"),
    ),
    # -- jobs asked to stop (the run requests, the job reconciler transitions) ------------
    (
        "active/a-job-asked-to-stop-does-not-set-the-status",
        run(
            stopping(job("running")),
            job("provisioning", num=1),
            status="provisioning",
        ),
        RunDecision(),
    ),
    (
        "terminating/jobs-asked-but-not-yet-terminating-are-asked-again",
        run(
            stopping(job("running")),
            status="terminating",
            termination_reason="stopped_by_user",
            stop_requested=True,
        ),
        RunDecision(terminate_jobs_reason="terminated_by_user"),
    ),
    # -- replacement (`apply --force`): submitted when the run becomes final --------------
    (
        "active/replacement-requested-jobs-running",
        run(job("running"), stop_requested=True, replacement=True),
        RunDecision(
            status="terminating",
            reason="stopped_by_user",
            terminate_jobs_reason="terminated_by_user",
        ),
    ),
    (
        "terminating/replacement-waits-for-the-last-job",
        run(
            job("terminated", "terminated_by_user", finished=1),
            stopping(job("running", num=1)),
            status="terminating",
            termination_reason="stopped_by_user",
            stop_requested=True,
            replacement=True,
        ),
        RunDecision(terminate_jobs_reason="terminated_by_user"),
    ),
    (
        "terminating/every-job-finished-submits-the-replacement",
        run(
            job("terminated", "terminated_by_user", finished=1),
            status="terminating",
            termination_reason="stopped_by_user",
            stop_requested=True,
            replacement=True,
        ),
        RunDecision(status="terminated", submit_replacement=True),
    ),
    (
        "pending/replacement-requested-no-job-left-ends-at-once",
        run(
            job("failed", EXIT, finished=1),
            status="pending",
            stop_requested=True,
            resubmission_attempt=1,
            replacement=True,
        ),
        RunDecision(status="terminated", reason="stopped_by_user", submit_replacement=True),
    ),
    (
        "active/replacement-also-follows-a-run-that-ends-on-its-own",
        run(job("done", "done_by_runner", finished=1), replacement=True),
        RunDecision(status="done", reason="all_jobs_done", submit_replacement=True),
    ),
]


@pytest.mark.parametrize(("view", "expected"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE])
def test_decide(view: RunView, expected: RunDecision) -> None:
    assert decide(view, NOW) == expected


# -- retry windows ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_age", "expected"),
    [
        (3599, RunDecision(status="pending", values={"resubmission_attempt": 1})),
        (3601, RunDecision(status="failed", reason="retry_limit_exceeded")),
    ],
)
def test_no_capacity_window_counts_from_run_submission(run_age: float, expected) -> None:
    """A job that never got capacity: the window starts when the run was submitted, even though
    the job failed a second ago."""
    v = run(
        job("failed", NO_CAP, submitted=1, finished=1, provisioned=False),
        status="submitted",
        submitted_at=ago(run_age),
        retry=RETRY_ALL,
    )
    assert decide(v, NOW) == expected


@pytest.mark.parametrize(
    ("failed_ago", "expected"),
    [
        (3599, RunDecision(status="pending", values={"resubmission_attempt": 1})),
        (3601, RunDecision(status="failed", reason="retry_limit_exceeded")),
    ],
)
def test_error_window_counts_from_the_failure(failed_ago: float, expected) -> None:
    """A job that ran and failed: the window starts at the failure, not at run submission."""
    v = run(
        job("failed", EXIT, submitted=5 * 3600, finished=failed_ago),
        submitted_at=ago(5 * 3600),
        retry=RETRY_ALL,
    )
    assert decide(v, NOW) == expected


def test_interruption_window_counts_from_the_failure() -> None:
    v = run(
        job("failed", "interrupted_by_no_capacity", submitted=7200, finished=60),
        submitted_at=ago(7200),
        retry={"on_events": ["interruption"], "duration": 120},
    )
    assert decide(v, NOW) == RunDecision(status="pending", values={"resubmission_attempt": 1})


def test_retry_duration_defaults_to_one_hour() -> None:
    v = run(job("failed", EXIT, finished=3599), retry={"on_events": ["error"], "duration": None})
    assert decide(v, NOW).status == "pending"
    v = run(job("failed", EXIT, finished=3601), retry={"on_events": ["error"], "duration": None})
    assert decide(v, NOW).reason == "retry_limit_exceeded"


def test_one_non_retryable_failure_fails_the_run() -> None:
    v = run(
        job("failed", NO_CAP, finished=1, provisioned=False),
        job("failed", EXIT, replica=1, finished=1),
        retry={"on_events": ["no-capacity"], "duration": 3600},
    )
    assert decide(v, NOW) == RunDecision(status="failed", reason="job_failed")


def test_no_capacity_after_an_earlier_provisioned_submission_still_retries() -> None:
    v = run(
        # the resubmission after the interruption (1 min ago) found no capacity
        job("failed", NO_CAP, submitted=60, finished=1, provisioned=False, last_provisioned=60),
        status="submitted",
        submitted_at=ago(3 * 3600),
        resubmission_attempt=1,
        retry=RETRY_ALL,
    )
    assert decide(v, NOW) == RunDecision(status="pending", values={"resubmission_attempt": 2})


def test_done_and_terminating_jobs_do_not_move_run_back_to_submitted() -> None:
    v = run(job("terminating", "done_by_runner"), job("done", num=1, finished=1), status="running")
    assert decide(v, NOW) == RunDecision()


def test_abort_after_stop_escalates() -> None:
    v = run(
        job("terminating", "terminated_by_user"),
        status="terminating",
        termination_reason="stopped_by_user",
        stop_requested=True,
        stop_abort=True,
    )
    assert decide(v, NOW).terminate_jobs_reason == "aborted_by_user"


# -- the retry event of every termination reason (server.md §3.2) ------------------------

RETRY_EVENTS = {
    "failed_to_start_due_to_no_capacity": "no-capacity",
    "interrupted_by_no_capacity": "interruption",
    "instance_unreachable": "error",
    "instance_access_revoked": "error",
    "waiting_instance_limit_exceeded": "error",
    "waiting_runner_limit_exceeded": "error",
    "terminated_by_user": None,
    "volume_error": "error",
    "gateway_error": "error",
    "scaled_down": None,
    "done_by_runner": None,
    "aborted_by_user": None,
    "terminated_by_server": None,
    "inactivity_duration_exceeded": None,
    "terminated_due_to_utilization_policy": None,
    "container_exited_with_error": "error",
    "ports_binding_failed": "error",
    "creating_container_error": "error",
    "executor_error": "error",
    "max_duration_exceeded": None,
    "log_quota_exceeded": "error",
}


def test_retry_table_has_21_reasons() -> None:
    assert len(RETRY_EVENTS) == 21


@pytest.mark.parametrize(("reason", "event"), sorted(RETRY_EVENTS.items()))
def test_retry_event(reason: str, event: str | None) -> None:
    assert retry_event(reason) == event


# -- failure streaks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "want"),
    [
        ([], 0),
        ([("running", ago(10), None)], 0),
        ([("failed", ago(10), ago(9))], 1),
        (
            [
                ("failed", ago(50), ago(49)),
                ("failed", ago(30), ago(29)),
                ("failed", ago(9), ago(8)),
            ],
            3,
        ),
        # A success, a stop or a long healthy run ends the streak.
        ([("failed", ago(50), ago(49)), ("done", ago(40), ago(30)), ("failed", ago(9), ago(8))], 1),
        (
            [
                ("failed", ago(50), ago(49)),
                ("terminated", ago(40), ago(30)),
                ("failed", ago(9), ago(8)),
            ],
            1,
        ),
        ([("failed", ago(5000), ago(9)), ("failed", ago(8), ago(7))], 1),
        ([("failed", ago(5000), ago(9))], 0),
        ([("failed", None, None), ("failed", None, ago(1))], 2),
        # The newest still runs: no streak.
        ([("failed", ago(50), ago(49)), ("running", ago(9), None)], 0),
    ],
)
def test_failure_streak(history, want):
    assert failure_streak(history) == want
