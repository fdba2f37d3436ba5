"""Fleet endpoints: list and get (`services.fleets`), plan and apply
(`services.fleet_apply`), delete (`services.fleet_delete`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends

from dstack.errors import ServerClientError
from dstack.models.fleets import Fleet
from dstack.models.requests import (
    ApplyFleetPlanRequest,
    DeleteFleetInstancesRequest,
    DeleteFleetsRequest,
    GetFleetPlanRequest,
    GetFleetRequest,
)
from dstack.server import authz
from dstack.server.db import tables as t
from dstack.server.routers.deps import (
    AuthError,
    ProjectAccess,
    get_ctx,
    get_session,
    get_user,
    project_access,
)
from dstack.server.services import fleet_apply, fleet_delete, fleets
from dstack.server.services.context import ServerContext
from dstack.server.services.users import list_projects

router = APIRouter()


def _check_hosts(
    ctx: ServerContext, a: ProjectAccess, configurations: list[dict[str, Any]]
) -> None:
    """The table's rule for fleet writes: hosts the project does not rent need project admin."""
    assert a.rule is not None
    admin = a.user.global_role == "admin"
    for conf in configurations:
        unrented = fleets.on_unrented_hosts(ctx, conf)
        if not authz.host_fleet_role_ok(a.rule, admin, a.role, unrented):
            name = conf.get("name") or "(unnamed)"
            raise AuthError(
                f"Fleet {name} is on hosts the project does not rent (SSH hosts or the server's"
                f" own machine): managing it requires the admin role in project {a.project.name}",
                code="forbidden",
            )


async def _current_confs(a: ProjectAccess, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        row = await fleet_delete.current_fleet(a.session, a.project, name)
        if row is not None:
            out.append(json.loads(row.spec).get("configuration") or {})
    return out


@router.post("/api/project/{project_name}/fleets/list", response_model=list[Fleet])
async def fleets_list(a: ProjectAccess = Depends(project_access)) -> list[Fleet]:
    return await fleets.list_fleets(a.session, a.project)


@router.post("/api/fleets/list", response_model=list[Fleet])
async def fleets_list_all(user: t.User = Depends(get_user), s=Depends(get_session)) -> list[Fleet]:  # noqa: ANN001
    # Every project the caller is a member of (`dstack fleet` without a project).
    out: list[Fleet] = []
    for p in await list_projects(s, user):
        out.extend(await fleets.list_fleets(s, p))
    return out


@router.post("/api/project/{project_name}/fleets/get", response_model=Fleet)
async def fleets_get(body: GetFleetRequest, a: ProjectAccess = Depends(project_access)) -> Fleet:
    if not body.name and not body.id:
        raise ServerClientError("Specify the fleet name or id", field="name")
    return await fleets.get_fleet(a.session, a.project, body.name, body.id)


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
    conf = body.plan.spec.get("configuration")
    conf = conf if isinstance(conf, dict) else {}  # the service refuses it, naming the field
    current = await _current_confs(a, [conf["name"]] if conf.get("name") else [])
    _check_hosts(ctx, a, [conf, *current])
    plan = body.plan
    return await fleet_apply.apply(
        ctx, a.session, a.user, a.project, plan.spec, body.force, plan.current_resource
    )


@router.post("/api/project/{project_name}/fleets/delete")
async def delete(
    body: DeleteFleetsRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    _check_hosts(ctx, a, await _current_confs(a, body.names))
    await fleet_delete.delete_fleets(ctx, a.session, a.user, a.project, body.names)
    return {}


@router.post("/api/project/{project_name}/fleets/delete_instances")
async def delete_instances(
    body: DeleteFleetInstancesRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    _check_hosts(ctx, a, await _current_confs(a, [body.name]))
    await fleet_delete.delete_instances(ctx, a.session, a.project, body.name, body.instance_nums)
    return {}
