"""Which of the host's GPUs a job gets, when it asks for some but not all of them.

Jobs sharing a host (blocks) must not see each other's GPUs: each job that asks for
`gpus > 0` is given specific devices, recorded in its directory, and only those are
made visible to it (`CUDA_VISIBLE_DEVICES`/`ROCR_VISIBLE_DEVICES`, or docker
`--gpus "device=..."`). `gpus = -1` means every GPU, `0` none.
"""

from __future__ import annotations

from typing import Any

GPUS_FILE = "gpus.json"


def allocate(host_gpus: list[dict[str, Any]], busy: set[int], count: int) -> list[int]:
    """Pick `count` device indices, free ones first (the server decides who fits where;
    should it overbook, sharing beats refusing to run)."""
    indices = range(len(host_gpus))
    ordered = [i for i in indices if i not in busy] + [i for i in indices if i in busy]
    return sorted(ordered[:count])


def assignment(host_gpus: list[dict[str, Any]], indices: list[int]) -> dict[str, Any]:
    chosen = [host_gpus[i] for i in indices]
    return {
        "vendor": host_gpus[0]["vendor"] if host_gpus else None,
        "indices": indices,
        # CUDA accepts UUIDs, which do not depend on device enumeration order.
        "devices": [g.get("uuid") or str(i) for g, i in zip(chosen, indices)],
    }


def visible_devices_env(assigned: dict[str, Any] | None) -> dict[str, str]:
    """An empty assignment (gpus = 0) hides NVIDIA GPUs; AMD ones are left alone then,
    as an empty ROCR_VISIBLE_DEVICES is not reliably "none"."""
    if not assigned:
        return {}
    if assigned.get("vendor") == "amd":
        if not assigned.get("indices"):
            return {}
        return {"ROCR_VISIBLE_DEVICES": ",".join(str(i) for i in assigned["indices"])}
    return {"CUDA_VISIBLE_DEVICES": ",".join(assigned.get("devices") or [])}


def docker_gpus_args(gpus: int, has_nvidia: bool, assigned: dict[str, Any] | None) -> list[str]:
    if not has_nvidia or gpus == 0:
        return []
    if gpus > 0 and assigned and assigned.get("vendor") == "nvidia" and assigned["devices"]:
        # The quotes are part of the value: docker parses --gpus as CSV.
        return ["--gpus", '"device=' + ",".join(assigned["devices"]) + '"']
    return ["--gpus", "all"]
