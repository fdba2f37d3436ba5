"""GPU utilization, memory, power and temperature from the vendors' tools.

Parsing is kept in pure functions over the tools' text so that captured outputs test it
without the hardware. Every reading is a dict with the same keys whatever the vendor:
`index`, `util` (%), `memory_used_bytes`, `memory_total_bytes`, `power_watts`,
`temperature_celsius`; a value the tool does not report (`[N/A]`) is None.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

MIB = 2**20

NVIDIA_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,utilization.gpu,memory.used,memory.total,power.draw,temperature.gpu",
    "--format=csv,noheader,nounits",
]
AMD_SMI_QUERY = ["amd-smi", "metric", "--json"]
ROCM_SMI_QUERY = [
    "rocm-smi",
    "--showuse",
    "--showpower",
    "--showtemp",
    "--showmeminfo",
    "vram",
    "--json",
]

Reading = dict[str, Any]


def _number(text: Any) -> float | None:
    """A number out of `12`, `12.5 W`, `[N/A]`, {"value": 12, "unit": "%"}; None if none."""
    if isinstance(text, dict):
        text = text.get("value")
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = re.match(r"^\s*(-?\d+(?:\.\d+)?)", str(text or ""))
    return float(match.group(1)) if match else None


def _reading(
    index: int, util: Any, used: Any, total: Any, power: Any, temp: Any, unit: float
) -> Reading:
    used_n, total_n = _number(used), _number(total)
    return {
        "index": index,
        "util": _number(util),
        "memory_used_bytes": int(used_n * unit) if used_n is not None else None,
        "memory_total_bytes": int(total_n * unit) if total_n is not None else None,
        "power_watts": _number(power),
        "temperature_celsius": _number(temp),
    }


def parse_nvidia(text: str) -> list[Reading]:
    """`NVIDIA_QUERY`'s output: one line per GPU, memory in MiB."""
    readings = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6 or not fields[0].isdigit():
            continue
        readings.append(_reading(int(fields[0]), *fields[1:6], unit=MIB))
    return readings


_UNITS = {"B": 1, "KB": 1024, "MB": MIB, "MIB": MIB, "GB": 2**30, "GIB": 2**30}


def _bytes(value: Any) -> int | None:
    """`{"value": 1024, "unit": "MB"}` or `"1024 MB"` in bytes (MB as the tool means: MiB)."""
    if isinstance(value, dict):
        number, unit = _number(value.get("value")), str(value.get("unit") or "MB")
    else:
        number = _number(value)
        parts = str(value or "").split()
        unit = parts[1] if len(parts) > 1 else "MB"
    if number is None:
        return None
    return int(number * _UNITS.get(unit.upper(), MIB))


def _first(entry: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if isinstance(entry, dict) and entry.get(key) not in (None, "N/A"):
            return entry[key]
    return None


def parse_amd_smi(text: str) -> list[Reading]:
    """`amd-smi metric --json`: a list of GPUs (older releases) or {"gpu_data": [...]}."""
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    readings = []
    for position, entry in enumerate(data):
        usage, power = entry.get("usage") or {}, entry.get("power") or {}
        temp, mem = entry.get("temperature") or {}, entry.get("mem_usage") or {}
        reading = _reading(
            int(entry.get("gpu", position)),
            _first(usage, "gfx_activity", "gfx_usage"),
            None,
            None,
            _first(power, "socket_power", "average_socket_power", "current_socket_power"),
            _first(temp, "edge", "hotspot", "junction"),
            unit=1,
        )
        reading["memory_used_bytes"] = _bytes(_first(mem, "used_vram"))
        reading["memory_total_bytes"] = _bytes(_first(mem, "total_vram"))
        readings.append(reading)
    return readings


def _rocm_value(card: dict[str, Any], pattern: str) -> Any:
    for key, value in card.items():
        if re.search(pattern, key, re.IGNORECASE):
            return value
    return None


def parse_rocm_smi(text: str) -> list[Reading]:
    """`ROCM_SMI_QUERY`'s JSON: {"card0": {"GPU use (%)": "3", ...}, ...}."""
    data = json.loads(text)
    readings = []
    for key in sorted(k for k in data if k.startswith("card")):
        card = data[key]
        index = int(key[4:]) if key[4:].isdigit() else len(readings)
        readings.append(
            _reading(
                index,
                _rocm_value(card, r"^GPU use \(%\)"),
                _rocm_value(card, r"^VRAM Total Used Memory \(B\)"),
                _rocm_value(card, r"^VRAM Total Memory \(B\)"),
                _rocm_value(card, r"Package Power \(W\)|^Current Socket.*\(W\)"),
                _rocm_value(card, r"^Temperature \(Sensor edge\)|^Temperature \(Sensor junction\)"),
                unit=1,
            )
        )
    return readings


def read_gpus(run: Callable[[list[str]], str | None]) -> list[Reading]:
    """Readings of every GPU of the host from the first tool that answers (`run` returns a
    tool's stdout, or None when it is missing or failed); [] on a host without GPUs."""
    out = run(NVIDIA_QUERY)
    if out:
        return parse_nvidia(out)
    for argv, parser in ((AMD_SMI_QUERY, parse_amd_smi), (ROCM_SMI_QUERY, parse_rocm_smi)):
        out = run(argv)
        if out:
            try:
                return parser(out)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return []
