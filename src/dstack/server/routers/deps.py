"""Authentication and project access for every endpoint: the bearer token is checked against
the stored hash, and the project against the caller's membership."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext
from dstack.server.services.users import project_for_member, user_by_token


class AuthError(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


def get_ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


async def get_session(ctx: ServerContext = Depends(get_ctx)) -> AsyncIterator[AsyncSession]:
    async with ctx.db.session() as s:
        yield s


async def get_user(request: Request, s: AsyncSession = Depends(get_session)) -> t.User:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Missing bearer token: send `Authorization: Bearer <token>`")
    user = await user_by_token(s, token.strip())
    if user is None:
        raise AuthError("Invalid token")
    return user


@dataclass
class ProjectAccess:
    user: t.User
    project: t.Project
    session: AsyncSession


async def project_access(
    project_name: str,
    user: t.User = Depends(get_user),
    s: AsyncSession = Depends(get_session),
) -> ProjectAccess:
    project = await project_for_member(s, user, project_name)
    return ProjectAccess(user=user, project=project, session=s)
