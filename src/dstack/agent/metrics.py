"""Per-job resource samples: CPU, memory and the job's GPUs, taken every `interval` seconds
into a bounded ring buffer per job, and handed to the server inside the job list it polls
anyway (`LIST_JOBS?metrics_after=TS`), so metrics never cost a request of their own.

A process job is measured over its process tree (every descendant of the job's child, read
from /proc); a docker job over its container's cgroup (v2) when the agent can read it, else
over the container's process tree. Memory usage is the resident set (cgroup:
`memory.current`); the working set leaves out what the kernel may drop at once (page cache:
`RssFile` of each process, cgroup `inactive_file`), as a memory limit would see it.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from dstack.agent import docker, gpu_metrics
from dstack.agent import protocol as p
from dstack.agent.gpus import GPUS_FILE
from dstack.agent.util import CHILD_FILE, SPEC_FILE, read_json

log = logging.getLogger("dstack.agent")

INTERVAL_ENV = "DSTACK_AGENT_METRICS_INTERVAL"
DEFAULT_INTERVAL = 10.0
# 360 samples: an hour at the default interval, a few hundred KB for a busy host.
SAMPLES_PER_JOB = 360
MAX_JOBS = 256

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- process trees -----------------------------------------------------------------------


def parse_stat(text: str) -> tuple[int, float, int]:
    """(parent pid, CPU seconds used, resident bytes) from one /proc/<pid>/stat line."""
    fields = text.rsplit(")", 1)[-1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, int(fields[21]) * PAGE


def parse_status_file_rss(text: str) -> int:
    """`RssFile` of /proc/<pid>/status in bytes: the page cache share of the resident set."""
    for line in text.splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    return 0


def descendants(parents: dict[int, int], root: int) -> set[int]:
    """`root` and every process below it, from a pid -> parent pid table."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, ppid in parents.items():
        children[ppid].append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found or pid not in parents:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def _proc_table(proc: Path) -> dict[int, tuple[int, float, int]]:
    table = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            table[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return table


def tree_usage(
    root: int, table: dict[int, tuple[int, float, int]], proc: Path = Path("/proc")
) -> tuple[float, int, int]:
    """(CPU seconds, memory usage bytes, working set bytes) of `root`'s process tree."""
    cpu, rss, cache = 0.0, 0, 0
    for pid in descendants({k: v[0] for k, v in table.items()}, root):
        cpu += table[pid][1]
        rss += table[pid][2]
        try:
            cache += parse_status_file_rss((proc / str(pid) / "status").read_text())
        except OSError:
            continue
    return cpu, rss, max(rss - cache, 0)


# --- cgroups (docker) --------------------------------------------------------------------


def parse_cgroup_path(text: str) -> str | None:
    """The cgroup v2 path of a process (`0::/system.slice/docker-<id>.scope`)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`cpu.stat` / `memory.stat`: lines of `key value`."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def cgroup_usage(directory: Path) -> tuple[float, int, int] | None:
    """(CPU seconds, memory usage bytes, working set bytes) of one cgroup v2 directory."""
    try:
        cpu = parse_flat_keyed((directory / "cpu.stat").read_text())["usage_usec"] / 1e6
        current = int((directory / "memory.current").read_text().strip())
        inactive = parse_flat_keyed((directory / "memory.stat").read_text()).get("inactive_file", 0)
    except (OSError, KeyError, ValueError):
        return None
    return cpu, current, max(current - inactive, 0)


def _container_pid(job_id: str) -> int | None:
    name = docker.container_name(job_id)
    out = docker.docker_cmd(["inspect", "--format", "{{.State.Pid}}", name])
    text = out.stdout.strip() if out is not None and out.returncode == 0 else ""
    return int(text) if text.isdigit() and int(text) > 0 else None


# --- the sampler -------------------------------------------------------------------------


class Sampler:
    """Samples every running job of the store each `interval` seconds in a daemon thread.

    `jobs()` lists the running jobs as (id, job directory); `gpus()` reads the host's GPUs."""

    def __init__(
        self,
        jobs: Callable[[], list[tuple[str, Path]]],
        gpus: Callable[[], list[dict[str, Any]]],
        interval: float | None = None,
        size: int = SAMPLES_PER_JOB,
    ) -> None:
        self.interval = interval or float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL)
        self._jobs, self._gpus, self._size = jobs, gpus, size
        self._lock = threading.Lock()
        self._buffers: dict[str, collections.deque[dict[str, Any]]] = {}
        self._last_cpu: dict[str, tuple[float, float]] = {}
        self._docker_pids: dict[str, int] = {}

    def start(self) -> None:
        threading.Thread(target=self._loop, name="metrics", daemon=True).start()

    def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception:
                log.exception("metrics sample failed")
            time.sleep(max(self.interval - (time.monotonic() - started), 0.1))

    def sample_once(self) -> None:
        running = self._jobs()
        host_gpus = self._gpus() if running else []
        table = _proc_table(Path("/proc")) if running else {}
        now, wall = time.time(), time.monotonic()
        samples = {}
        for job_id, path in running:
            usage = self._usage(job_id, path, table)
            if usage is None:
                continue
            samples[job_id] = self._sample(job_id, path, usage, host_gpus, now, wall)
        with self._lock:
            for job_id, sample in samples.items():
                buf = self._buffers.setdefault(job_id, collections.deque(maxlen=self._size))
                buf.append(sample)
            self._forget(set(samples))

    def _forget(self, live: set[str]) -> None:
        """Finished jobs keep their samples (the server may not have fetched the last ones)
        until MAX_JOBS newer ones push them out."""
        for job_id in [j for j in self._last_cpu if j not in live]:
            del self._last_cpu[job_id]
            self._docker_pids.pop(job_id, None)
        while len(self._buffers) > MAX_JOBS:
            oldest = min(self._buffers, key=lambda j: self._buffers[j][-1]["ts"])
            del self._buffers[oldest]

    def _usage(
        self, job_id: str, path: Path, table: dict[int, tuple[int, float, int]]
    ) -> tuple[float, int, int] | None:
        spec = read_json(path / SPEC_FILE) or {}
        if spec.get("runtime") == "docker":
            pid = self._docker_pids.get(job_id) or _container_pid(job_id)
            if pid is None:  # not created yet (image pull): asked again next time
                return None
            self._docker_pids[job_id] = pid
            try:
                cgroup = parse_cgroup_path(Path(f"/proc/{pid}/cgroup").read_text())
            except OSError:
                cgroup = None
            usage = cgroup_usage(Path("/sys/fs/cgroup" + cgroup)) if cgroup else None
            return usage or tree_usage(pid, table)
        child = read_json(path / CHILD_FILE) or {}
        pid = int(child.get("pid") or 0)
        return tree_usage(pid, table) if pid in table else None

    def _sample(
        self,
        job_id: str,
        path: Path,
        usage: tuple[float, int, int],
        host_gpus: list[dict[str, Any]],
        now: float,
        wall: float,
    ) -> dict[str, Any]:
        cpu, memory, working_set = usage
        previous = self._last_cpu.get(job_id)
        self._last_cpu[job_id] = (cpu, wall)
        percent = None
        if previous is not None and wall > previous[1]:
            percent = round(max(cpu - previous[0], 0.0) / (wall - previous[1]) * 100, 2)
        return {
            "ts": round(now, 3),
            "cpu_usage_percent": percent,
            "memory_usage_bytes": memory,
            "memory_working_set_bytes": working_set,
            "gpus": job_gpus(read_json(path / GPUS_FILE), host_gpus),
        }

    def since(self, after: float) -> dict[str, list[dict[str, Any]]]:
        """Every buffered sample newer than `after` (seconds since the epoch), by job."""
        with self._lock:
            out = {}
            for job_id, buf in self._buffers.items():
                newer = [s for s in buf if s["ts"] > after]
                if newer:
                    out[job_id] = newer
            return out


def job_gpus(assigned: Any, host_gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The readings of the GPUs the job was given (`gpus.json`); every GPU when it has no
    assignment (it asked for all of them)."""
    if isinstance(assigned, dict) and isinstance(assigned.get("indices"), list):
        wanted = set(assigned["indices"])
        return [g for g in host_gpus if g.get("index") in wanted]
    return list(host_gpus)


def running_jobs(root: Path, states: list[p.JobState]) -> list[tuple[str, Path]]:
    return [(s["id"], root / s["id"]) for s in states if s["status"] == p.RUNNING]


def gpu_reader(run: Callable[[list[str]], str | None]) -> Callable[[], list[dict[str, Any]]]:
    return lambda: gpu_metrics.read_gpus(run)
