"""Text formats of the reference CLI (cli.md §1 "Output conventions"), as pure functions."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def format_price(price: float | None) -> str:
    """`$0.2`, `$2.19`, `$32.77`: up to four decimals, trailing zeros trimmed."""
    if price is None:
        return ""
    text = f"{price:.4f}".rstrip("0").rstrip(".")
    return f"${text}"


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'s' if n != 1 else ''} ago"


def pretty_date(when: datetime | None, now: datetime | None = None) -> str:
    """`now`, `12 sec ago`, `1 min ago`, `3 mins ago`, `1 hour ago`, `yesterday`, ..."""
    if when is None:
        return ""
    now = now or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    delta = now - when
    if delta.total_seconds() < 0:
        return "now"
    days, secs = delta.days, delta.seconds
    if days == 0:
        if secs < 10:
            return "now"
        if secs < 60:
            return f"{secs} sec ago"
        if secs < 120:
            return "1 min ago"
        if secs < 3600:
            return f"{secs // 60} mins ago"
        if secs < 7200:
            return "1 hour ago"
        return f"{secs // 3600} hours ago"
    if days == 1:
        return "yesterday"
    if days < 7:
        return f"{days} days ago"
    if days < 31:
        return _plural(days // 7, "week")
    if days < 365:
        return _plural(max(1, days // 30), "month")
    return _plural(days // 365, "year")


def format_duration(seconds: int | str | None, off_text: str = "off") -> str:
    """`5m`, `1h`, `1d`, `90s`; `off` for disabled; the largest exact unit wins."""
    if seconds is None or seconds == "off" or (isinstance(seconds, int) and seconds < 0):
        return off_text
    seconds = int(seconds)
    if seconds == 0:
        return "0s"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def backend_cell(backend: str | None, region: str | None = None) -> str:
    """`aws (us-east-1)`; the internal `remote` backend is shown as `ssh`."""
    if not backend:
        return ""
    name = "ssh" if backend == "remote" else backend
    return f"{name} ({region})" if region else name


def gb(mib: int | float) -> str:
    return f"{round(mib / 1024)}GB"


def resources_cell(resources: Any, spot: bool | None = None) -> str:
    """`cpu=x86:96 mem=1152GB disk=100GB gpu=A100:40GB:8` from an `instances.Resources`."""
    parts = []
    if resources.cpus:
        arch = f"{resources.cpu_arch}:" if resources.cpu_arch else ""
        parts.append(f"cpu={arch}{resources.cpus}")
    if resources.memory_mib:
        parts.append(f"mem={gb(resources.memory_mib)}")
    if resources.disk and resources.disk.size_mib:
        parts.append(f"disk={gb(resources.disk.size_mib)}")
    if resources.gpus:
        parts.append(gpu_cell(resources.gpus))
    text = " ".join(parts)
    if spot if spot is not None else False:
        text += " (spot)"
    return text


def gpu_cell(gpus: list[Any]) -> str:
    """`gpu=H100:80GB:2`, or `-` without GPUs (the `ps` GPU column)."""
    if not gpus:
        return "-"
    first = gpus[0]
    return f"gpu={first.name}:{gb(first.memory_mib)}:{len(gpus)}"
