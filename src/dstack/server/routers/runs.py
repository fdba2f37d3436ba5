"""Run endpoints: thin wrappers over `services.runs`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from dstack.errors import ServerClientError
from dstack.models.requests import (
    ApplyRunPlanRequest,
    DeleteRunsRequest,
    GetRunPlanRequest,
    GetRunRequest,
    ListRunsRequest,
    StopRunsRequest,
)
from dstack.models.runs import Run, RunPlan
from dstack.server.authz import Need
from dstack.server.db import tables as t
from dstack.server.routers.deps import (
    ProjectAccess,
    get_ctx,
    get_session,
    get_user,
    project_access,
    require_project,
)
from dstack.server.routers.fast_json import json_response
from dstack.server.services import run_apply, runs_page
from dstack.server.services import runs as svc
from dstack.server.services.context import ServerContext
from dstack.server.services.users import list_projects

router = APIRouter()


@router.post("/api/project/{project_name}/runs/get_plan", response_model=RunPlan)
async def get_plan(
    body: GetRunPlanRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> RunPlan:
    return await svc.get_plan(ctx, a.session, a.user, a.project, body.run_spec, body.max_offers)


@router.post("/api/project/{project_name}/runs/apply", response_model=Run)
async def apply(
    body: ApplyRunPlanRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> Response:
    run = await run_apply.apply_plan(ctx, a.session, a.user, a.project, body.plan, body.force)
    return json_response(Run, run)


@router.post("/api/project/{project_name}/runs/get", response_model=Run)
async def get_run(body: GetRunRequest, a: ProjectAccess = Depends(project_access)) -> Run:
    run = await svc.get_run_row(a.session, a.project, body.run_name, body.id)
    return await svc.to_model(a.session, run, a.project, connection_info=True)


@router.post("/api/project/{project_name}/runs/stop")
async def stop(
    body: StopRunsRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    await svc.stop_runs(ctx, a.session, a.user, a.project, body.runs_names, body.abort)
    return {}


@router.post("/api/project/{project_name}/runs/delete")
async def delete(body: DeleteRunsRequest, a: ProjectAccess = Depends(project_access)) -> dict:
    await svc.delete_runs(a.session, a.project, body.runs_names)
    return {}


def _refuse_unsupported_filters(body: ListRunsRequest) -> None:
    """The reference's request has these; this server does not filter by them yet, and an
    ignored filter would show runs the caller asked not to see."""
    if body.repo_id is not None:
        raise ServerClientError("`repo_id`: runs are not filtered by repository", field="repo_id")
    if body.username is not None:
        raise ServerClientError("`username`: runs are not filtered by user", field="username")
    if not body.include_jobs:
        raise ServerClientError(
            "`include_jobs: false` is not supported: runs are listed with their jobs",
            field="include_jobs",
        )


@router.post("/api/runs/list", response_model=list[Run])
async def list_runs(
    body: ListRunsRequest | None = None,
    user: t.User = Depends(get_user),
    s=Depends(get_session),  # noqa: ANN001
) -> Response:
    body = body or ListRunsRequest()
    _refuse_unsupported_filters(body)
    if body.project_name:
        projects = [await require_project(s, user, body.project_name, Need.PROJECT_USER)]
    else:
        projects = await list_projects(s, user)
    body_bytes = await runs_page.list_page(
        s,
        {p.id: p for p in projects},
        only_active=body.only_active,
        limit=body.limit,
        job_submissions_limit=body.job_submissions_limit,
        ascending=body.ascending,
        prev_submitted_at=body.prev_submitted_at,
        prev_run_id=body.prev_run_id,
    )
    return Response(content=body_bytes, media_type="application/json")
