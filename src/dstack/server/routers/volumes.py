"""Volume endpoints. Volumes are created by backends that have them and none is configured
yet, so the list is empty; the endpoint exists so that `dstack volume` works."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.volumes import Volume
from dstack.server.routers.deps import ProjectAccess, project_access

router = APIRouter()


@router.post("/api/project/{project_name}/volumes/list", response_model=list[Volume])
async def volumes_list(a: ProjectAccess = Depends(project_access)) -> list[Volume]:
    return []
