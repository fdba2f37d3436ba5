"""Job metrics: the named series `dstack metrics` and the web UI's charts draw.

Access: any member of the project (the `project_access` dependency)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends

from dstack.models.metrics import JobMetrics
from dstack.server.routers.deps import ProjectAccess, project_access
from dstack.server.services import metrics, runs

router = APIRouter()


@router.get("/api/project/{project_name}/metrics/job/{run_name}", response_model=JobMetrics)
async def job_metrics(
    run_name: str,
    replica_num: int = 0,
    job_num: int = 0,
    limit: int = 1,
    after: datetime | None = None,
    before: datetime | None = None,
    a: ProjectAccess = Depends(project_access),
) -> JobMetrics:
    """The newest `limit` points of the job (latest submission of replica/job) between
    `after` and `before` (ISO 8601), oldest first."""
    metrics.check_limit(limit)
    run = await runs.get_run_row(a.session, a.project, run_name)
    job = await metrics.find_job(a.session, run, replica_num, job_num)
    points = await metrics.load_points(a.session, job.id, limit, after, before)
    return metrics.to_series(points)
