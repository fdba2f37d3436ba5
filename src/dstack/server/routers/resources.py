"""Server, user, project, fleet, volume, gateway, offer, event, code and log endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, UploadFile

from dstack.errors import ServerClientError
from dstack.models.events import Event
from dstack.models.fleets import Fleet
from dstack.models.logs import JobSubmissionLogs, PollLogsRequest
from dstack.models.requests import GetFleetRequest, ListEventsRequest, ListOffersRequest
from dstack.models.users import Project, User
from dstack.models.volumes import Gateway, Volume
from dstack.server.db import tables as t
from dstack.server.routers.deps import ProjectAccess, get_ctx, get_session, get_user, project_access
from dstack.server.services import codes, events, fleets, logs, offers, runs
from dstack.server.services.context import ServerContext
from dstack.server.services.users import (
    list_projects,
    project_for_member,
    project_model,
    user_model,
)
from dstack.version import __version__

router = APIRouter()


@router.get("/healthcheck")
async def healthcheck() -> dict:
    return {"status": "running"}


@router.post("/api/server/get_info")
async def get_info() -> dict:
    return {"server_version": __version__}


@router.post("/api/users/get_my_user", response_model=User)
async def get_my_user(user: t.User = Depends(get_user)) -> User:
    return user_model(user)


@router.post("/api/projects/list", response_model=list[Project])
async def projects_list(user: t.User = Depends(get_user), s=Depends(get_session)) -> list[Project]:  # noqa: ANN001
    return [await project_model(s, p) for p in await list_projects(s, user)]


@router.post("/api/projects/{project_name}/get", response_model=Project)
async def project_get(a: ProjectAccess = Depends(project_access)) -> Project:
    return await project_model(a.session, a.project)


@router.post("/api/project/{project_name}/fleets/list", response_model=list[Fleet])
async def fleets_list(a: ProjectAccess = Depends(project_access)) -> list[Fleet]:
    return await fleets.list_fleets(a.session, a.project)


@router.post("/api/fleets/list", response_model=list[Fleet])
async def fleets_list_all(user: t.User = Depends(get_user), s=Depends(get_session)) -> list[Fleet]:  # noqa: ANN001
    out: list[Fleet] = []
    for p in await list_projects(s, user):
        out.extend(await fleets.list_fleets(s, p))
    return out


@router.post("/api/project/{project_name}/fleets/get", response_model=Fleet)
async def fleets_get(body: GetFleetRequest, a: ProjectAccess = Depends(project_access)) -> Fleet:
    if not body.name and not body.id:
        raise ServerClientError("Specify the fleet name or id", field="name")
    return await fleets.get_fleet(a.session, a.project, body.name, body.id)


@router.post("/api/project/{project_name}/volumes/list", response_model=list[Volume])
async def volumes_list(a: ProjectAccess = Depends(project_access)) -> list[Volume]:
    return []  # volumes are created by backends that have them; none is configured yet


@router.post("/api/project/{project_name}/gateways/list", response_model=list[Gateway])
async def gateways_list(a: ProjectAccess = Depends(project_access)) -> list[Gateway]:
    return []  # gateways need a cloud backend; none is configured yet


@router.post("/api/project/{project_name}/offers/list")
async def offers_list(
    body: ListOffersRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    return await offers.list_offers(ctx, a.session, a.project, body.run_spec, body.max_offers)


@router.post("/api/events/list", response_model=list[Event])
async def events_list(
    body: ListEventsRequest,
    user: t.User = Depends(get_user),
    s=Depends(get_session),  # noqa: ANN001
) -> list[Event]:
    project = await project_for_member(s, user, body.project_name or "main")
    within = within_fleet = None
    if body.within_run:
        within = (await runs.get_run_row(s, project, body.within_run)).id
    if body.within_fleet:
        within_fleet = (await fleets.get_fleet(s, project, body.within_fleet, None)).id
    return await events.list_events(
        s,
        project_id=project.id,
        project_name=project.name,
        target_type=body.target_type,
        target_name=body.target_name,
        within_run_id=within,
        within_fleet_id=within_fleet,
        since=body.since,
        limit=body.limit,
    )


@router.post("/api/project/{project_name}/repos/upload_code")
async def upload_code(
    request: Request,
    file: UploadFile,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    limit = ctx.settings.code_upload_limit
    blob = await file.read(limit + 1 if limit else -1)
    digest = await codes.store_code(a.session, a.project, blob, limit)
    return {"hash": digest}


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
