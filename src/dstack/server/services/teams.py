"""Users, projects and members as the global admin and project managers change them. Access
is decided before these run (authz table, routers/deps.enforce); what stays here are the
invariants no role may break: a server always keeps an active global admin, a project always
keeps an admin, and a project with live resources is not deleted from under them."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ResourceNotExistsError, ServerClientError
from dstack.models.runs import RunStatus
from dstack.models.teams import CreateUserRequest, MemberSetting, UpdateUserRequest
from dstack.server.db import tables as t
from dstack.server.services.crypto import hash_token, new_token
from dstack.server.services.users import create_user, get_project, get_user_by_name

FINISHED_RUNS = [s.value for s in RunStatus if s.is_finished()]


async def user_named(s: AsyncSession, name: str) -> t.User:
    user = await get_user_by_name(s, name)
    if user is None:
        raise ResourceNotExistsError(f"User {name} not found", field="username")
    return user


async def list_users(s: AsyncSession) -> list[t.User]:
    q = select(t.User).where(t.User.deleted.is_(False)).order_by(t.User.created_at)
    return list((await s.execute(q)).scalars())


async def add_user(s: AsyncSession, req: CreateUserRequest) -> tuple[t.User, str]:
    if await get_user_by_name(s, req.username) is not None:
        raise ServerClientError(f"User {req.username} already exists", field="username")
    user, token = await create_user(s, req.username, global_role=req.global_role.value)
    user.email = req.email
    user.active = req.active
    return user, token


async def _other_active_admins(s: AsyncSession, user: t.User) -> int:
    q = select(func.count()).select_from(t.User).where(
        t.User.global_role == "admin", t.User.active.is_(True), t.User.deleted.is_(False),
        t.User.id != user.id,
    )  # fmt: skip
    return (await s.execute(q)).scalar_one()


async def _keep_an_admin(s: AsyncSession, user: t.User, what: str) -> None:
    if user.global_role == "admin" and user.active and not await _other_active_admins(s, user):
        raise ServerClientError(
            f"Cannot {what} {user.name}: it is the server's only active global admin",
            field="username",
        )


async def update_user(s: AsyncSession, req: UpdateUserRequest) -> t.User:
    user = await user_named(s, req.username)
    demoting = req.global_role is not None and req.global_role.value != "admin"
    if demoting or req.active is False:
        await _keep_an_admin(s, user, "demote" if demoting else "deactivate")
    if req.global_role is not None:
        user.global_role = req.global_role.value
    if req.email is not None:
        user.email = req.email or None
    if req.active is not None:
        user.active = req.active
    return user


async def refresh_token(s: AsyncSession, name: str) -> tuple[t.User, str]:
    user = await user_named(s, name)
    token = new_token()
    user.token_hash = hash_token(token)
    return user, token


async def delete_users(s: AsyncSession, names: list[str]) -> None:
    """Soft delete: the row stays for the runs and events that name it, renamed so that the
    name is free, with a token nobody knows and no memberships."""
    users = [await user_named(s, n) for n in names]
    for user in users:
        await _keep_an_admin(s, user, "delete")
        await s.execute(delete(t.Member).where(t.Member.user_id == user.id))
        user.deleted, user.active = True, False
        user.name = f"~{user.id}"
        user.token_hash = hash_token(new_token())


# -- projects -------------------------------------------------------------------------------


async def project_named(s: AsyncSession, name: str) -> t.Project:
    project = await get_project(s, name)
    if project is None:
        raise ResourceNotExistsError(f"Project {name} not found", field="project_name")
    return project


async def visible_projects(s: AsyncSession, user: t.User) -> list[t.Project]:
    """Member projects and public ones (every project for a global admin)."""
    q = select(t.Project).where(t.Project.deleted.is_(False)).order_by(t.Project.created_at)
    if user.global_role != "admin":
        mine = select(t.Member.project_id).where(t.Member.user_id == user.id)
        q = q.where(t.Project.id.in_(mine) | t.Project.is_public.is_(True))
    return list((await s.execute(q)).scalars())


async def _live(s: AsyncSession, project: t.Project) -> list[str]:
    checks = [
        ("runs", select(func.count()).select_from(t.Run).where(
            t.Run.project_id == project.id, t.Run.deleted.is_(False),
            t.Run.status.not_in(FINISHED_RUNS))),
        ("fleets", select(func.count()).select_from(t.Fleet).where(
            t.Fleet.project_id == project.id, t.Fleet.deleted.is_(False))),
        ("volumes", select(func.count()).select_from(t.Volume).where(
            t.Volume.project_id == project.id, t.Volume.deleted.is_(False))),
        ("gateways", select(func.count()).select_from(t.Gateway).where(
            t.Gateway.project_id == project.id, t.Gateway.deleted.is_(False))),
    ]  # fmt: skip
    out = []
    for what, q in checks:
        n = (await s.execute(q)).scalar_one()
        if n:
            out.append(f"{n} {what}")
    return out


async def delete_project(s: AsyncSession, project: t.Project) -> None:
    live = await _live(s, project)
    if live:
        raise ServerClientError(
            f"Project {project.name} still has {', '.join(live)}: stop the runs and delete the"
            " fleets, volumes and gateways first",
            field="projects_names",
        )
    await s.execute(delete(t.Member).where(t.Member.project_id == project.id))
    project.deleted, project.is_public = True, False
    project.name = f"~{project.id}"


async def _users_for(s: AsyncSession, names: list[str]) -> dict[str, t.User]:
    return {n: await user_named(s, n) for n in dict.fromkeys(names)}


async def set_members(s: AsyncSession, project: t.Project, members: list[MemberSetting],
                      caller_may_grant_admin: bool) -> None:  # fmt: skip
    """Replace the member list. Only project admins grant or revoke `admin`."""
    users = await _users_for(s, [m.username for m in members])
    current = {m.user_id: m for m in await _members(s, project)}
    wanted = {users[m.username].id: m.project_role.value for m in members}
    _check_admin_changes(current, wanted, caller_may_grant_admin)
    if "admin" not in wanted.values():
        raise ServerClientError(f"Project {project.name} must keep an admin", field="members")
    await s.execute(delete(t.Member).where(t.Member.project_id == project.id))
    await s.flush()
    for user_id, role in wanted.items():
        s.add(t.Member(project_id=project.id, user_id=user_id, project_role=role))


async def add_members(s: AsyncSession, project: t.Project, members: list[MemberSetting],
                      caller_may_grant_admin: bool) -> None:  # fmt: skip
    users = await _users_for(s, [m.username for m in members])
    current = {m.user_id: m for m in await _members(s, project)}
    wanted = {m.user_id: m.project_role for m in current.values()}
    wanted.update({users[m.username].id: m.project_role.value for m in members})
    _check_admin_changes(current, wanted, caller_may_grant_admin)
    for user_id, role in wanted.items():
        row = current.get(user_id)
        if row is None:
            s.add(t.Member(project_id=project.id, user_id=user_id, project_role=role))
        else:
            row.project_role = role


async def remove_members(s: AsyncSession, project: t.Project, names: list[str],
                         caller_may_grant_admin: bool) -> None:  # fmt: skip
    users = await _users_for(s, names)
    current = {m.user_id: m for m in await _members(s, project)}
    gone = {u.id for u in users.values()}
    wanted = {uid: m.project_role for uid, m in current.items() if uid not in gone}
    _check_admin_changes(current, wanted, caller_may_grant_admin)
    if "admin" not in wanted.values():
        raise ServerClientError(f"Project {project.name} must keep an admin", field="usernames")
    for uid in gone & current.keys():
        await s.delete(current[uid])


def _check_admin_changes(current: dict[str, t.Member], wanted: dict[str, str],
                         may: bool) -> None:  # fmt: skip
    if may:
        return
    for uid in current.keys() | wanted.keys():
        before = current[uid].project_role if uid in current else None
        if (before == "admin") != (wanted.get(uid) == "admin"):
            raise ServerClientError(
                "Only a project admin may grant or revoke the admin role", field="members"
            )


async def _members(s: AsyncSession, project: t.Project) -> list[t.Member]:
    q = select(t.Member).where(t.Member.project_id == project.id)
    return list((await s.execute(q)).scalars())
