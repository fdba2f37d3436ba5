"""What the host offers: CPUs, memory, disk, GPUs, addresses, Docker.

Parsing of tool output is kept in pure functions so it can be tested on captured
samples without the hardware.
"""

from __future__ import annotations

import json
import os
import platform
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from dstack.agent import pyenv

CACHE_SECONDS = 5.0
TOOL_TIMEOUT = 10.0

_DROP_PREFIXES = {"nvidia", "tesla", "geforce", "quadro", "amd", "instinct", "radeon"}
_DROP_TOKEN_RE = re.compile(
    r"^(\d+(\.\d+)?[GM]B|PCIE|SXM\d*|HBM\d*E?|OAM|GENERATION|MAX-Q|\d+GB\w*)$", re.IGNORECASE
)


def short_gpu_name(full: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100'; 'NVIDIA GeForce RTX 4090' -> 'RTX4090'."""
    tokens = [t for t in re.split(r"[\s\-_]+", full.strip()) if t]
    while tokens and tokens[0].lower() in _DROP_PREFIXES:
        tokens.pop(0)
    kept = [t for t in tokens if not _DROP_TOKEN_RE.match(t)]
    return "".join(kept) or full.strip()


def parse_nvidia_smi(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """Parse `--query-gpu=name,memory.total,uuid,driver_version --format=csv,noheader,nounits`."""
    gpus: list[dict[str, Any]] = []
    driver: str | None = None
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2 or not fields[0]:
            continue
        try:
            memory = int(float(fields[1]))
        except ValueError:
            continue
        uuid = fields[2] if len(fields) > 2 and fields[2] not in ("", "[N/A]") else None
        if len(fields) > 3 and fields[3] and fields[3] != "[N/A]":
            driver = fields[3]
        gpus.append(
            {
                "vendor": "nvidia",
                "name": short_gpu_name(fields[0]),
                "memory_mib": memory,
                "uuid": uuid,
            }
        )
    return gpus, driver


def _amd_name(text: str) -> str:
    match = re.search(r"\bMI\d+\w*", text)
    return match.group(0) if match else short_gpu_name(text)


def _to_mib(value: Any, unit: str = "B") -> int:
    number = float(str(value).split()[0])
    factor = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "MIB": 1.0, "GB": 1024.0, "GIB": 1024.0}
    return int(number * factor.get(unit.upper(), 1.0))


def parse_rocm_smi(text: str) -> list[dict[str, Any]]:
    """Parse `rocm-smi --showproductname --showmeminfo vram --showuniqueid --json`."""
    data = json.loads(text)
    gpus = []
    for key in sorted(data):
        if not key.startswith("card"):
            continue
        card = data[key]
        name = card.get("Card Series") or card.get("Card series") or card.get("Card model", "")
        total = card.get("VRAM Total Memory (B)")
        gpus.append(
            {
                "vendor": "amd",
                "name": _amd_name(str(name)),
                "memory_mib": _to_mib(total) if total is not None else 0,
                "uuid": card.get("Unique ID"),
            }
        )
    return gpus


def parse_amd_smi(text: str) -> list[dict[str, Any]]:
    """Parse `amd-smi static --asic --vram --json` (list or {"gpu_data": [...]})."""
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    gpus = []
    for entry in data:
        asic = entry.get("asic", {})
        size = entry.get("vram", {}).get("size", 0)
        if isinstance(size, dict):
            memory = _to_mib(size.get("value", 0), size.get("unit", "MB"))
        else:
            memory = _to_mib(size, "MB")
        gpus.append(
            {
                "vendor": "amd",
                "name": _amd_name(str(asic.get("market_name", ""))),
                "memory_mib": memory,
                "uuid": asic.get("asic_serial"),
            }
        )
    return gpus


def parse_ip_addr(text: str) -> list[str]:
    """Non-loopback IPv4 addresses from `ip -4 -o addr show`."""
    addresses = []
    for line in text.splitlines():
        match = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", line)
        if match and not match.group(1).startswith("127."):
            addresses.append(match.group(1))
    return addresses


def parse_meminfo(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def cpu_arch(machine: str) -> str:
    return "arm" if machine.lower() in ("aarch64", "arm64") or machine.startswith("arm") else "x86"


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


run_tool = _run  # for the metrics sampler: the same timeouts and failure handling


def _gpus() -> tuple[list[dict[str, Any]], str | None]:
    out = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,uuid,driver_version",
            "--format=csv,noheader,nounits",
        ]
    )
    if out:
        return parse_nvidia_smi(out)
    for argv, parser in (
        (["amd-smi", "static", "--asic", "--vram", "--json"], parse_amd_smi),
        (
            ["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--showuniqueid", "--json"],
            parse_rocm_smi,
        ),
    ):
        out = _run(argv)
        if out:
            try:
                return parser(out), None
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return [], None


def _memory_mib() -> int:
    try:
        return parse_meminfo(Path("/proc/meminfo").read_text())
    except OSError:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        except (ValueError, OSError, AttributeError):
            return 0


def _addresses() -> list[str]:
    out = _run(["ip", "-4", "-o", "addr", "show"])
    if out is not None:
        return parse_ip_addr(out)
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return []
    return sorted({str(i[4][0]) for i in infos if not str(i[4][0]).startswith("127.")})


def docker_available() -> bool:
    out = _run(["docker", "info", "--format", "{{.ServerVersion}}"])
    return bool(out and out.strip())


def collect(home: Path) -> dict[str, Any]:
    gpus, driver = _gpus()
    disk = shutil.disk_usage(str(home))
    return {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count() or 1,
        "cpu_arch": cpu_arch(platform.machine()),
        "memory_mib": _memory_mib(),
        "disk_size_mib": disk.total // 2**20,
        "disk_free_mib": disk.free // 2**20,
        "gpus": gpus,
        "addresses": _addresses(),
        "docker": docker_available(),
        "gpu_driver": driver,
        **runtime_facts(),
    }


def runtime_facts() -> dict[str, Any]:
    """What the server's plan checks a process-runtime job against: who the agent runs as
    (only root can run a job as another `user`), the Pythons on PATH (`python`), uv, nvcc."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return {
        "agent_user": name,
        "agent_uid": uid,
        "agent_root": uid == 0,
        "pythons": pyenv.versions(),
        "uv": pyenv.uv_available(),
        "nvcc": shutil.which("nvcc") is not None,
    }


class GpuCache:
    """The GPU list for device assignment; GPUs do not come and go, so cache it long."""

    def __init__(self, ttl: float = 3600.0) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._value: list[dict[str, Any]] | None = None
        self._at = 0.0

    def get(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._value is None or time.monotonic() - self._at > self._ttl:
                self._value = _gpus()[0]
                self._at = time.monotonic()
            return self._value


class HostInfoCache:
    """Probing runs tools with timeouts; cache briefly so frequent polls stay cheap."""

    def __init__(self, home: Path, ttl: float = CACHE_SECONDS) -> None:
        self._home = home
        self._ttl = ttl
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._at = 0.0

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._at > self._ttl:
                self._value = collect(self._home)
                self._at = time.monotonic()
            return self._value
