"""One table of what every configuration field does on this server: it works, it is refused
(with the message the plan shows), or it depends on the backend the job lands on.

Why a table: the configuration language is a promise (DESIGN.md, "Every field works or is
refused"). A field that is parsed, stored and then ignored is worse than one that is refused,
so every field of the six configuration types must be listed here; tests/config/
test_field_support.py walks the models and fails on a field this table does not list.

The contract:
- `WORKS`: the server consumes the field (placement, job spec, proxy, reconciler).
- `REFUSED`: `refusals()` names the field when the user set it (its value differs from the
  model's default, or `when` says the value is one that does not work); the CLI refuses at
  load with file:line and the server refuses the plan and the apply (HTTP 400, the field).
  A feature that lands flips its row to `WORKS` (or narrows `when`).
- `BACKEND`: works where the chosen backend has `capability` (a field of
  `server/backends/base.py`'s `Capabilities`); the server's placement refuses the plan,
  naming the field and the backend, where no backend of the project has it.

Nested fields are listed by dotted path (`resources.gpu.compute_capability`) for the
sub-models in `NESTED`; a row for the parent covers the rest of its sub-tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel


class Support(str, Enum):
    WORKS = "works"
    REFUSED = "refused"
    BACKEND = "backend-dependent"


@dataclass(frozen=True)
class FieldRule:
    support: Support
    # REFUSED: the reason shown after the field name; BACKEND: what the capability means.
    message: str = ""
    # BACKEND: the `Capabilities` field the chosen backend must have.
    capability: str | None = None
    # REFUSED: refuse only values this says do not work (default: any non-default value).
    when: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class Refusal:
    path: str
    message: str

    def __str__(self) -> str:
        return f"`{self.path}`: {self.message}"


W = FieldRule(Support.WORKS)


def refused(message: str, when: Callable[[Any], bool] | None = None) -> FieldRule:
    return FieldRule(Support.REFUSED, message, when=when)


def backend(capability: str, message: str) -> FieldRule:
    return FieldRule(Support.BACKEND, message, capability=capability)


def _always(_: Any) -> bool:
    return True


def _truthy(value: Any) -> bool:
    return bool(value)


def _https_asked(value: Any) -> bool:
    return value is not None and value is not False


_NOT_YET = "is not supported by this server yet (it would be ignored, so the run is refused)"
_NO_GATEWAYS = "gateways are not supported by this server yet; the service is served at the "
_NO_GATEWAYS += "server's /proxy/services/<project>/<run>/ URL: remove the field"
_GATEWAY_TYPE = "gateway configurations are not supported by this server yet (no gateways)"
_NO_K8S = "Kubernetes volumes are not supported by this server (no kubernetes backend)"

# `resources` (runs and fleets) and the sub-fields a user may set.
_RESOURCES: dict[str, FieldRule] = {
    "resources": W,
    "resources.cpu": W,
    "resources.memory": W,
    "resources.disk": W,
    "resources.gpu": W,
    "resources.gpu.vendor": W,
    "resources.gpu.name": W,
    "resources.gpu.count": W,
    "resources.gpu.memory": W,
    "resources.gpu.total_memory": W,
    "resources.gpu.compute_capability": W,
    "resources.shm_size": backend("docker", "`shm_size` needs a host with a Docker engine"),
}

# Fields of every run type (dev-environment, task, service): profile + common run fields.
_RUN: dict[str, FieldRule] = {
    "type": W,
    "name": W,
    "image": backend("docker", "`image` needs a host with a Docker engine"),
    "user": W,
    "privileged": backend("docker", "`privileged` needs a host with a Docker engine"),
    "entrypoint": W,
    "working_dir": W,
    "home_dir": refused(f"{_NOT_YET}: the job's home is the host user's or the image's"),
    "registry_auth": W,
    "python": W,
    "nvcc": W,
    "docker": refused(
        "(Docker inside the job) is not supported: it would need the host's Docker engine, "
        "which is root on the host; set `image` and `privileged: true` instead",
        when=_truthy,
    ),
    "single_branch": W,
    "env": W,
    "shell": W,
    **_RESOURCES,
    "priority": W,
    "volumes": W,
    "repos": W,
    "files": W,
    "dstack": refused(_NOT_YET, when=_truthy),
    "setup": W,
    # Profile parameters (§5).
    "backends": W,
    "regions": W,
    "availability_zones": W,
    "instance_types": W,
    "reservation": backend("reservations", "has no reservations (`reservation`)"),
    "spot_policy": backend("spot", "has no spot instances (`spot_policy: spot`)"),
    "retry": W,
    "max_price": W,
    "idle_duration": W,
    "tags": W,
    "backend_options": refused("no backend of this server takes `backend_options`"),
    "max_duration": W,
    "stop_duration": W,
    "creation_policy": W,
    "utilization_policy": W,
    "startup_order": W,
    "stop_criteria": W,
    "schedule": W,
    "fleets": W,
    "instances": W,
}

SUPPORT: dict[str, dict[str, FieldRule]] = {
    "dev-environment": {
        **_RUN,
        "ports": W,
        "ide": W,
        "version": W,
        "init": W,
        "inactivity_duration": W,
    },
    "task": {
        **_RUN,
        "commands": W,
        "ports": W,
        "nodes": backend("multinode", "cannot run multi-node tasks (`nodes`)"),
        "groups": backend("multinode", "cannot run multi-node tasks (`groups`)"),
    },
    "service": {
        **_RUN,
        "commands": W,
        "port": W,
        "gateway": refused(_NO_GATEWAYS, when=_truthy),
        "https": refused(_NO_GATEWAYS, when=_https_asked),
        "strip_prefix": W,
        "model": W,
        "auth": W,
        "replicas": W,
        "scaling": W,
        "rate_limits": W,
        "probes": W,
        "groups": W,
        "schedule": refused(
            "scheduled services are not supported by this server yet (schedule a task)"
        ),
    },
    "fleet": {
        "type": W,
        "name": W,
        "placement": W,
        "blocks": W,
        "nodes": W,
        **_RESOURCES,
        "ssh_config": W,
        "env": W,
        "backends": W,
        "regions": W,
        "availability_zones": W,
        "instance_types": W,
        "reservation": backend("reservations", "has no reservations (`reservation`)"),
        "spot_policy": backend("spot", "has no spot instances (`spot_policy: spot`)"),
        "retry": W,
        "max_price": W,
        "idle_duration": W,
        "tags": W,
        "backend_options": refused("no backend of this server takes `backend_options`"),
    },
    "volume": {
        "type": W,
        "name": W,
        "backend": backend("volumes", "has no network volumes"),
        "region": W,
        "availability_zone": W,
        "size": W,
        "volume_id": W,
        "fleet": W,
        "auto_cleanup_duration": W,
        "tags": W,
        "claim_name": refused(_NO_K8S),
        "storage_class_name": refused(_NO_K8S),
        # The model fills these two in for a kubernetes volume: only other values are the user's.
        "access_modes": refused(_NO_K8S, when=lambda v: v not in (None, ["ReadWriteOnce"])),
        "read_only": refused(_NO_K8S, when=_truthy),
    },
    "gateway": {
        "type": refused(_GATEWAY_TYPE, when=_always),
        **{
            f: refused(_GATEWAY_TYPE)
            for f in (
                "name",
                "default",
                "backend",
                "region",
                "instance_type",
                "domain",
                "public_ip",
                "load_balancer",
                "certificate",
                "replicas",
                "tags",
            )
        },
    },
}

# Sub-models whose own fields the table lists (so a new one cannot be forgotten either).
NESTED = ("resources", "resources.gpu")


def rule(kind: str, path: str) -> FieldRule | None:
    return SUPPORT.get(kind, {}).get(path)


def refusals(conf: BaseModel) -> list[Refusal]:
    """Every refused field this configuration sets, in the model's field order."""
    kind = getattr(conf, "type", None)
    table = SUPPORT.get(str(kind), {})
    out: list[Refusal] = []
    _collect(conf, "", table, out)
    return out


def _collect(model: BaseModel, prefix: str, table: dict[str, FieldRule], out: list) -> None:
    for name, field in type(model).model_fields.items():
        path = f"{prefix}{name}"
        value = getattr(model, name)
        entry = table.get(path)
        if entry is not None and entry.support is Support.REFUSED:
            asked = entry.when(value) if entry.when else _differs(value, field)
            if asked:
                out.append(Refusal(path, entry.message))
                continue
        if path in NESTED and isinstance(value, BaseModel):
            _collect(value, f"{path}.", table, out)


def _differs(value: Any, field: Any) -> bool:
    if value is None or value == [] or value == {}:
        return False
    default = field.get_default(call_default_factory=True)
    return value != default


def first_refusal(conf: BaseModel) -> Refusal | None:
    found = refusals(conf)
    return found[0] if found else None
