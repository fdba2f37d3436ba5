"""The six `.dstack.yml` configuration types and `parse_configuration`, the way in for a mapping.

It raises nothing but `ConfigurationError`, whose text names the field. Reading a file (and
adding its name and line to the error) is `loading.py`'s; the JSON Schema is `schema.py`'s:
both build on these models, so neither may be imported from here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from dstack.errors import ConfigurationError
from dstack.models.common import (
    GROUP_NAME_RE,
    InactivityDuration,
    Port,
    Shorthand,
    field_error,
    int_range,
    parse_entity_ref,
    parse_python_version,
)
from dstack.models.envs import Env
from dstack.models.fleets_config import FleetConfiguration
from dstack.models.gateways_config import GatewayConfiguration
from dstack.models.mounts import (
    Files,
    MountPoint,
    Repos,
)
from dstack.models.profiles import ProfileParams
from dstack.models.resources import ResourcesSpec
from dstack.models.services import (
    GROUP_LEVEL_FIELDS,
    ModelSpec,
    ProbeConfig,
    RateLimit,
    ReplicaGroup,
    Replicas,
    ScalingSpec,
    check_scaling,
)
from dstack.models.validation import validate_model
from dstack.models.volumes_config import VolumeConfiguration

_WINDSURF_VERSION_RE = re.compile(r"^.+@[0-9a-fA-F]+$")


class RegistryAuth(BaseModel):
    model_config = {"extra": "forbid", "coerce_numbers_to_str": True, "defer_build": True}

    username: str
    password: str


def _check_user(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    if len(parts) > 2 or any(not p.strip() for p in parts):
        raise ValueError(f"invalid user '{value}': expected user[:group]")
    if any(p.strip().startswith("-") and p.strip()[1:].isdigit() for p in parts):
        raise ValueError(f"invalid user '{value}': ids must not be negative")
    return value


def _check_shell(value: Any) -> Any:
    if isinstance(value, str) and value not in ("sh", "bash") and not value.startswith("/"):
        raise ValueError(f"unsupported shell '{value}': use sh, bash or an absolute path")
    return value


class BaseRunConfiguration(ProfileParams):
    """Fields common to dev environments, tasks and services (§4) plus profile parameters."""

    name: str | None = None
    image: str | None = None
    user: Annotated[str | None, BeforeValidator(_check_user)] = None
    privileged: bool = False
    entrypoint: str | None = None
    working_dir: str | None = None
    home_dir: str = "/root"
    registry_auth: RegistryAuth | None = None
    python: Annotated[
        str | None, BeforeValidator(parse_python_version), Shorthand(({"type": "number"},))
    ] = None
    nvcc: bool | None = None
    docker: bool | None = None
    single_branch: bool | None = None
    env: Env = Field(default_factory=dict)
    shell: Annotated[str | None, BeforeValidator(_check_shell)] = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority: int | None = Field(default=None, ge=0, le=100)
    volumes: list[MountPoint] = Field(default_factory=list)
    repos: Repos = Field(default_factory=list)
    files: Files = Field(default_factory=list)
    dstack: bool = False
    setup: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _image_sources(self) -> BaseRunConfiguration:
        if self.image is not None and self.python is not None:
            raise field_error("python", "`image` and `python` are mutually exclusive")
        if self.docker:
            for other in ("image", "python", "nvcc"):
                if getattr(self, other):
                    raise field_error("docker", f"`docker` and `{other}` are mutually exclusive")
        return self


class DevEnvironmentConfiguration(BaseRunConfiguration):
    type: Literal["dev-environment"]
    ports: list[Port] = Field(default_factory=list)
    ide: Literal["vscode", "cursor", "windsurf", "zed"] | None = None
    version: str | None = None
    init: list[str] = Field(default_factory=list)
    inactivity_duration: InactivityDuration = None

    @model_validator(mode="after")
    def _dev_rules(self) -> DevEnvironmentConfiguration:
        if self.entrypoint is not None:
            raise field_error("entrypoint", "entrypoint is not supported for dev environments")
        if self.version is not None and self.ide is None:
            raise field_error("version", "`version` requires `ide`")
        if self.ide == "windsurf" and self.version and not _WINDSURF_VERSION_RE.match(self.version):
            raise field_error("version", "windsurf version must be `version@commit`")
        if self.dstack and self.inactivity_duration is not None:
            raise field_error(
                "inactivity_duration", "`inactivity_duration` is not allowed with `dstack: true`"
            )
        return self


class NodeGroup(BaseModel):
    """Nodes of one kind in a heterogeneous task; resources are not inherited."""

    model_config = {"extra": "forbid", "coerce_numbers_to_str": True, "defer_build": True}

    name: str | None = None
    nodes: int = Field(default=1, ge=1)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    commands: list[str] | None = None
    ports: list[Port] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not GROUP_NAME_RE.match(value):
            raise ValueError(f"invalid group name '{value}' (lowercase letters, digits, -)")
        return value


def _name_groups(groups: list[Any]) -> None:
    """Give unnamed groups their index as name and reject duplicates."""
    seen: set[str] = set()
    for index, group in enumerate(groups):
        if group.name is None:
            group.name = str(index)
        if group.name in seen:
            raise field_error(f"groups.{index}.name", f"duplicate group name '{group.name}'")
        seen.add(group.name)


class TaskConfiguration(BaseRunConfiguration):
    type: Literal["task"]
    commands: list[str] = Field(default_factory=list)
    ports: list[Port] = Field(default_factory=list)
    nodes: int = Field(default=1, ge=1)
    groups: list[NodeGroup] | None = None

    @model_validator(mode="after")
    def _task_rules(self) -> TaskConfiguration:
        if self.groups is None:
            if not self.commands and self.image is None:
                raise field_error("commands", "either `commands` or `image` must be set")
            return self
        # By value, so that a dumped configuration (`nodes: 1` next to `groups`) re-parses.
        if self.nodes != 1:
            raise field_error("groups", "`nodes` and `groups` are mutually exclusive")
        if not self.groups:
            raise field_error("groups", "groups must not be empty")
        for field in ("commands", "ports", "entrypoint"):
            if getattr(self, field):
                raise field_error(field, f"top-level `{field}` is not allowed with `groups`")
        _name_groups(self.groups)
        for index, group in enumerate(self.groups):
            if not group.commands and self.image is None:
                raise field_error(
                    f"groups.{index}.commands",
                    "each group needs `commands` unless the task sets `image`",
                )
        return self

    @property
    def total_nodes(self) -> int:
        return sum(g.nodes for g in self.groups) if self.groups else self.nodes


def _gateway(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    return parse_entity_ref(value)


def _replicas_default() -> Any:
    return int_range(1, 1)


class ServiceConfiguration(BaseRunConfiguration):
    type: Literal["service"]
    commands: list[str] = Field(default_factory=list)
    port: Port
    gateway: Annotated[bool | str | None, BeforeValidator(_gateway)] = None
    strip_prefix: bool = True
    model: ModelSpec | None = None
    https: bool | Literal["auto"] | None = None
    auth: bool = True
    replicas: Replicas = Field(default_factory=_replicas_default)
    scaling: ScalingSpec | None = None
    rate_limits: list[RateLimit] = Field(default_factory=list)
    probes: list[ProbeConfig] | None = None
    groups: list[ReplicaGroup] | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_groups(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("replicas"), list):
            if "groups" in value:
                raise ValueError("`replicas` (as a list) and `groups` are mutually exclusive")
            value = dict(value)
            value["groups"] = value.pop("replicas")
        return value

    @model_validator(mode="after")
    def _service_rules(self) -> ServiceConfiguration:
        _unique_prefixes(self.rate_limits)
        if self.probes is not None and len({p.model_dump_json() for p in self.probes}) != len(
            self.probes
        ):
            raise field_error("probes", "probes must be unique")
        if self.groups is None:
            check_scaling(self.replicas, self.scaling)
            if not self.commands and self.image is None:
                raise field_error("commands", "either `commands` or `image` must be set")
            return self
        self._check_groups(self.groups)
        return self

    @classmethod
    def _default(cls, field: str) -> Any:
        return cls.model_fields[field].default

    def _check_groups(self, groups: list[ReplicaGroup]) -> None:
        if self.replicas != _replicas_default():
            raise field_error("groups", "`replicas` and `groups` are mutually exclusive")
        if not groups:
            raise field_error("groups", "groups must not be empty")
        for field in ("scaling", "commands"):
            if getattr(self, field):
                raise field_error(field, f"top-level `{field}` is not allowed with `groups`")
        _name_groups(groups)
        set_here = {
            f for f in GROUP_LEVEL_FIELDS if getattr(self, f) not in (None, self._default(f))
        }
        routers = 0
        for index, group in enumerate(groups):
            where = f"groups.{index}"
            for field in GROUP_LEVEL_FIELDS:
                if field in set_here and getattr(group, field) is not None:
                    raise field_error(
                        f"{where}.{field}",
                        f"`{field}` may be set on the service or in groups, not both",
                    )
            _check_image_sources(self, group, where)
            if not group.commands and not (group.image or self.image):
                raise field_error(f"{where}.commands", "each group needs `commands` or an `image`")
            routers += group.router is not None
        if routers > 1:
            raise field_error("groups", "at most one group may have a `router`")


def _check_image_sources(service: ServiceConfiguration, group: ReplicaGroup, where: str) -> None:
    """An image comes from one place: `image`, `docker`, or the default (`python`/`nvcc`)."""
    service_kind = _image_kind(service.image, service.docker, service.python, service.nvcc)
    group_kind = _image_kind(group.image, group.docker, group.python, group.nvcc)
    if service_kind and group_kind and service_kind != group_kind:
        raise field_error(where, f"group uses {group_kind} but the service uses {service_kind}")


def _image_kind(image: Any, docker: Any, python: Any, nvcc: Any) -> str | None:
    if image:
        return "`image`"
    if docker:
        return "`docker`"
    if python or nvcc:
        return "the default image (`python`/`nvcc`)"
    return None


def _unique_prefixes(limits: list[RateLimit]) -> None:
    seen: set[str] = set()
    for index, limit in enumerate(limits):
        if limit.prefix in seen:
            raise field_error(
                f"rate_limits.{index}.prefix", f"duplicate rate limit prefix '{limit.prefix}'"
            )
        seen.add(limit.prefix)


AnyConfiguration = (
    DevEnvironmentConfiguration
    | TaskConfiguration
    | ServiceConfiguration
    | FleetConfiguration
    | VolumeConfiguration
    | GatewayConfiguration
)
CONFIGURATION_TYPES: dict[str, type[BaseModel]] = {
    "dev-environment": DevEnvironmentConfiguration,
    "task": TaskConfiguration,
    "service": ServiceConfiguration,
    "fleet": FleetConfiguration,
    "volume": VolumeConfiguration,
    "gateway": GatewayConfiguration,
}

# --- Entry point ---------------------------------------------------------------------------------

_TYPE_LIST = ", ".join(CONFIGURATION_TYPES)


def parse_configuration(data: Any) -> AnyConfiguration:
    """Validate a mapping (as loaded from YAML or JSON) into its typed configuration."""
    if not isinstance(data, dict):
        raise ConfigurationError("configuration must be a mapping")
    kind = data.get("type")
    if kind is None:
        raise ConfigurationError(f"`type` is required (one of {_TYPE_LIST})", path="type")
    model = CONFIGURATION_TYPES.get(kind) if isinstance(kind, str) else None
    if kind == "preset":
        raise ConfigurationError("`preset` configurations are not supported", path="type")
    if model is None:
        raise ConfigurationError(
            f"unknown configuration type '{kind}' (expected one of {_TYPE_LIST})", path="type"
        )
    return validate_model(model, data)  # type: ignore[return-value]
