"""Backend endpoints, in the original's paths. Backends come from the server's `config.yml`,
so the API shows them (secrets redacted) and refuses to change them, saying where they are
configured; it never answers a write with a silent 404."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.server_config import BackendInfo, BackendYAML
from dstack.server.db import tables as t
from dstack.server.routers.deps import ProjectAccess, get_ctx, get_user, project_access
from dstack.server.services import backend_configs
from dstack.server.services.context import ServerContext

router = APIRouter()
PREFIX = "/api/project/{project_name}/backends"


@router.post("/api/backends/list_types", response_model=list[str])
async def backends_list_types(user: t.User = Depends(get_user)) -> list[str]:
    return backend_configs.configurable_types()


@router.post(f"{PREFIX}/list", response_model=list[BackendInfo])
async def backends_list(
    a: ProjectAccess = Depends(project_access), ctx: ServerContext = Depends(get_ctx)
) -> list[BackendInfo]:
    return await backend_configs.list_backends(ctx, a.session, a.project)


@router.post(f"{PREFIX}/{{backend_name}}/config_info", response_model=BackendInfo)
async def backends_config_info(
    backend_name: str,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> BackendInfo:
    return await backend_configs.get_backend(ctx, a.session, a.project, backend_name)


@router.post(f"{PREFIX}/{{backend_name}}/get_yaml", response_model=BackendYAML)
async def backends_get_yaml(
    backend_name: str,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> BackendYAML:
    return await backend_configs.get_backend_yaml(ctx, a.session, a.project, backend_name)


async def _refuse(a: ProjectAccess = Depends(project_access)) -> None:
    backend_configs.refuse_write()


for _action in ("create", "update", "delete", "create_yaml", "update_yaml"):
    router.add_api_route(
        f"{PREFIX}/{_action}", _refuse, methods=["POST"], name=f"backends_{_action}"
    )
