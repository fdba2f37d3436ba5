"""Gateway endpoints. Gateways need a cloud backend and none is configured yet, so the list
is empty; the endpoint exists so that `dstack gateway` works."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.volumes import Gateway
from dstack.server.routers.deps import ProjectAccess, project_access

router = APIRouter()


@router.post("/api/project/{project_name}/gateways/list", response_model=list[Gateway])
async def gateways_list(a: ProjectAccess = Depends(project_access)) -> list[Gateway]:
    return []
