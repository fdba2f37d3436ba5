"""Scalar grammars shared by every configuration type: durations, memory sizes, ranges, ports.

The parsers are plain functions raising `ValueError` so they can be reused outside pydantic
(the CLI parses `-p 8080:80` with the same code). The `Annotated` aliases plug them into
models and also describe the *input* forms to the JSON schema, because pydantic only knows
the normalised output type of a before-validator.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

GROUP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
TAG_KEY_RE = re.compile(r"^[_\-a-zA-Z0-9]{1,60}$")
TAG_VALUE_RE = re.compile(r"^[a-zA-Z0-9 .:/=_\-+@]{0,256}$")

BackendType = Literal[
    "amddevcloud", "aws", "azure", "cloudrift", "crusoe", "cudo", "datacrunch", "daytona",
    "digitalocean", "dstack", "gcp", "hotaisle", "jarvislabs", "kubernetes", "lambda", "lium",
    "nebius", "oci", "remote", "runpod", "seeweb", "slurm", "tensordock", "vastai", "verda",
    "vultr",
]  # fmt: skip
BACKEND_IDS: tuple[str, ...] = get_args(BackendType)

# SSH-fleet hosts: the original's backend id is `remote` (shown as `ssh` in its tables). This
# server spells it `ssh` everywhere (offers, plans, `ps`) and reads `remote` as the same
# backend, so a file written for the original does not silently exclude the SSH hosts.
BACKEND_ALIASES = {"remote": "ssh"}
# Backend ids a run or fleet may name in `backends`: the original's, plus this server's own
# names for SSH fleets and this machine (`local`).
RUN_BACKEND_IDS: tuple[str, ...] = tuple(
    sorted({BACKEND_ALIASES.get(b, b) for b in BACKEND_IDS} | {"ssh", "local"})
)


def canonical_backend(name: Any) -> Any:
    """`remote` -> `ssh`; any other value unchanged (validation happens after)."""
    return BACKEND_ALIASES.get(name, name) if isinstance(name, str) else name


RunBackendType = Annotated[
    Literal[RUN_BACKEND_IDS],  # type: ignore[valid-type]
    BeforeValidator(canonical_backend),
    WithJsonSchema({"type": "string", "enum": sorted({*RUN_BACKEND_IDS, *BACKEND_ALIASES})}),
]


class ConfigModel(BaseModel):
    """Base of every configuration model: strict keys, YAML numbers accepted as strings."""

    # Built when first used (see `WireModel`).
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, defer_build=True)


def field_error(field: str | None, message: str) -> PydanticCustomError:
    """An error for a cross-field rule that should point at `field` below the current model.

    pydantic gives model-level errors an empty location; the `field` context entry is appended
    to the location when the error is turned into a `ConfigurationError`.
    """
    ctx: dict[str, Any] = {"msg": message}
    if field:
        ctx["field"] = field
    return PydanticCustomError("config_rule", "{msg}", ctx)


@dataclass(frozen=True, eq=False)
class Shorthand:
    """JSON-schema annotation: the field also accepts these scalar forms besides its object."""

    alternatives: tuple[dict, ...]

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict:
        return {"anyOf": [*self.alternatives, handler(core_schema)]}


STR_OR_INT = ({"type": "string"}, {"type": "integer"})
# --- Durations -------------------------------------------------------------------------------

_DURATION_PART_RE = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_DURATION_FULL_RE = re.compile(r"^(?:\s*\d+\s*[smhdw]\s*)+$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> int:
    """Seconds from `300`, `"300"`, `"5m"`, `"5 m"`, `"1h30m"`; anything else is an error."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        if _DURATION_FULL_RE.match(text):
            return sum(
                int(n) * _UNIT_SECONDS[u.lower()] for n, u in _DURATION_PART_RE.findall(text)
            )
    raise ValueError(f"invalid duration '{value}' (use e.g. 30s, 5m, 1h30m, 2d, 1w)")


def _non_negative_duration(value: Any) -> int:
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError(f"duration must not be negative: {value}")
    return seconds


def _offable_duration(value: Any) -> int | str | None:
    if value is None or value is True:
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return "off"
    return _non_negative_duration(value)


def _idle_duration(value: Any) -> int | None:
    if value is None or value is True:
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return -1
    return parse_duration(value)


def _inactivity_duration(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().lower() == "off":
        return None
    return _non_negative_duration(value)


_DURATION_SCHEMA = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
_OFFABLE_SCHEMA = {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "boolean"}]}

Duration = Annotated[int, BeforeValidator(_non_negative_duration), WithJsonSchema(_DURATION_SCHEMA)]
OffableDuration = Annotated[
    int | Literal["off"] | None, BeforeValidator(_offable_duration), WithJsonSchema(_OFFABLE_SCHEMA)
]
IdleDuration = Annotated[
    int | None, BeforeValidator(_idle_duration), WithJsonSchema(_OFFABLE_SCHEMA)
]
InactivityDuration = Annotated[
    int | None, BeforeValidator(_inactivity_duration), WithJsonSchema(_OFFABLE_SCHEMA)
]

# --- Memory ----------------------------------------------------------------------------------

_MEMORY_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([a-z]*)$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1.0, "MB": 1 / 1024, "GB": 1.0, "TB": 1024.0}


def parse_memory(value: Any, context: str | None = None) -> float:
    """GB as a float from `16`, `"16"`, `"512MB"`, `"80 GB"`, `"1TB"`.

    `context` is the whole user string the value came from (a GPU spec), quoted in errors.
    """
    where = context if context is not None else value
    if isinstance(value, bool):
        raise ValueError(f"invalid memory size: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"memory size must not be negative: {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid memory size: {value!r}")
    match = _MEMORY_RE.match(value.replace(" ", ""))
    if match is None:
        raise ValueError(f"invalid memory size '{value}' in '{where}'")
    unit = match.group(2).upper()
    if unit not in _MEMORY_UNITS:
        raise ValueError(f"unknown memory unit '{match.group(2)}' in '{where}'")
    return float(match.group(1)) * _MEMORY_UNITS[unit]


def format_memory(gb: float) -> str:
    """`8GB`, `0.5GB`: the way plans and tables print sizes."""
    return f"{gb:g}GB"


Memory = Annotated[
    float,
    BeforeValidator(parse_memory),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}]}),
]


def _count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"invalid count: {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        result = int(value.strip())
    else:
        raise ValueError(f"invalid count '{value}': expected a non-negative integer")
    if result < 0:
        raise ValueError(f"count must not be negative: {value}")
    return result


Count = Annotated[
    int,
    BeforeValidator(_count),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
]

# --- Ranges ----------------------------------------------------------------------------------

T = TypeVar("T")


def split_range(value: Any) -> dict[str, Any]:
    """`{min, max}` from `N`, `"A..B"`, `"A.."`, `"..B"` (values still unparsed)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid range: {value!r}")
    if not isinstance(value, str):
        return {"min": value, "max": value}
    text = value.replace(" ", "")
    if not text:
        raise ValueError("Invalid empty range")
    if ".." not in text:
        return {"min": text, "max": text}
    low, _, high = text.partition("..")
    if ".." in high:
        raise ValueError(f"invalid range '{value}'")
    if not low and not high:
        raise ValueError("Invalid empty range")
    return {"min": low or None, "max": high or None}


class Range(BaseModel, Generic[T]):
    """A closed, half-open or exact range; `None` on a side means unbounded."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    min: T | None = None
    max: T | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        return split_range(value)

    @model_validator(mode="after")
    def _check_order(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:  # type: ignore[operator]
            raise ValueError("Invalid range order")
        return self

    def render(self, fmt: Any = str) -> str:
        """`2`, `2..`, `..8`, `2..8` (the plan's notation)."""
        low = "" if self.min is None else fmt(self.min)
        high = "" if self.max is None else fmt(self.max)
        if self.min is not None and self.min == self.max:
            return low
        return f"{low}..{high}"


_RANGE_SCALARS = ({"type": "integer"}, {"type": "number"}, {"type": "string"})
IntRange = Annotated[Range[Count], Shorthand(_RANGE_SCALARS)]
MemoryRange = Annotated[Range[Memory], Shorthand(_RANGE_SCALARS)]


def int_range(low: int | None, high: int | None = None) -> Range[Count]:
    return Range[Count](min=low, max=high)


def memory_range(low: float | None, high: float | None = None) -> Range[Memory]:
    return Range[Memory](min=low, max=high)


# --- Ports -----------------------------------------------------------------------------------


def _port_number(value: Any, original: Any) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise ValueError(f"invalid port '{original}'")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535: {original}")
    return port


class PortMapping(ConfigModel):
    """`local_port` None means "any free local port" (`*:8080`)."""

    local_port: int | None = Field(default=None, ge=1, le=65535)
    container_port: int = Field(ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"invalid port mapping: {value!r}")
        if isinstance(value, int):
            port = _port_number(value, value)
            return {"local_port": port, "container_port": port}
        local, sep, container = value.partition(":")
        if not sep:
            port = _port_number(value, value)
            return {"local_port": port, "container_port": port}
        container_port = _port_number(container, value)
        if local.strip() == "*":
            return {"local_port": None, "container_port": container_port}
        return {"local_port": _port_number(local, value), "container_port": container_port}

    def render(self) -> str:
        local = "*" if self.local_port is None else str(self.local_port)
        return f"{local}:{self.container_port}"


Port = Annotated[PortMapping, Shorthand(STR_OR_INT)]

# --- Python versions -------------------------------------------------------------------------

PYTHON_VERSIONS = tuple(f"3.{minor}" for minor in range(9, 16))


def parse_python_version(value: Any) -> str | None:
    """`3.12` or `"3.12"`; a YAML float `3.1` can only have meant `3.10`."""
    if value is None:
        return None
    if isinstance(value, float):
        text = "3.10" if value == 3.1 else repr(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError(f"invalid python version: {value!r}")
    if text not in PYTHON_VERSIONS:
        raise ValueError(f"unsupported python version '{text}' (supported: 3.9 to 3.15)")
    return text


# --- Names, references, tags, paths ----------------------------------------------------------


def parse_entity_ref(value: Any) -> str:
    """`name`, `project/name` or `{project, name}`, kept as a `name` / `project/name` string."""
    if isinstance(value, dict):
        if set(value) - {"project", "name"} or "name" not in value:
            raise ValueError("a reference mapping takes `name` and optional `project`")
        project, name = value.get("project"), value["name"]
        value = f"{project}/{name}" if project is not None else str(name)
    if not isinstance(value, str):
        raise ValueError(f"invalid reference: {value!r}")
    parts = value.split("/")
    if len(parts) > 2 or any(not p.strip() for p in parts):
        raise ValueError(f"invalid reference '{value}': expected `name` or `project/name`")
    return value.strip()


EntityRef = Annotated[
    str,
    BeforeValidator(parse_entity_ref),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "object"}]}),
]


def _check_tags(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for key, item in value.items():
        if not isinstance(key, str) or not TAG_KEY_RE.match(key):
            raise ValueError(f"invalid tag key '{key}'")
        text = item if isinstance(item, str) else str(item)
        if isinstance(item, dict | list) or item is None or not TAG_VALUE_RE.match(text):
            raise ValueError(f"invalid value for tag '{key}': {item!r}")
    return {k: (v if isinstance(v, str) else str(v)) for k, v in value.items()}


Tags = Annotated[
    dict[str, str],
    BeforeValidator(_check_tags),
    WithJsonSchema(
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
    ),
]


def normalize_container_path(value: Any) -> str:
    """Absolute, `..`-free, normalised; trailing slashes are dropped rather than rejected."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"invalid path: {value!r}")
    if not value.startswith("/"):
        raise ValueError(f"path must be absolute: '{value}'")
    if ".." in value.split("/"):
        raise ValueError(f"path must not contain '..': '{value}'")
    normalized = posixpath.normpath(value)
    return "/" + normalized.lstrip("/") if normalized.startswith("//") else normalized


AbsolutePath = Annotated[
    str, BeforeValidator(normalize_container_path), WithJsonSchema({"type": "string"})
]
