"""Users and projects as the API returns them."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from dstack.models.wire import WireModel


class UserTokenCreds(WireModel):
    token: str


class User(WireModel):
    id: str
    username: str
    created_at: datetime | None = None
    global_role: str = "user"
    email: str | None = None
    active: bool = True
    creds: UserTokenCreds | None = None  # present only when the token is shown (once)


class Member(WireModel):
    user: User
    project_role: str


class Project(WireModel):
    project_id: str
    project_name: str
    owner: User | None = None
    created_at: datetime | None = None
    members: list[Member] = Field(default_factory=list)
    is_public: bool = False
