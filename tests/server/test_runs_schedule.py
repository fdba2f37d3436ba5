"""`schedule`: a scheduled run waits (pending, no jobs) until the next cron time, starts all
its jobs then, and after ending on its own waits for the next start; a user's stop ends it.
The reconciler's clock is injected: `decide(view, now)`."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from dstack.models.cron import next_fire, to_croniter
from dstack.server.reconcilers.runs import decide

from .test_runs_decide import NOW, job, run

EVERY_HOUR = ("0 * * * *",)
NEXT_HOUR = NOW + timedelta(hours=1)  # NOW is 12:00 exactly


def waiting(**kw):  # noqa: ANN003, ANN202 - a RunView
    return run(status="pending", schedule=EVERY_HOUR, next_triggered_at=NEXT_HOUR, **kw)


def test_waits_until_the_next_start() -> None:
    d = decide(waiting(), NOW + timedelta(minutes=59, seconds=59))
    assert d.status is None and not d.submit_new and not d.resubmit


def test_first_start_submits_every_job() -> None:
    d = decide(waiting(), NEXT_HOUR)
    assert d.status == "submitted" and d.submit_new and d.resubmit == []
    assert d.values["next_triggered_at"] is None


def test_later_start_resubmits_every_job_of_the_last_cycle() -> None:
    jobs = (job("done", "done_by_runner", num=0), job("done", "done_by_runner", num=1))
    d = decide(waiting(latest_jobs=jobs), NEXT_HOUR + timedelta(seconds=1))
    assert d.status == "submitted" and not d.submit_new
    assert d.resubmit == [(0, 0), (0, 1)]


@pytest.mark.parametrize(
    "outcome", [("done", "done_by_runner"), ("failed", "container_exited_with_error")]
)
def test_run_that_ends_on_its_own_waits_for_the_next_start(outcome: tuple[str, str]) -> None:
    finished = run(job(*outcome, finished=1), status="running", schedule=EVERY_HOUR)
    later = NOW + timedelta(minutes=10)
    d = decide(finished, later)
    assert d.status == "pending" and d.reason is None
    assert d.values["next_triggered_at"] == NOW + timedelta(hours=1)
    assert d.values["termination_reason"] is None


def test_a_users_stop_ends_a_scheduled_run() -> None:
    d = decide(replace(waiting(), stop_requested=True), NOW)
    assert d.status == "terminated" and d.reason == "stopped_by_user"


def test_unscheduled_run_still_ends() -> None:
    d = decide(run(job("done", "done_by_runner", finished=1)), NOW)
    assert d.status == "done"


def test_weekday_zero_is_monday() -> None:
    saturday = datetime(2026, 12, 5, 13, 0, tzinfo=timezone.utc)
    assert next_fire(["0 9 * * 0"], saturday) == datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)
    assert next_fire(["0 9 * * 5-6"], saturday).weekday() == 6  # Sunday, tomorrow
    assert to_croniter("0 9 * * */2") == "0 9 * * 1,3,5,7"  # Mon, Wed, Fri, Sun
    assert to_croniter("0 9 * * mon-fri") == "0 9 * * 1,2,3,4,5"


def test_earliest_of_several_expressions() -> None:
    at = datetime(2026, 12, 5, 13, 0, 30, tzinfo=timezone.utc)
    assert next_fire(["0 14 * * *", "30 13 * * *"], at) == at.replace(minute=30, second=0)
