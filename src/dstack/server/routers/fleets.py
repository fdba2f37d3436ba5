"""Fleet plan, apply and delete endpoints: thin wrappers over `services.fleet_apply` and
`services.fleet_delete`."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.fleets import Fleet
from dstack.models.requests import (
    ApplyFleetPlanRequest,
    DeleteFleetInstancesRequest,
    DeleteFleetsRequest,
    GetFleetPlanRequest,
)
from dstack.server.routers.deps import ProjectAccess, get_ctx, project_access
from dstack.server.services import fleet_apply, fleet_delete
from dstack.server.services.context import ServerContext

router = APIRouter()


@router.post("/api/project/{project_name}/fleets/get_plan")
async def get_plan(
    body: GetFleetPlanRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    return await fleet_apply.get_plan(ctx, a.session, a.user, a.project, body.spec)


@router.post("/api/project/{project_name}/fleets/apply", response_model=Fleet)
async def apply(
    body: ApplyFleetPlanRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> Fleet:
    return await fleet_apply.apply(ctx, a.session, a.user, a.project, body.plan.spec, body.force)


@router.post("/api/project/{project_name}/fleets/delete")
async def delete(
    body: DeleteFleetsRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    await fleet_delete.delete_fleets(ctx, a.session, a.user, a.project, body.names)
    return {}


@router.post("/api/project/{project_name}/fleets/delete_instances")
async def delete_instances(
    body: DeleteFleetInstancesRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    await fleet_delete.delete_instances(ctx, a.session, a.project, body.name, body.instance_nums)
    return {}
