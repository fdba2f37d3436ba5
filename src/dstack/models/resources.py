"""The `resources` grammar: cpu, memory, shm_size, gpu and disk requirements.

Every shorthand (`A100:40GB:2`, `arm:4`, `100GB..`) is expanded in a before-validator into the
mapping form, so the rest of the system only ever sees the normalised models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from dstack.models.common import (
    STR_OR_INT,
    ConfigModel,
    IntRange,
    Memory,
    MemoryRange,
    Range,
    Shorthand,
    format_memory,
    int_range,
    memory_range,
    parse_memory,
    split_range,
)

GPUVendor = Literal["nvidia", "amd", "google", "intel", "tenstorrent"]
VENDOR_ALIASES = {
    "nvidia": "nvidia",
    "amd": "amd",
    "google": "google",
    "tpu": "google",
    "intel": "intel",
    "tenstorrent": "tenstorrent",
    "tt": "tenstorrent",
}
CPU_ARCHES = ("x86", "arm")


def _parse_count_token(token: str, spec: str) -> dict[str, Any]:
    bounds = split_range(token)
    for key, item in bounds.items():
        if item is not None and not item.isdigit():
            raise ValueError(f"invalid count '{token}' in '{spec}'")
        bounds[key] = None if item is None else int(item)
    return bounds


def _parse_memory_token(token: str, spec: str) -> dict[str, Any]:
    bounds = split_range(token)
    return {k: None if v is None else parse_memory(v, spec) for k, v in bounds.items()}


def _put(spec_dict: dict[str, Any], key: str, value: Any, spec: str) -> None:
    if key in spec_dict:
        raise ValueError(f"GPU spec {key} conflict in '{spec}'")
    spec_dict[key] = value


def parse_gpu_string(spec: str) -> dict[str, Any]:
    """Expand `[vendor:][names:][memory:][count]` (tokens in any order) into a mapping."""
    result: dict[str, Any] = {}
    for raw in spec.split(":"):
        token = raw.strip()
        if not token:
            raise ValueError(f"empty token in GPU spec '{spec}'")
        lowered = token.lower()
        if lowered in VENDOR_ALIASES:
            _put(result, "vendor", VENDOR_ALIASES[lowered], spec)
        elif token[0].isalpha():
            names = [n.strip() for n in token.split(",")]
            if any(not n for n in names):
                raise ValueError(f"empty GPU name in '{spec}'")
            _put(result, "name", names, spec)
        elif any(c.isalpha() for c in token):
            _put(result, "memory", _parse_memory_token(token, spec), spec)
        else:
            _put(result, "count", _parse_count_token(token, spec), spec)
    return result


def _parse_compute_capability(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        parts = list(value)
    elif isinstance(value, int | float | str) and not isinstance(value, bool):
        parts = str(value).strip().split(".")
    else:
        raise ValueError(f"invalid compute capability: {value!r}")
    if len(parts) != 2 or not all(str(p).strip().isdigit() for p in parts):
        raise ValueError(f"invalid compute capability '{value}': expected e.g. 7.5")
    return (int(parts[0]), int(parts[1]))


class GPUSpec(ConfigModel):
    """Accelerator requirement; any listed `name` satisfies it."""

    vendor: Annotated[GPUVendor | None, WithJsonSchema({"type": ["string", "null"]})] = None
    name: Annotated[list[str] | None, Shorthand(({"type": "string"},))] = None
    count: IntRange = Field(default_factory=lambda: int_range(1))
    memory: MemoryRange | None = None
    total_memory: MemoryRange | None = None
    compute_capability: Annotated[
        tuple[int, int] | None,
        WithJsonSchema({"type": ["number", "string", "array", "null"]}),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"invalid GPU spec: {value!r}")
        if isinstance(value, int):
            return {"count": {"min": value, "max": value}}
        if isinstance(value, str):
            return parse_gpu_string(value)
        return value

    @field_validator("vendor", mode="before")
    @classmethod
    def _vendor_alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            return VENDOR_ALIASES.get(value.strip().lower(), value)
        return value

    @field_validator("name", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            names = [
                n[4:] if isinstance(n, str) and n.lower().startswith("tpu-") else n for n in value
            ]
            if not names:
                raise ValueError("GPU name list must not be empty")
            return names
        return value

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _cc(cls, value: Any) -> Any:
        return _parse_compute_capability(value)

    def render(self) -> str:
        """`A100:40GB:2`, `nvidia:0..`, `24GB..:1..2` (names win over the vendor)."""
        parts: list[str] = []
        if self.name:
            parts.append(",".join(self.name))
        elif self.vendor:
            parts.append(self.vendor)
        if self.memory is not None:
            parts.append(self.memory.render(format_memory))
        parts.append(self.count.render())
        if self.total_memory is not None:
            parts.append(self.total_memory.render(format_memory))
        if self.compute_capability is not None:
            major, minor = self.compute_capability
            parts.append(f"{major}.{minor}")
        return ":".join(parts)


class CPUSpec(ConfigModel):
    """CPU count and optional architecture (unset: the server infers it from the image)."""

    arch: Annotated[Literal["x86", "arm"] | None, WithJsonSchema({"type": ["string", "null"]})] = (
        None
    )
    count: IntRange = Field(default_factory=lambda: int_range(2))

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"invalid CPU spec: {value!r}")
        if isinstance(value, int):
            return {"count": value}
        if isinstance(value, str):
            return _parse_cpu_string(value)
        if isinstance(value, dict) and ("min" in value or "max" in value):
            return {"count": value}
        return value

    @field_validator("arch", mode="before")
    @classmethod
    def _arch_lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def render(self) -> str:
        count = self.count.render()
        return f"{self.arch}:{count}" if self.arch else count


def _parse_cpu_string(spec: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for raw in spec.split(":"):
        token = raw.strip()
        if not token:
            raise ValueError(f"empty token in CPU spec '{spec}'")
        key = "count" if token.isdigit() or ".." in token else "arch"
        if key in result:
            raise ValueError(f"CPU spec {key} conflict in '{spec}'")
        if key == "arch" and token.lower() not in CPU_ARCHES:
            raise ValueError(f"unknown CPU architecture '{token}' in '{spec}' (use x86 or arm)")
        result[key] = token.lower() if key == "arch" else token
    return result


class DiskSpec(ConfigModel):
    size: MemoryRange

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and "size" not in value and ("min" in value or "max" in value):
            return {"size": value}
        if not isinstance(value, dict):
            return {"size": value}
        return value


_RANGE_FORMS = ({"type": "string"}, {"type": "number"})


def _default_gpu() -> GPUSpec:
    return GPUSpec(count=int_range(0))


class ResourcesSpec(ConfigModel):
    """Host requirements of one job; defaults are those of an unconstrained `resources:`."""

    cpu: Annotated[CPUSpec, Shorthand(STR_OR_INT)] = Field(default_factory=CPUSpec)
    memory: MemoryRange = Field(default_factory=lambda: memory_range(8.0))
    shm_size: Memory | None = None
    gpu: Annotated[GPUSpec, Shorthand(STR_OR_INT)] | None = Field(default_factory=_default_gpu)
    disk: Annotated[DiskSpec, Shorthand(_RANGE_FORMS)] | None = Field(
        default_factory=lambda: DiskSpec(size=memory_range(100.0))
    )

    def pretty(self) -> str:
        return render_requirements(self)


def render_requirements(spec: ResourcesSpec) -> str:
    """`cpu=x86:2.. mem=8GB.. disk=100GB.. gpu=A100:40GB:2`, as the plan prints it."""
    parts = [f"cpu={spec.cpu.render()}", f"mem={spec.memory.render(format_memory)}"]
    if spec.disk is not None:
        parts.append(f"disk={spec.disk.size.render(format_memory)}")
    gpu = spec.gpu if spec.gpu is not None else _default_gpu()
    optional = gpu.count.min in (0, None) and not (
        gpu.name or gpu.memory or gpu.total_memory or gpu.compute_capability
    )
    if optional and gpu.vendor == "nvidia":
        # GPUs optional and nothing about them asked: a vendor the server filled in (its
        # default image is CUDA's) would read as a request, `gpu=nvidia:0..` on a CPU run.
        gpu = gpu.model_copy(update={"vendor": None})
    parts.append(f"gpu={gpu.render()}")
    return " ".join(parts)


__all__ = [
    "CPUSpec",
    "DiskSpec",
    "GPUSpec",
    "GPUVendor",
    "Range",
    "ResourcesSpec",
    "parse_gpu_string",
    "render_requirements",
]
