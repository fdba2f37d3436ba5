"""Log endpoints: one job submission's logs, paged by `next_token`, from the files the job
workers write under the server's logs directory."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends

from dstack.errors import ServerClientError
from dstack.models.logs import JobSubmissionLogs, PollLogsRequest
from dstack.server.db import tables as t
from dstack.server.routers.deps import ProjectAccess, get_ctx, project_access
from dstack.server.services import log_follow, logs, runs
from dstack.server.services.context import ServerContext

router = APIRouter()


@router.post("/api/project/{project_name}/logs/poll", response_model=JobSubmissionLogs)
async def logs_poll(
    body: PollLogsRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> JobSubmissionLogs:
    run = await runs.get_run_row(a.session, a.project, body.run_name)
    job_id = body.job_submission_id
    if job_id is None:
        raise ServerClientError("Specify job_submission_id", field="job_submission_id")
    job = await a.session.get(t.Job, job_id)
    if job is None or job.run_id != run.id:
        raise ServerClientError(
            f"Job submission {job_id} is not part of run {body.run_name}", field="job_submission_id"
        )
    path = logs.log_path(ctx.settings.logs_dir, a.project.name, run.run_name, job_id)
    page = _page(path, body)
    if page.next_token is None and body.wait > 0:
        # Nothing new: hold the answer (log_follow.py). The request's session is given back
        # first: a follower must not hold a database connection while it waits.
        run_id = run.id
        await a.session.close()
        offset = int(body.next_token or 0)
        await log_follow.wait_for_more(ctx, path, offset, run_id, job_id, body.wait)
        page = _page(path, body)
    return page


def _page(path: Path, body: PollLogsRequest) -> JobSubmissionLogs:
    try:
        return logs.poll(
            path,
            next_token=body.next_token,
            limit=body.limit,
            start_time=body.start_time,
            end_time=body.end_time,
        )
    except ValueError as e:
        raise ServerClientError(str(e), field="next_token") from e
