"""Volume endpoints: list and get (`services.volumes`), plan and create
(`services.volume_apply`), delete requests (`services.volumes`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.requests import (
    CreateVolumeRequest,
    DeleteVolumesRequest,
    GetVolumeRequest,
)
from dstack.models.volumes import Volume
from dstack.server.db import tables as t
from dstack.server.routers.deps import (
    ProjectAccess,
    get_ctx,
    get_session,
    get_user,
    project_access,
)
from dstack.server.services import volume_apply, volumes
from dstack.server.services.context import ServerContext
from dstack.server.services.users import list_projects

router = APIRouter()


@router.post("/api/project/{project_name}/volumes/list", response_model=list[Volume])
async def volumes_list(a: ProjectAccess = Depends(project_access)) -> list[Volume]:
    return await volumes.list_volumes(a.session, a.project)


@router.post("/api/volumes/list", response_model=list[Volume])
async def volumes_list_all(
    user: t.User = Depends(get_user),
    s=Depends(get_session),  # noqa: ANN001
) -> list[Volume]:
    # Every project the caller is a member of.
    out: list[Volume] = []
    for p in await list_projects(s, user):
        out.extend(await volumes.list_volumes(s, p))
    return out


@router.post("/api/project/{project_name}/volumes/get", response_model=Volume)
async def volumes_get(body: GetVolumeRequest, a: ProjectAccess = Depends(project_access)) -> Volume:
    return await volumes.get_volume(a.session, a.project, body.name)


@router.post("/api/project/{project_name}/volumes/get_plan")
async def volumes_get_plan(
    body: CreateVolumeRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    return await volume_apply.get_plan(ctx, a.session, a.user, a.project, body.configuration)


@router.post("/api/project/{project_name}/volumes/create", response_model=Volume)
async def volumes_create(
    body: CreateVolumeRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> Volume:
    return await volume_apply.create(ctx, a.session, a.user, a.project, body.configuration)


@router.post("/api/project/{project_name}/volumes/delete")
async def volumes_delete(
    body: DeleteVolumesRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    await volumes.delete_volumes(ctx, a.session, a.user, a.project, body.names, body.force)
    return {}
