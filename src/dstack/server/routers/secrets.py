"""Secret endpoints, the original's routes. Any member lists names (and uses secrets in runs);
reading a value, and creating, updating or deleting one, need the project role manager or admin
(or the global admin role): `require_secret_manager` below until the central table owns it."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.secrets import (
    CreateOrUpdateSecretRequest,
    DeleteSecretsRequest,
    GetSecretRequest,
    Secret,
)
from dstack.server.db import tables as t
from dstack.server.routers.deps import AuthError, ProjectAccess, get_ctx, project_access
from dstack.server.services import secrets
from dstack.server.services.context import ServerContext

router = APIRouter()

SECRET_MANAGER_ROLES = ("admin", "manager")


async def require_secret_manager(a: ProjectAccess = Depends(project_access)) -> ProjectAccess:
    """A member who may read and change values: project admin or manager, or a global admin."""
    if a.user.global_role == "admin":
        return a
    member = await a.session.get(t.Member, (a.project.id, a.user.id))
    if member is None or member.project_role not in SECRET_MANAGER_ROLES:
        raise AuthError("Access denied: secret values need the project role manager or admin")
    return a


@router.post("/api/project/{project_name}/secrets/list", response_model=list[Secret])
async def secrets_list(a: ProjectAccess = Depends(project_access)) -> list[Secret]:
    return await secrets.list_secrets(a.session, a.project)


@router.post("/api/project/{project_name}/secrets/get", response_model=Secret)
async def secrets_get(
    body: GetSecretRequest,
    a: ProjectAccess = Depends(require_secret_manager),
    ctx: ServerContext = Depends(get_ctx),
) -> Secret:
    return await secrets.get_secret(a.session, ctx.box, a.project, body.name)


@router.post("/api/project/{project_name}/secrets/create_or_update", response_model=Secret)
async def secrets_create_or_update(
    body: CreateOrUpdateSecretRequest,
    a: ProjectAccess = Depends(require_secret_manager),
    ctx: ServerContext = Depends(get_ctx),
) -> Secret:
    return await secrets.create_or_update(
        a.session, ctx.box, a.project, a.user.name, body.name, body.value
    )


@router.post("/api/project/{project_name}/secrets/delete")
async def secrets_delete(
    body: DeleteSecretsRequest, a: ProjectAccess = Depends(require_secret_manager)
) -> None:
    await secrets.delete_secrets(a.session, a.project, a.user.name, body.secrets_names)
