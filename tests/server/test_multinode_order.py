"""`startup_order` and `stop_criteria` for multi-node tasks: which node waits for which, and
when the run is done. Pure rules (job_facts.startup_blocked, runs.decide)."""

from __future__ import annotations

import pytest

from dstack.server.reconcilers.job_facts import startup_blocked
from dstack.server.reconcilers.runs import decide

from .test_runs_decide import NOW, job, run


@pytest.mark.parametrize("order", [None, "any", "master-first"])
def test_master_first_workers_wait_for_the_master(order: str | None) -> None:
    assert not startup_blocked(order, 0, [False, False, False])
    assert startup_blocked(order, 1, [False, False, False])
    assert not startup_blocked(order, 2, [True, False, False])


def test_workers_first_master_waits_for_every_worker() -> None:
    assert not startup_blocked("workers-first", 1, [False, False, False])
    assert startup_blocked("workers-first", 0, [False, True, False])
    assert not startup_blocked("workers-first", 0, [False, True, True])


def test_master_done_ends_the_run_and_stops_the_workers() -> None:
    view = run(job("done", "done_by_runner", num=0, finished=1), job("running", num=1),
               stop_criteria="master-done")  # fmt: skip
    d = decide(view, NOW)
    assert d.status == "terminating" and d.reason == "all_jobs_done"
    assert d.terminate_jobs_reason == "done_by_runner"


def test_all_done_waits_for_the_workers() -> None:
    view = run(job("done", "done_by_runner", num=0, finished=1), job("running", num=1))
    assert decide(view, NOW).status is None
    view = run(job("done", "done_by_runner", num=0, finished=1), job("running", num=1),
               stop_criteria="all-done")  # fmt: skip
    assert decide(view, NOW).status is None


def test_master_failure_is_still_a_failure_with_master_done() -> None:
    view = run(job("failed", "container_exited_with_error", num=0, finished=1),
               job("running", num=1), stop_criteria="master-done")  # fmt: skip
    assert decide(view, NOW).reason == "job_failed"
