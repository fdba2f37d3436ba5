"""`job_connection_info` (docs/api.md "Job connection info"): filled on read for running jobs
when runs/get asks for it; null otherwise (and always in runs/list)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from dstack.models.runs import JobSpec, JobStatus, JobSubmission, RunSpec
from dstack.server.db import tables as t
from dstack.server.services.runs_view import job_connection_info, run_model

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _spec(conf: dict) -> RunSpec:
    return RunSpec(run_name="mn", configuration=conf)


def _sub(status: JobStatus, working_dir: str | None = None) -> JobSubmission:
    jrd = {"working_dir": working_dir} if working_dir else None
    return JobSubmission.model_validate(
        {
            "id": "s",
            "submitted_at": NOW,
            "last_processed_at": NOW,
            "status": status,
            "status_message": status.value,
            "job_runtime_data": jrd,
        }
    )


def test_task_jobs_get_their_ssh_aliases():
    spec = _spec({"type": "task", "nodes": 2})
    first = JobSpec(job_name="mn-0-0", working_dir="/workflow")
    second = JobSpec(job_name="mn-1-0", job_num=1)
    assert job_connection_info(spec, first, _sub(JobStatus.RUNNING)) == {
        "ssh_alias": "mn",
        "ssh_command": "ssh mn",
        "working_dir": "/workflow",
        "ide_url": None,
    }
    info = job_connection_info(spec, second, _sub(JobStatus.RUNNING, "/home/u/w"))
    assert info == {
        "ssh_alias": "mn-1-0",
        "ssh_command": "ssh mn-1-0",
        "working_dir": "/home/u/w",
        "ide_url": None,
    }
    replica = JobSpec(job_name="mn-0-1", replica_num=1)
    assert job_connection_info(spec, replica, _sub(JobStatus.RUNNING))["ssh_alias"] == "mn-0-1"


def test_only_running_jobs_have_connection_info():
    spec = _spec({"type": "task"})
    job = JobSpec(job_name="mn-0-0")
    for status in JobStatus:
        info = job_connection_info(spec, job, _sub(status))
        assert (info is not None) == (status == JobStatus.RUNNING), status


def test_dev_environment_ide_url():
    job = JobSpec(job_name="mn-0-0")
    running = _sub(JobStatus.RUNNING, "/home/u/repo")
    vscode = job_connection_info(_spec({"type": "dev-environment", "ide": "vscode"}), job, running)
    assert vscode["ide_url"] == "vscode://vscode-remote/ssh-remote+mn/home/u/repo"
    cursor = job_connection_info(_spec({"type": "dev-environment", "ide": "cursor"}), job, running)
    assert cursor["ide_url"] == "cursor://vscode-remote/ssh-remote+mn/home/u/repo"
    none = job_connection_info(_spec({"type": "dev-environment"}), job, running)
    assert none["ide_url"] is None and none["ssh_alias"] == "mn"


def _row(job_num: int, status: str) -> t.Job:
    spec = JobSpec(job_name=f"mn-{job_num}-0", job_num=job_num)
    return t.Job(
        id=f"j{job_num}",
        run_name="mn",
        job_num=job_num,
        replica_num=0,
        job_name=spec.job_name,
        submission_num=0,
        deployment_num=0,
        job_spec=spec.model_dump_json(),
        status=status,
        submitted_at=NOW,
        last_processed_at=NOW,
        probe_streaks=json.dumps([]),
    )


def test_run_model_fills_it_only_when_asked():
    run = t.Run(
        id="r",
        run_name="mn",
        run_spec=_spec({"type": "task", "nodes": 2}).model_dump_json(),
        status="running",
        submitted_at=NOW,
        last_processed_at=NOW,
        deployment_num=0,
        deleted=False,
    )
    jobs = [_row(0, "running"), _row(1, "provisioning")]
    listed = run_model(run, jobs, project_name="main", user_name="admin", fleet=None)
    assert [j.job_connection_info for j in listed.jobs] == [None, None]
    got = run_model(
        run, jobs, project_name="main", user_name="admin", fleet=None, connection_info=True
    )
    assert got.jobs[0].job_connection_info["ssh_alias"] == "mn"
    assert got.jobs[1].job_connection_info is None
