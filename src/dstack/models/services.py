"""Service-only parts of the language: model registration, autoscaling, probes, rate limits
and replica groups.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from dstack.models.common import (
    GROUP_NAME_RE,
    ConfigModel,
    Duration,
    IntRange,
    Range,
    Shorthand,
    field_error,
    int_range,
    parse_python_version,
)
from dstack.models.profiles import SpotPolicy
from dstack.models.resources import ResourcesSpec

SCALING_WINDOWS = (30, 60, 300)


class OpenAIChatModel(ConfigModel):
    """An OpenAI-compatible chat model served by the replicas under `prefix`."""

    type: Literal["chat"] = "chat"
    name: str
    format: Literal["openai"] = "openai"
    prefix: str = "/v1"


class TGIChatModel(ConfigModel):
    """A TGI model whose chat template the gateway applies itself."""

    type: Literal["chat"] = "chat"
    name: str
    format: Literal["tgi"]
    chat_template: str | None = None
    eos_token: str | None = None


def _model(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


def _model_format(value: Any) -> str:
    if isinstance(value, dict):
        return "@tgi" if value.get("format") == "tgi" else "@openai"
    if isinstance(value, TGIChatModel):
        return "@tgi"
    return "@openai"


ModelSpec = Annotated[
    Annotated[
        Annotated[OpenAIChatModel, Tag("@openai")] | Annotated[TGIChatModel, Tag("@tgi")],
        Discriminator(_model_format),
    ],
    BeforeValidator(_model),
    Shorthand(({"type": "string"},)),
]


class ScalingSpec(ConfigModel):
    metric: Literal["rps"]
    target: float = Field(gt=0)
    window: Duration = 60
    scale_up_delay: Duration = 300
    scale_down_delay: Duration = 600

    @field_validator("window")
    @classmethod
    def _window(cls, value: int) -> int:
        if value not in SCALING_WINDOWS:
            raise ValueError("window must be one of 30s, 60s, 300s")
        return value


class RateLimitKey(ConfigModel):
    type: Literal["ip_address", "header"] = "ip_address"
    header: str | None = None

    @model_validator(mode="after")
    def _header(self) -> RateLimitKey:
        if self.type == "header" and not self.header:
            raise field_error("header", "`header` is required for key type header")
        if self.type == "ip_address" and self.header is not None:
            raise field_error("header", "`header` is only allowed for key type header")
        return self


class RateLimit(ConfigModel):
    prefix: str = "/"
    rps: float = Field(ge=1 / 60)
    burst: int = Field(default=0, ge=0)
    key: RateLimitKey = Field(default_factory=RateLimitKey)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("prefix must start with /")
        return value


class HTTPHeader(ConfigModel):
    name: str = Field(min_length=1)
    value: str


class ProbeConfig(ConfigModel):
    """An HTTP readiness probe; defaults filled in so the server can run it as is."""

    type: Literal["http"]
    url: str = Field(default="/", max_length=2048)
    method: Annotated[
        Literal["get", "post", "put", "delete", "patch", "head"], WithJsonSchema({"type": "string"})
    ] = "get"
    headers: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    body: str | None = Field(default=None, min_length=1, max_length=2048)
    timeout: Duration = 10
    interval: Duration = 15
    ready_after: int = Field(default=1, ge=1)
    until_ready: bool = False

    @field_validator("method", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith("/") or not value.isprintable():
            raise ValueError("url must start with / and contain only printable characters")
        return value

    @field_validator("timeout", "interval")
    @classmethod
    def _at_least_second(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1s")
        return value

    @model_validator(mode="after")
    def _body(self) -> ProbeConfig:
        if self.body is not None and self.method in ("get", "head"):
            raise field_error("body", f"body is not allowed with method {self.method}")
        return self


class RouterConfig(ConfigModel):
    type: Annotated[
        Literal["smg", "dynamo"], WithJsonSchema({"enum": ["smg", "dynamo", "sglang"]})
    ] = "smg"

    @field_validator("type", mode="before")
    @classmethod
    def _legacy(cls, value: Any) -> Any:
        return "smg" if value == "sglang" else value


def _replicas_range(value: Range) -> Range:
    """Replicas need an upper bound; `..4` means `0..4`."""
    if value.max is None:
        raise ValueError("replicas must have an upper bound (e.g. 0..4)")
    if value.min is None:
        return int_range(0, value.max)
    return value


Replicas = Annotated[IntRange, AfterValidator(_replicas_range)]

GROUP_LEVEL_FIELDS = (
    "image",
    "docker",
    "privileged",
    "python",
    "nvcc",
    "spot_policy",
    "reservation",
)


class ReplicaGroup(ConfigModel):
    """A set of identical replicas inside a heterogeneous service."""

    name: str | None = None
    replicas: Replicas = Field(default_factory=lambda: int_range(1, 1))
    scaling: ScalingSpec | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    spot_policy: SpotPolicy | None = None
    reservation: str | None = None
    commands: list[str] | None = None
    image: str | None = None
    python: str | None = None
    nvcc: bool | None = None
    docker: bool | None = None
    privileged: bool | None = None
    router: RouterConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _count_alias(cls, value: Any) -> Any:
        if isinstance(value, dict) and "count" in value:
            if "replicas" in value:
                raise ValueError("`count` is an alias of `replicas`; give only one")
            value = dict(value)
            value["replicas"] = value.pop("count")
        return value

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, value: Any) -> Any:
        return parse_python_version(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not GROUP_NAME_RE.match(value):
            raise ValueError(f"invalid group name '{value}' (lowercase letters, digits, -)")
        return value

    @model_validator(mode="after")
    def _rules(self) -> ReplicaGroup:
        check_scaling(self.replicas, self.scaling)
        if self.docker and self.privileged is False:
            raise field_error("privileged", "`privileged: false` is not allowed with docker")
        if self.docker and (self.image or self.python or self.nvcc):
            raise field_error("docker", "`docker` is mutually exclusive with image/python/nvcc")
        if self.image and self.python:
            raise field_error("python", "`image` and `python` are mutually exclusive")
        if self.router is not None and not (self.replicas.min == self.replicas.max == 1):
            raise field_error("replicas", "a group with a router must have `replicas: 1`")
        return self


def check_scaling(replicas: Range, scaling: ScalingSpec | None) -> None:
    """A range of replicas needs `scaling`; a fixed count must not have it. One replica (the
    default) with `scaling` is let through, as the user guide's own service example writes it:
    `apply` warns that nothing scales (see `scaling_has_no_effect`)."""
    if replicas.min != replicas.max and scaling is None:
        raise field_error("scaling", "`scaling` is required when `replicas` is a range")
    if replicas.min == replicas.max != 1 and scaling is not None:
        raise field_error(
            "scaling", "`scaling` requires `replicas` to be a range (e.g. `replicas: 1..4`)"
        )


def scaling_has_no_effect(conf: dict[str, Any]) -> bool:
    """A service (configuration as JSON) with `scaling` but one fixed replica."""
    if conf.get("type") != "service" or not conf.get("scaling") or conf.get("groups"):
        return False
    replicas = conf.get("replicas") or {"min": 1, "max": 1}
    return replicas.get("min") == replicas.get("max") == 1
