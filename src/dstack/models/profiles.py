"""Profile parameters (§5): provisioning and lifecycle knobs shared by runs, fleets and
`profiles.yml`.

Every field defaults to `None` ("not set") rather than to the documented default, because
profiles are merged field by field (profile < configuration < CLI flags) and only an unset
value may be overridden. The server applies the documented defaults after merging.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from dstack.errors import ConfigurationError
from dstack.models.common import (
    ConfigModel,
    Duration,
    EntityRef,
    IdleDuration,
    OffableDuration,
    RunBackendType,
    Shorthand,
    Tags,
    field_error,
)

SpotPolicy = Literal["spot", "on-demand", "auto"]
CreationPolicy = Literal["reuse", "reuse-or-create"]
StartupOrder = Literal["any", "master-first", "workers-first"]
StopCriteria = Literal["all-done", "master-done"]
RetryEvent = Literal["no-capacity", "interruption", "error"]
ALL_RETRY_EVENTS: list[str] = ["no-capacity", "interruption", "error"]
DEFAULT_RETRY_DURATION = 3600
MIN_UTILIZATION_WINDOW = 300
# Lowers the minimum for end-to-end tests, which cannot wait five minutes per case; read where
# a configuration is validated (CLI and server), never needed by users.
MIN_UTILIZATION_WINDOW_ENV = "DSTACK_MIN_UTILIZATION_WINDOW_SECONDS"


def min_utilization_window() -> int:
    raw = os.environ.get(MIN_UTILIZATION_WINDOW_ENV, "")
    return int(raw) if raw.isdigit() else MIN_UTILIZATION_WINDOW


class RetryPolicy(ConfigModel):
    on_events: list[RetryEvent] = Field(default_factory=lambda: list(ALL_RETRY_EVENTS))
    duration: Duration = DEFAULT_RETRY_DURATION

    @field_validator("on_events")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("on_events must not be empty (use `retry: false` to disable)")
        return value


def _retry(value: Any) -> Any:
    if value is True:
        return RetryPolicy()
    if value is False:
        return None
    return value


Retry = Annotated[RetryPolicy | None, BeforeValidator(_retry), Shorthand(({"type": "boolean"},))]


class UtilizationPolicy(ConfigModel):
    min_gpu_utilization: int = Field(ge=0, le=100)
    time_window: Duration

    @field_validator("time_window")
    @classmethod
    def _window(cls, value: int) -> int:
        minimum = min_utilization_window()
        if value < minimum:
            shown = "5m" if minimum == MIN_UTILIZATION_WINDOW else f"{minimum}s"
            raise ValueError(f"time_window must be at least {shown}")
        return value


def _check_cron(expression: str) -> None:
    # croniter is imported here, not at module level, to keep `import dstack.models` cheap.
    from croniter import croniter

    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ValueError(f"invalid cron expression '{expression}' (expected 5 fields)")


class Schedule(ConfigModel):
    """Start times in UTC; a single string is kept as a one-element list."""

    cron: Annotated[list[str], Shorthand(({"type": "string"},))]

    @field_validator("cron", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("cron")
    @classmethod
    def _valid(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("cron must not be empty")
        for expression in value:
            _check_cron(expression)
        return value


class InstanceSelector(ConfigModel):
    """One of `name`, `hostname`, or `fleet` + `instance` (a string means `name`)."""

    name: str | None = None
    hostname: str | None = None
    fleet: str | None = None
    instance: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_form(self) -> InstanceSelector:
        forms = [
            self.name is not None,
            self.hostname is not None,
            self.fleet is not None or self.instance is not None,
        ]
        if sum(forms) != 1:
            raise field_error(
                None,
                "an instance selector takes exactly one of `name`, "
                "`hostname`, or `fleet` with `instance`",
            )
        if (self.fleet is None) != (self.instance is None):
            raise field_error(None, "`fleet` and `instance` must be given together")
        return self


class VastAIOptions(ConfigModel):
    type: Literal["vastai"]
    offer_order: Literal["score", "price"] = "score"
    min_reliability: float = Field(default=0.9, ge=0, le=1)
    min_score: int | None = Field(default=None, ge=0)


def _unique_backend_options(value: Any) -> Any:
    if isinstance(value, list):
        seen = set()
        for item in value:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind in seen:
                raise ValueError(f"backend_options lists type '{kind}' more than once")
            seen.add(kind)
    return value


BackendOptions = Annotated[list[VastAIOptions], BeforeValidator(_unique_backend_options)]


def _instances(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise ValueError("instances must not be empty")
    return value


class ProvisioningParams(ConfigModel):
    """Where and how instances may be provisioned; shared by runs and backend fleets."""

    backends: list[RunBackendType] | None = None
    regions: list[str] | None = None
    availability_zones: list[str] | None = None
    instance_types: list[str] | None = None
    reservation: str | None = None
    spot_policy: SpotPolicy | None = None
    retry: Retry = None
    max_price: float | None = Field(default=None, gt=0)
    idle_duration: IdleDuration = None
    tags: Tags | None = None
    backend_options: BackendOptions | None = None


class ProfileParams(ProvisioningParams):
    """The full §5 set used by run configurations and `profiles.yml`."""

    max_duration: OffableDuration = None
    stop_duration: OffableDuration = None
    creation_policy: CreationPolicy | None = None
    utilization_policy: UtilizationPolicy | None = None
    startup_order: StartupOrder | None = None
    stop_criteria: StopCriteria | None = None
    schedule: Schedule | None = None
    fleets: list[EntityRef] | None = None
    instances: Annotated[
        list[Annotated[InstanceSelector, Shorthand(({"type": "string"},))]] | None,
        BeforeValidator(_instances),
    ] = None


class Profile(ProfileParams):
    """One entry of `profiles.yml`."""

    name: str
    default: bool = False


class ProfilesConfig(ConfigModel):
    """The contents of a `profiles.yml`; finding and reading the file is the CLI's job
    (cli/profiles.py), since only the CLI knows the user's directories."""

    profiles: list[Profile] = Field(default_factory=list)

    def find(self, name: str | None) -> Profile | None:
        """`name` given: that profile or an error; otherwise the one marked `default: true`."""
        if name is not None:
            for profile in self.profiles:
                if profile.name == name:
                    return profile
            raise ConfigurationError(f"No such profile: {name}")
        return next((p for p in self.profiles if p.default), None)
