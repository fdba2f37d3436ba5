"""`~/.dstack/server/config.yml`: which projects the server has and each one's cloud backends,
in the original's format, so a user's file carries over. Only the models and their rules; the
server loads the file, stores the secrets encrypted and builds the backends."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dstack.models.backends import CONFIGURABLE_BACKENDS, AnyBackendConfig
from dstack.models.common import BACKEND_IDS, ConfigModel, field_error
from dstack.models.names import PROJECT_NAME_RE, name_problem
from dstack.models.wire import WireModel

# The project-name rule of the original (letters, digits, `-` and `_`, at most 50).


def unsupported_backend_message(btype: Any) -> str:
    supported = ", ".join(CONFIGURABLE_BACKENDS)
    if btype in BACKEND_IDS:
        return f"backend type {btype} is not supported by this server yet (supported: {supported})"
    return f"unknown backend type {btype!r} (supported: {supported})"


class ProjectConfig(ConfigModel):
    name: str
    backends: list[AnyBackendConfig] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not PROJECT_NAME_RE.fullmatch(value):
            raise ValueError(name_problem("project", value, PROJECT_NAME_RE))
        return value

    @field_validator("backends", mode="before")
    @classmethod
    def _types(cls, value: Any) -> Any:
        """Say which types this server configures before pydantic says "Input should be
        'aws'", and refuse a second backend of one type (a project has one of each)."""
        if not isinstance(value, list):
            return value
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            btype = item.get("type")
            if btype is None:
                raise field_error(f"{i}", "a backend needs a `type`")
            if btype not in CONFIGURABLE_BACKENDS:
                raise field_error(f"{i}.type", unsupported_backend_message(btype))
            if btype in seen:
                raise field_error(f"{i}.type", f"duplicate backend type {btype} in this project")
            seen.add(btype)
        return value


class ServerConfig(ConfigModel):
    projects: list[ProjectConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ServerConfig:
        seen: set[str] = set()
        for i, project in enumerate(self.projects):
            if project.name in seen:
                raise field_error(f"projects.{i}.name", f"duplicate project name {project.name}")
            seen.add(project.name)
        return self


class BackendInfo(WireModel):
    """One of a project's backends as the API shows it: secrets redacted, and whether the
    server could set it up (`reason` says why not)."""

    name: str
    type: str
    config: dict[str, Any] = Field(default_factory=dict)
    status: Literal["ok", "error"] = "ok"
    reason: str | None = None
    # Configured for the whole server (the server's own machine, SSH hosts), not per project.
    server_wide: bool = False


class BackendYAML(WireModel):
    name: str
    config_yaml: str
