"""User endpoints, in the original's paths. Who may call each is in `authz.RULES` (the global
admin, except `get_my_user`); a token appears only in the answer that creates or rotates it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.teams import (
    CreateUserRequest,
    DeleteUsersRequest,
    GetUserRequest,
    RefreshTokenRequest,
    UpdateUserRequest,
)
from dstack.models.users import User
from dstack.server.db import tables as t
from dstack.server.routers.deps import get_session, get_user
from dstack.server.services import teams
from dstack.server.services.users import user_model

router = APIRouter(prefix="/api/users")


def _forget_callers(request: Request) -> None:
    """The service proxy caches who a token is; a changed user must not pass it any more."""
    proxy = getattr(request.app.state, "proxy", None)
    if proxy is not None:
        proxy.registry.forget_callers()


@router.post("/get_my_user", response_model=User, response_model_exclude_none=True)
async def get_my_user(user: t.User = Depends(get_user)) -> User:
    return user_model(user)


@router.post("/list", response_model=list[User], response_model_exclude_none=True)
async def users_list(s: AsyncSession = Depends(get_session)) -> list[User]:
    return [user_model(u) for u in await teams.list_users(s)]


@router.post("/get_user", response_model=User, response_model_exclude_none=True)
async def users_get(body: GetUserRequest, s: AsyncSession = Depends(get_session)) -> User:
    return user_model(await teams.user_named(s, body.username))


@router.post("/create", response_model=User, response_model_exclude_none=True)
async def users_create(body: CreateUserRequest, s: AsyncSession = Depends(get_session)) -> User:
    user, token = await teams.add_user(s, body)
    await s.commit()
    return user_model(user, token)


@router.post("/update", response_model=User, response_model_exclude_none=True)
async def users_update(
    body: UpdateUserRequest, request: Request, s: AsyncSession = Depends(get_session)
) -> User:
    user = await teams.update_user(s, body)
    await s.commit()
    _forget_callers(request)
    return user_model(user)


@router.post("/refresh_token", response_model=User, response_model_exclude_none=True)
async def users_refresh_token(
    body: RefreshTokenRequest, request: Request, s: AsyncSession = Depends(get_session)
) -> User:
    user, token = await teams.refresh_token(s, body.username)
    await s.commit()
    _forget_callers(request)
    return user_model(user, token)


@router.post("/delete")
async def users_delete(
    body: DeleteUsersRequest, request: Request, s: AsyncSession = Depends(get_session)
) -> dict:
    await teams.delete_users(s, body.users)
    await s.commit()
    _forget_callers(request)
    return {}
