"""Project endpoints: the projects the caller is a member of (every project for an admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.users import Project
from dstack.server.db import tables as t
from dstack.server.routers.deps import ProjectAccess, get_session, get_user, project_access
from dstack.server.services.users import list_projects, project_model

router = APIRouter()


@router.post("/api/projects/list", response_model=list[Project])
async def projects_list(user: t.User = Depends(get_user), s=Depends(get_session)) -> list[Project]:  # noqa: ANN001
    return [await project_model(s, p) for p in await list_projects(s, user)]


@router.post("/api/projects/{project_name}/get", response_model=Project)
async def project_get(a: ProjectAccess = Depends(project_access)) -> Project:
    return await project_model(a.session, a.project)
