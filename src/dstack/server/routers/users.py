"""User endpoints: who the token belongs to."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.users import User
from dstack.server.db import tables as t
from dstack.server.routers.deps import get_user
from dstack.server.services.users import user_model

router = APIRouter()


@router.post("/api/users/get_my_user", response_model=User)
async def get_my_user(user: t.User = Depends(get_user)) -> User:
    return user_model(user)
