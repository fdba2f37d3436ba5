"""Event endpoints (`dstack event`): the transitions reconcilers recorded, filtered by target
or by the run or fleet they happened within. The project comes in the body, not the path: the
gate lets any signed-in user in and `require_project` applies the table's project rule."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.events import Event
from dstack.models.requests import ListEventsRequest
from dstack.server.authz import Need
from dstack.server.db import tables as t
from dstack.server.routers.deps import get_session, get_user, require_project
from dstack.server.services import events, fleets, runs

router = APIRouter()


@router.post("/api/events/list", response_model=list[Event])
async def events_list(
    body: ListEventsRequest,
    user: t.User = Depends(get_user),
    s=Depends(get_session),  # noqa: ANN001
) -> list[Event]:
    project = await require_project(s, user, body.project_name or "main", Need.PROJECT_USER)
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
