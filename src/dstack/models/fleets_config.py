"""`type: fleet` (§13): backend fleets (`nodes`) and SSH fleets (`ssh_config`)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator, model_validator

from dstack.models.common import (
    ConfigModel,
    Shorthand,
    field_error,
    split_range,
)
from dstack.models.envs import Env
from dstack.models.profiles import ProvisioningParams
from dstack.models.resources import ResourcesSpec


def _blocks(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        else:
            raise ValueError(f"blocks must be a positive integer or `auto`, got {value!r}")
    if value < 1:
        raise ValueError("blocks must be at least 1")
    return value


Blocks = Annotated[
    int | Literal["auto"],
    BeforeValidator(_blocks),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}]}),
]


def _private_ip(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"invalid IP address '{value}'") from None
    if not address.is_private:
        raise ValueError(f"internal_ip must be a private address: '{value}'")
    return value


class SSHKey(ConfigModel):
    """A private key as the CLI read it from `identity_file` (keys are read client-side); the
    server keeps it encrypted and never returns it."""

    private: str
    public: str | None = None


class SSHProxyParams(ConfigModel):
    hostname: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str
    identity_file: str
    ssh_key: SSHKey | None = None


class SSHHostParams(ConfigModel):
    """One host; unset fields fall back to the `ssh_config` level."""

    hostname: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    ssh_key: SSHKey | None = None
    proxy_jump: SSHProxyParams | None = None
    internal_ip: str | None = None
    blocks: Blocks = 1

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"hostname": value} if isinstance(value, str) else value

    @field_validator("internal_ip")
    @classmethod
    def _internal(cls, value: str | None) -> str | None:
        return _private_ip(value)


class SSHParams(ConfigModel):
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: str | None = None
    ssh_key: SSHKey | None = None
    proxy_jump: SSHProxyParams | None = None
    hosts: list[Annotated[SSHHostParams, Shorthand(({"type": "string"},))]] = Field(min_length=1)
    network: str | None = None

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"invalid network '{value}': expected <ip>/<mask>") from None
        if "/" not in value:
            raise ValueError(f"invalid network '{value}': expected <ip>/<mask>")
        if not net.is_private:
            raise ValueError(f"network must be private: '{value}'")
        return value

    @model_validator(mode="after")
    def _internal_ips(self) -> SSHParams:
        with_ip = [h.internal_ip is not None for h in self.hosts]
        if any(with_ip) and not all(with_ip):
            raise field_error("hosts", "internal_ip must be set for all hosts or for none")
        if any(with_ip) and self.network is not None:
            raise field_error("network", "network and internal_ip are mutually exclusive")
        return self


class FleetNodes(ConfigModel):
    """`target` instances are provisioned on apply; the fleet may shrink to `min`."""

    min: int = Field(ge=0)
    target: int = Field(ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"invalid nodes: {value!r}")
        if isinstance(value, int | str):
            bounds = split_range(value)
            value = {"min": bounds["min"] if bounds["min"] is not None else 0, "max": bounds["max"]}
        if isinstance(value, dict) and "target" not in value and "min" in value:
            value = {**value, "target": value["min"]}
        if isinstance(value, dict) and "min" not in value:
            value = {**value, "min": 0}
            value.setdefault("target", 0)
        return value

    @model_validator(mode="after")
    def _order(self) -> FleetNodes:
        if self.max is not None and self.min > self.max:
            raise field_error("min", "Invalid range order: nodes.min is greater than nodes.max")
        if self.target < self.min:
            raise field_error("target", "nodes.target must not be less than nodes.min")
        if self.max is not None and self.target > self.max:
            raise field_error("max", "nodes.max must not be less than nodes.target")
        return self


class FleetConfiguration(ProvisioningParams):
    type: Literal["fleet"]
    name: str | None = None
    placement: Literal["any", "cluster"] = "any"
    blocks: Blocks = 1
    nodes: Annotated[FleetNodes, Shorthand(({"type": "string"}, {"type": "integer"}))] | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    ssh_config: SSHParams | None = None
    env: Env = Field(default_factory=dict)

    @model_validator(mode="after")
    def _kind(self) -> FleetConfiguration:
        if self.nodes is None and self.ssh_config is None:
            raise field_error(None, "either `nodes` or `ssh_config` must be set")
        if self.nodes is not None and self.ssh_config is not None:
            raise field_error("ssh_config", "`nodes` and `ssh_config` are mutually exclusive")
        return self

    @property
    def is_ssh(self) -> bool:
        return self.ssh_config is not None
