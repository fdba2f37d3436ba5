"""Wire models as the server would send them, for rendering tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from dstack.models.runs import Run

NOW = datetime(2026, 1, 5, 12, 0, 0, tzinfo=timezone.utc)


def ts(minutes_ago: float = 0) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def jpd(backend="aws", region="us-east-1", gpus=2, price=8.19, spot=False) -> dict[str, Any]:
    return {
        "backend": backend,
        "instance_type": {
            "name": "p4d.24xlarge",
            "resources": {
                "cpus": 96, "memory_mib": 1152 * 1024, "spot": spot, "cpu_arch": "x86",
                "gpus": [{"name": "A100", "memory_mib": 40960}] * gpus,
                "disk": {"size_mib": 100 * 1024},
            },
        },
        "instance_id": "i-1", "region": region, "price": price,
    }


def job(replica=0, job_num=0, status="running", provisioned=True, message=None,
        jobs_per_replica=1, deployment=0, **kw: Any) -> dict[str, Any]:
    return {
        "job_spec": {"replica_num": replica, "job_num": job_num,
                     "job_name": f"r-{job_num}-{replica}", "jobs_per_replica": jobs_per_replica},
        "job_submissions": [{
            "id": f"sub-{replica}-{job_num}", "submitted_at": ts(3), "last_processed_at": ts(1),
            "status": status, "status_message": message or status, "deployment_num": deployment,
            "job_provisioning_data": jpd(**kw) if provisioned else None,
        }],
    }


def run(name="demo-task", status="running", jobs=None, kind="task", error=None,
        minutes_ago=3, deployment=0) -> Run:
    return Run.model_validate({
        "id": f"id-{name}", "project_name": "main", "user": "admin",
        "submitted_at": ts(minutes_ago), "last_processed_at": ts(0), "status": status,
        "status_message": status, "error": error, "deployment_num": deployment,
        "run_spec": {"run_name": name, "configuration": {"type": kind}},
        "jobs": jobs if jobs is not None else [job()],
    })
