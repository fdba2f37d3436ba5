"""Secret endpoints, the original's routes. Any member lists names (and uses secrets in runs);
reading a value, and creating, updating or deleting one, need the project role manager or admin
(or the global admin role): the rules are in `server/authz.py`, like every route's."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.secrets import (
    CreateOrUpdateSecretRequest,
    DeleteSecretsRequest,
    GetSecretRequest,
    Secret,
)
from dstack.server.routers.deps import ProjectAccess, get_ctx, project_access
from dstack.server.services import secrets
from dstack.server.services.context import ServerContext

router = APIRouter()


@router.post("/api/project/{project_name}/secrets/list", response_model=list[Secret])
async def secrets_list(a: ProjectAccess = Depends(project_access)) -> list[Secret]:
    return await secrets.list_secrets(a.session, a.project)


@router.post("/api/project/{project_name}/secrets/get", response_model=Secret)
async def secrets_get(
    body: GetSecretRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> Secret:
    return await secrets.get_secret(a.session, ctx.box, a.project, body.name)


@router.post("/api/project/{project_name}/secrets/create_or_update", response_model=Secret)
async def secrets_create_or_update(
    body: CreateOrUpdateSecretRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> Secret:
    return await secrets.create_or_update(
        a.session, ctx.box, a.project, a.user.name, body.name, body.value
    )


@router.post("/api/project/{project_name}/secrets/delete")
async def secrets_delete(
    body: DeleteSecretsRequest, a: ProjectAccess = Depends(project_access)
) -> None:
    await secrets.delete_secrets(a.session, a.project, a.user.name, body.secrets_names)
