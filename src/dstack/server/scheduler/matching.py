"""Does a host's resources satisfy a job's requirements? Pure functions.

Each check returns `None` when satisfied or a short reason ("memory 8GB.. > 4GB") so that a run
nobody can take fails with a message naming the requirement no instance met.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dstack.models.instances import Gpu, Resources

MIB_PER_GB = 1024


def _in_range(value: float, rng: Any) -> bool:
    if rng is None:
        return True
    lo, hi = getattr(rng, "min", None), getattr(rng, "max", None)
    if lo is not None and value < lo - 1e-9:
        return False
    return not (hi is not None and value > hi + 1e-9)


def range_str(rng: Any, unit: str = "") -> str:
    lo, hi = getattr(rng, "min", None), getattr(rng, "max", None)

    def fmt(v: float | None) -> str:
        if v is None:
            return ""
        return f"{v:g}{unit}"

    if lo is not None and lo == hi:
        return fmt(lo)
    return f"{fmt(lo)}..{fmt(hi)}"


def check_cpu(spec: Any, res: Resources) -> str | None:
    cpu = getattr(spec, "cpu", None)
    if cpu is None:
        return None
    arch = getattr(cpu, "arch", None)
    if arch and res.cpu_arch and arch != res.cpu_arch:
        return f"cpu arch {arch} != {res.cpu_arch}"
    if not _in_range(res.cpus, getattr(cpu, "count", None)):
        return f"cpu {range_str(cpu.count)} (has {res.cpus})"
    return None


def check_memory(spec: Any, res: Resources) -> str | None:
    mem = getattr(spec, "memory", None)
    gb = res.memory_mib / MIB_PER_GB
    if mem is not None and not _in_range(gb, mem):
        return f"memory {range_str(mem, 'GB')} (has {gb:.0f}GB)"
    return None


def check_disk(spec: Any, res: Resources) -> str | None:
    disk = getattr(spec, "disk", None)
    size = getattr(disk, "size", None) if disk is not None else None
    gb = res.disk.size_mib / MIB_PER_GB
    if size is not None and getattr(size, "min", None) is not None and gb < size.min - 1e-9:
        # A host's disk is at least what was asked: a bigger disk is never a reason to refuse.
        return f"disk {range_str(size, 'GB')} (has {gb:.0f}GB)"
    return None


def _gpu_name_ok(names: list[str] | None, gpu: Gpu) -> bool:
    if not names:
        return True
    return gpu.name.lower() in {n.lower() for n in names}


def check_gpu(spec: Any, res: Resources) -> str | None:
    gspec = getattr(spec, "gpu", None)
    gpus = res.gpus
    if gspec is None:
        return None
    count = getattr(gspec, "count", None)
    if not _in_range(len(gpus), count):
        return f"gpu count {range_str(count)} (has {len(gpus)})"
    if not gpus:
        return None
    vendor = getattr(gspec, "vendor", None)
    vendor = getattr(vendor, "value", vendor)
    if vendor and any(g.vendor != vendor for g in gpus):
        return f"gpu vendor {vendor} (has {gpus[0].vendor})"
    if not all(_gpu_name_ok(getattr(gspec, "name", None), g) for g in gpus):
        return f"gpu name {','.join(gspec.name)} (has {gpus[0].name})"
    mem = getattr(gspec, "memory", None)
    if mem is not None and not all(_in_range(g.memory_mib / MIB_PER_GB, mem) for g in gpus):
        return f"gpu memory {range_str(mem, 'GB')} (has {gpus[0].memory_mib / 1024:.0f}GB)"
    total = getattr(gspec, "total_memory", None)
    total_gb = sum(g.memory_mib for g in gpus) / MIB_PER_GB
    if total is not None and not _in_range(total_gb, total):
        return f"gpu total memory {range_str(total, 'GB')} (has {total_gb:.0f}GB)"
    return _check_compute_capability(getattr(gspec, "compute_capability", None), gpus)


def _check_compute_capability(wanted: Any, gpus: list[Gpu]) -> str | None:
    """`compute_capability` is a minimum; a GPU whose capability is not known (not NVIDIA, or
    a name gpuhunt does not list) does not meet it."""
    if wanted is None:
        return None
    want = tuple(int(x) for x in wanted)
    for g in gpus:
        have = compute_capability(g)
        if have is None or have < want:
            has = f"{have[0]}.{have[1]}" if have else "unknown"
            return f"gpu compute capability {want[0]}.{want[1]}+ ({g.name} has {has})"
    return None


def compute_capability(gpu: Gpu) -> tuple[int, int] | None:
    """From gpuhunt's table of NVIDIA GPUs, by name."""
    if gpu.vendor != "nvidia":
        return None
    return _nvidia_capabilities().get(gpu.name.lower())


_CC: dict[str, tuple[int, int]] = {}


def _nvidia_capabilities() -> dict[str, tuple[int, int]]:
    if not _CC:
        import gpuhunt

        for info in gpuhunt.KNOWN_NVIDIA_GPUS:
            _CC.setdefault(info.name.lower(), tuple(info.compute_capability))
    return _CC


CHECKS = (check_cpu, check_memory, check_disk, check_gpu)


def mismatch(spec: Any, res: Resources) -> str | None:
    """The first requirement `res` fails, or None when it satisfies them all."""
    if spec is None:
        return None
    for check in CHECKS:
        reason = check(spec, res)
        if reason is not None:
            return reason
    return None


@dataclass(frozen=True, slots=True)
class ShareView:
    """A share of a host as the checks above read it, in plain data: the scheduler tries each
    block count of a host, and a pydantic copy per try is what it would cost."""

    cpus: int
    memory_mib: int
    gpus: list[Gpu]
    spot: bool
    disk: Any
    cpu_arch: str | None


def share_view(res: Resources, blocks: int, total_blocks: int) -> Resources | ShareView:
    """`share()` for checking only (`mismatch` reads it alike)."""
    if blocks >= total_blocks:
        return res
    n_gpus = len(res.gpus) * blocks // total_blocks
    return ShareView(
        cpus=res.cpus * blocks // total_blocks,
        memory_mib=res.memory_mib * blocks // total_blocks,
        gpus=res.gpus[:n_gpus],
        spot=res.spot,
        # The disk is shared, not divided (server.md §4.4 splits CPUs, memory and GPUs).
        disk=res.disk,
        cpu_arch=res.cpu_arch,
    )


def share(res: Resources, blocks: int, total_blocks: int) -> Resources:
    """The resources of `blocks` out of `total_blocks` equal shares of a host."""
    view = share_view(res, blocks, total_blocks)
    if isinstance(view, Resources):
        return view
    return res.model_copy(
        update={"cpus": view.cpus, "memory_mib": view.memory_mib, "gpus": view.gpus}
    )
