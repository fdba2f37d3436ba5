"""Request bodies of the user and project routes (the original's paths and field names).
Strict, like every request: an unknown field is a 422 naming it."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from dstack.models.requests import Request

NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,50}$"  # users and projects, as in the original


class GlobalRole(str, Enum):
    ADMIN = "admin"
    USER = "user"


class ProjectRole(str, Enum):
    ADMIN = "admin"
    MANAGER = "manager"
    USER = "user"


Name = Field(pattern=NAME_PATTERN)


class GetUserRequest(Request):
    username: str


class CreateUserRequest(Request):
    username: str = Name
    global_role: GlobalRole = GlobalRole.USER
    email: str | None = Field(default=None, max_length=200)
    active: bool = True


class UpdateUserRequest(Request):
    """Only the fields given change."""

    username: str
    global_role: GlobalRole | None = None
    email: str | None = Field(default=None, max_length=200)
    active: bool | None = None


class RefreshTokenRequest(Request):
    username: str


class DeleteUsersRequest(Request):
    users: list[str] = Field(min_length=1)


class CreateProjectRequest(Request):
    project_name: str = Name
    is_public: bool = False


class DeleteProjectsRequest(Request):
    projects_names: list[str] = Field(min_length=1)


class UpdateProjectRequest(Request):
    is_public: bool


class MemberSetting(Request):
    username: str
    project_role: ProjectRole = ProjectRole.USER


class SetMembersRequest(Request):
    members: list[MemberSetting]


class AddMembersRequest(Request):
    members: list[MemberSetting] = Field(min_length=1)


class RemoveMembersRequest(Request):
    usernames: list[str] = Field(min_length=1)
