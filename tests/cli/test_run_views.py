"""`dstack ps` renders plain views of the JSON (api/run_views.py) instead of the pydantic runs:
the same JSON must give the same table, row for row, as the models give."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dstack.api.run_views import parse_run_views
from dstack.cli.render.runs import run_rows, run_status_text
from dstack.errors import ClientError
from dstack.models.runs import Run

from .factories import NOW, job, run


def _busy_port_job() -> dict:
    j = job(status="failed")
    j["job_submissions"][0].update(
        error="ports binding failed",
        termination_reason="ports_binding_failed",
        termination_reason_message="port 8000 is already in use on host local",
    )
    return j


def _tried_job() -> dict:
    j = job(status="provisioning")
    j["job_submissions"][0]["tried_offers"] = [
        {"backend": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge",
         "spot": True, "price": 12.3, "message": "InsufficientInstanceCapacity"},
    ]  # fmt: skip
    return j


def _blocks_and_probes_job() -> dict:
    j = job(gpus=8, spot=True)
    sub = j["job_submissions"][0]
    sub["job_runtime_data"] = {"offer": {
        "backend": "aws", "region": "us-east-1", "price": 2.0, "blocks": 2, "total_blocks": 8,
        "instance": {"name": "p4d.24xlarge", "resources": {
            "cpus": 24, "memory_mib": 288 * 1024,
            "gpus": [{"name": "A100", "memory_mib": 40960}] * 2,
        }},
    }}  # fmt: skip
    sub["job_provisioning_data"]["reservation"] = "cr-1"
    sub["probes"] = [{"success_streak": 3}, {"success_streak": 1}, {"success_streak": 0}]
    j["job_spec"]["probes"] = [{"ready_after": 2}, {"ready_after": 2}, {}]
    return j


def _scheduled() -> Run:
    r = run(status="pending", jobs=[])
    return r.model_copy(update={"next_triggered_at": NOW + timedelta(hours=5)})


CASES = {
    "running": lambda: run(),
    "multi-job": lambda: run(jobs=[job(replica=0), job(replica=1, provisioned=False,
                                                       status="submitted")]),
    "multinode": lambda: run(jobs=[job(job_num=0, jobs_per_replica=2),
                                   job(job_num=1, jobs_per_replica=2)]),
    "service": lambda: run(kind="service", deployment=1, jobs=[job(deployment=1), job()]),
    "failed": lambda: run(status="failed", error="retry limit exceeded", minutes_ago=3000),
    "busy-port": lambda: run(status="failed", jobs=[_busy_port_job()]),
    "tried-offers": lambda: run(jobs=[_tried_job()]),
    "blocks-probes": lambda: run(jobs=[_blocks_and_probes_job()]),
    "no-jobs-yet": lambda: run(status="submitted", jobs=[]),
    "scheduled": _scheduled,
    "done": lambda: run(status="done", jobs=[job(status="done", message="exited (0)")]),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("verbose", [False, True])
def test_views_render_as_the_models_do(name: str, verbose: bool) -> None:
    model = CASES[name]()
    raw = model.model_dump(mode="json")
    (view,) = parse_run_views([raw])
    assert run_rows(view, verbose, NOW) == run_rows(model, verbose, NOW)
    assert run_status_text(view) == run_status_text(model)


def test_defaults_are_the_models_defaults() -> None:
    """An older server may leave out fields that have defaults in the models."""
    raw = run().model_dump(mode="json", exclude_defaults=True)
    model = Run.model_validate(raw)
    (view,) = parse_run_views([raw])
    assert run_rows(view, True, NOW) == run_rows(model, True, NOW)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda r: r.pop("run_spec"),
        lambda r: r.update(status="exploded"),
        lambda r: r.update(submitted_at="yesterday"),
        lambda r: r["jobs"][0].update(job_submissions=None),
        lambda r: r["jobs"][0]["job_submissions"][0].pop("status"),
    ],
)
def test_a_malformed_answer_is_the_models_error(breakage) -> None:  # noqa: ANN001
    raw = run().model_dump(mode="json")
    breakage(raw)
    with pytest.raises(ClientError, match="Unexpected answer from the server"):
        parse_run_views([raw])


def test_not_a_list_is_refused() -> None:
    with pytest.raises(ClientError, match="Unexpected answer from the server"):
        parse_run_views({"runs": []})
