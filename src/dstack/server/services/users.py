"""Users, projects and membership: lookups and creation (who may call what is decided by
server/authz.py and applied by routers/deps.enforce).

Tokens are looked up by their SHA-256 hash; the token itself exists only in the response that
created it and in the user's client config.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.users import Member, Project, User, UserTokenCreds
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services.crypto import hash_token, new_token

# The statements every authenticated request runs, built once: building one and its cache key
# cost SQLAlchemy about as much as running it.
_BY_TOKEN = select(t.User).where(t.User.token_hash == bindparam("token_hash"))
_ALL_PROJECTS = select(t.Project).where(t.Project.deleted.is_(False)).order_by(t.Project.created_at)
_MEMBER_PROJECTS = _ALL_PROJECTS.join(t.Member, t.Member.project_id == t.Project.id).where(
    t.Member.user_id == bindparam("user_id")
)


async def user_by_token(session: AsyncSession, token: str) -> t.User | None:
    found = await session.execute(_BY_TOKEN, {"token_hash": hash_token(token)})
    row = found.scalar_one_or_none()
    if row is None or not row.active:
        return None
    return row


async def user_with_project(
    session: AsyncSession, token: str, project_name: str
) -> tuple[t.User, t.Project | None, str | None] | None:
    """`user_by_token` and `project_and_role` in one query (the request guard's, for a path
    that names a project): the token's active user, the project of that name (None: none)
    and the user's role in it (None: not a member). None when the token is refused."""
    params = {"token_hash": hash_token(token), "project_name": project_name}
    row = (await session.execute(_user_with_project_query(), params)).first()
    if row is None or not row[0].active:
        return None
    return row[0], row[1], row[2]


@functools.cache
def _user_with_project_query() -> Select[Any]:
    """Built once (on first use, not at import): building the expression cost more than
    running it, on every request to a project's routes."""
    project = (t.Project.name == bindparam("project_name")) & t.Project.deleted.is_(False)
    member = (t.Member.project_id == t.Project.id) & (t.Member.user_id == t.User.id)
    return (
        select(t.User, t.Project, t.Member.project_role)
        .select_from(t.User)
        .outerjoin(t.Project, project)
        .outerjoin(t.Member, member)
        .where(t.User.token_hash == bindparam("token_hash"))
    )


async def create_user(
    session: AsyncSession, name: str, global_role: str = "user", token: str | None = None
) -> tuple[t.User, str]:
    token = token or new_token()
    user = t.User(
        id=str(uuid.uuid4()),
        name=name,
        global_role=global_role,
        token_hash=hash_token(token),
        active=True,
        created_at=utcnow(),
    )
    session.add(user)
    return user, token


async def get_user_by_name(session: AsyncSession, name: str) -> t.User | None:
    q = select(t.User).where(t.User.name == name, t.User.deleted.is_(False))
    return (await session.execute(q)).scalar_one_or_none()


async def get_project(session: AsyncSession, name: str) -> t.Project | None:
    return (
        await session.execute(
            select(t.Project).where(t.Project.name == name, t.Project.deleted.is_(False))
        )
    ).scalar_one_or_none()


async def project_and_role(
    session: AsyncSession, name: str, user_id: str
) -> tuple[t.Project | None, str | None]:
    """The project and the user's role in it (None: not a member), in one query: the access
    check of every project route needs both."""
    row = (
        await session.execute(
            select(t.Project, t.Member.project_role)
            .outerjoin(
                t.Member, (t.Member.project_id == t.Project.id) & (t.Member.user_id == user_id)
            )
            .where(t.Project.name == name, t.Project.deleted.is_(False))
        )
    ).first()
    return (None, None) if row is None else (row[0], row[1])


async def create_project(session: AsyncSession, owner: t.User, name: str) -> t.Project:
    project = t.Project(
        id=str(uuid.uuid4()), name=name, owner_id=owner.id, is_public=False, created_at=utcnow()
    )
    session.add(project)
    await session.flush()
    session.add(t.Member(project_id=project.id, user_id=owner.id, project_role="admin"))
    return project


def user_model(user: t.User, token: str | None = None) -> User:
    return User(
        id=user.id,
        username=user.name,
        created_at=user.created_at,
        global_role=user.global_role,
        email=user.email,
        active=user.active,
        creds=UserTokenCreds(token=token) if token else None,
    )


async def project_model(session: AsyncSession, project: t.Project) -> Project:
    rows = (
        await session.execute(
            select(t.Member, t.User)
            .join(t.User, t.User.id == t.Member.user_id)
            .where(t.Member.project_id == project.id)
        )
    ).all()
    owner = await session.get(t.User, project.owner_id)
    return Project(
        project_id=project.id,
        project_name=project.name,
        owner=user_model(owner) if owner else None,
        created_at=project.created_at,
        members=[Member(user=user_model(u), project_role=m.project_role) for m, u in rows],
        is_public=project.is_public,
    )


async def list_projects(session: AsyncSession, user: t.User) -> list[t.Project]:
    """The projects `user` is a member of (every project for a global admin)."""
    if user.global_role == "admin":
        return list((await session.execute(_ALL_PROJECTS)).scalars())
    return list((await session.execute(_MEMBER_PROJECTS, {"user_id": user.id})).scalars())
