"""Project endpoints, in the original's paths. Who may call each is in `authz.RULES`; members
below manager reach `add_members`/`remove_members` only to join a public project as `user` or
to leave (`authz.self_service_allowed`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ServerClientError
from dstack.models.teams import (
    AddMembersRequest,
    CreateProjectRequest,
    DeleteProjectsRequest,
    RemoveMembersRequest,
    SetMembersRequest,
    UpdateProjectRequest,
)
from dstack.models.users import Project
from dstack.server import authz
from dstack.server.db import tables as t
from dstack.server.routers.deps import (
    AuthError,
    ProjectAccess,
    get_session,
    get_user,
    project_access,
    require_project,
)
from dstack.server.services import teams
from dstack.server.services.users import create_project, get_project, project_model

router = APIRouter()
PS = "/api/projects/{project_name}"


@router.post("/api/projects/list", response_model=list[Project])
async def projects_list(
    user: t.User = Depends(get_user), s: AsyncSession = Depends(get_session)
) -> list[Project]:
    return [await project_model(s, p) for p in await teams.visible_projects(s, user)]


@router.post("/api/projects/create", response_model=Project)
async def projects_create(
    body: CreateProjectRequest,
    user: t.User = Depends(get_user),
    s: AsyncSession = Depends(get_session),
) -> Project:
    if await get_project(s, body.project_name) is not None:
        raise ServerClientError(f"Project {body.project_name} already exists", field="project_name")
    project = await create_project(s, user, body.project_name)
    project.is_public = body.is_public
    await s.commit()
    return await project_model(s, project)


@router.post("/api/projects/delete")
async def projects_delete(
    body: DeleteProjectsRequest,
    user: t.User = Depends(get_user),
    s: AsyncSession = Depends(get_session),
) -> dict:
    projects = [
        await require_project(s, user, n, authz.Need.PROJECT_ADMIN) for n in body.projects_names
    ]
    for project in projects:
        await teams.delete_project(s, project)
    await s.commit()
    return {}


@router.post(f"{PS}/get", response_model=Project)
async def project_get(a: ProjectAccess = Depends(project_access)) -> Project:
    return await project_model(a.session, a.project)


@router.post(f"{PS}/update", response_model=Project)
async def project_update(
    body: UpdateProjectRequest, a: ProjectAccess = Depends(project_access)
) -> Project:
    a.project.is_public = body.is_public
    await a.session.commit()
    return await project_model(a.session, a.project)


def _may_grant_admin(a: ProjectAccess) -> bool:
    return a.user.global_role == "admin" or a.role == "admin"


@router.post(f"{PS}/set_members", response_model=Project)
async def project_set_members(
    body: SetMembersRequest, a: ProjectAccess = Depends(project_access)
) -> Project:
    await teams.set_members(a.session, a.project, body.members, _may_grant_admin(a))
    await a.session.commit()
    return await project_model(a.session, a.project)


def _self_service(a: ProjectAccess, adding: bool, changes: list[tuple[str, str | None]]) -> None:
    if a.verdict is not authz.Verdict.SELF_SERVICE:
        return
    if not authz.self_service_allowed(
        a.user.name, a.role is not None, a.project.is_public, adding, changes
    ):
        raise AuthError(
            f"Requires the manager role in project {a.project.name} (others may only join a"
            " public project as user, or leave)",
            code="forbidden",
        )


@router.post(f"{PS}/add_members", response_model=Project)
async def project_add_members(
    body: AddMembersRequest, a: ProjectAccess = Depends(project_access)
) -> Project:
    _self_service(a, True, [(m.username, m.project_role.value) for m in body.members])
    await teams.add_members(a.session, a.project, body.members, _may_grant_admin(a))
    await a.session.commit()
    return await project_model(a.session, a.project)


@router.post(f"{PS}/remove_members", response_model=Project)
async def project_remove_members(
    body: RemoveMembersRequest, a: ProjectAccess = Depends(project_access)
) -> Project:
    _self_service(a, False, [(n, None) for n in body.usernames])
    await teams.remove_members(a.session, a.project, body.usernames, _may_grant_admin(a))
    await a.session.commit()
    return await project_model(a.session, a.project)
