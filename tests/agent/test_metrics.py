"""Agent metrics: parsing captured vendor-tool outputs, process-tree and cgroup accounting,
the ring buffer, and a real agent with a fake `nvidia-smi` handing samples over with the job
list."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.agent import gpu_metrics
from dstack.agent import protocol as p
from dstack.agent.metrics import (
    Sampler,
    cgroup_usage,
    descendants,
    job_gpus,
    parse_cgroup_path,
    parse_stat,
    tree_usage,
)

from .helpers import AgentProcess, wait_for

SAMPLES = Path(__file__).parent / "samples"
MIB = 2**20


def _sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_parse_nvidia_8xh100() -> None:
    readings = gpu_metrics.parse_nvidia(_sample("nvidia-smi-metrics-8xH100.txt"))
    assert [r["index"] for r in readings] == list(range(8))
    assert readings[0] == {
        "index": 0,
        "util": 97.0,
        "memory_used_bytes": 71234 * MIB,
        "memory_total_bytes": 81559 * MIB,
        "power_watts": 651.2,
        "temperature_celsius": 66.0,
    }
    assert readings[2]["util"] == 0.0 and readings[3]["util"] == 100.0


def test_parse_nvidia_not_available_values_are_none() -> None:
    first, second = gpu_metrics.parse_nvidia(
        "garbage line\n" + _sample("nvidia-smi-metrics-na.txt")
    )
    assert first["power_watts"] is None and first["util"] == 3.0
    assert second["util"] is None and second["temperature_celsius"] is None
    assert second["memory_used_bytes"] == 0


def test_parse_amd_smi_mi300x() -> None:
    first, second = gpu_metrics.parse_amd_smi(_sample("amd-smi-metric-mi300x.json"))
    assert first == {
        "index": 0,
        "util": 87.0,
        "memory_used_bytes": 150100 * MIB,
        "memory_total_bytes": 196592 * MIB,
        "power_watts": 612.0,
        "temperature_celsius": 58.0,  # edge is N/A on MI300X: the hotspot is taken
    }
    assert second["util"] == 0.0 and second["memory_used_bytes"] == 283 * MIB


def test_parse_amd_smi_legacy_flat_values() -> None:
    (reading,) = gpu_metrics.parse_amd_smi(_sample("amd-smi-metric-legacy.json"))
    assert reading["util"] == 42.0 and reading["power_watts"] == 250.0
    assert reading["temperature_celsius"] == 40.0
    assert reading["memory_total_bytes"] == 65520 * MIB


def test_parse_rocm_smi() -> None:
    first, second = gpu_metrics.parse_rocm_smi(_sample("rocm-smi-metrics.json"))
    assert first["util"] == 7.0 and first["memory_used_bytes"] == 11575296
    assert first["power_watts"] == 39.0 and first["temperature_celsius"] == 35.0
    assert second["index"] == 1 and second["power_watts"] == 140.0
    assert second["temperature_celsius"] == 52.0


def test_read_gpus_falls_back_to_amd_tools() -> None:
    answers = {"rocm-smi": _sample("rocm-smi-metrics.json"), "amd-smi": "not json"}
    readings = gpu_metrics.read_gpus(lambda argv: answers.get(argv[0]))
    assert [r["util"] for r in readings] == [7.0, 100.0]
    assert gpu_metrics.read_gpus(lambda argv: None) == []


def test_job_gpus_follow_the_assignment() -> None:
    host = [{"index": i, "util": float(i)} for i in range(4)]
    assert job_gpus({"indices": [1, 3]}, host) == [host[1], host[3]]
    assert job_gpus({"indices": []}, host) == []
    assert job_gpus(None, host) == host


def test_process_tree_and_stat() -> None:
    stat = "42 (my (odd) cmd) S 7 42 42 0 -1 0 0 0 0 0 150 50 0 0 20 0 1 0 100 0 25"
    parent, cpu, rss = parse_stat(stat)
    assert parent == 7 and rss == 25 * os.sysconf("SC_PAGE_SIZE")
    assert cpu == pytest.approx(200 / os.sysconf("SC_CLK_TCK"))
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 20: 1}
    assert descendants(parents, 10) == {10, 11, 12}
    assert descendants(parents, 99) == set()


def test_cgroup_files(tmp_path: Path) -> None:
    assert (
        parse_cgroup_path("0::/system.slice/docker-abc.scope\n") == "/system.slice/docker-abc.scope"
    )
    (tmp_path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (tmp_path / "memory.current").write_text("1048576\n")
    (tmp_path / "memory.stat").write_text("anon 500000\ninactive_file 48576\n")
    assert cgroup_usage(tmp_path) == (2.5, 1048576, 1000000)
    assert cgroup_usage(tmp_path / "missing") is None


def test_tree_usage_of_this_process() -> None:
    from dstack.agent.metrics import _proc_table

    cpu, rss, working_set = tree_usage(os.getpid(), _proc_table(Path("/proc")))
    assert cpu > 0 and rss > 10 * MIB and 0 < working_set <= rss


def test_sampler_ring_buffer_and_cpu_percent(tmp_path: Path) -> None:
    job_dir = tmp_path / "j1"
    job_dir.mkdir()
    (job_dir / "child.json").write_text(f'{{"pid": {os.getpid()}}}')
    (job_dir / "gpus.json").write_text('{"indices": [1]}')
    gpus = [{"index": 0, "util": 1.0}, {"index": 1, "util": 2.0}]
    sampler = Sampler(lambda: [("j1", job_dir)], lambda: gpus, interval=1, size=3)
    for _ in range(5):
        sampler.sample_once()
        time.sleep(0.01)
    samples = sampler.since(0)["j1"]
    assert len(samples) == 3  # bounded
    assert samples[0]["cpu_usage_percent"] is not None  # a previous sample existed
    assert samples[-1]["gpus"] == [{"index": 1, "util": 2.0}]
    assert sampler.since(samples[-1]["ts"]) == {}
    assert list(sampler.since(samples[0]["ts"])["j1"]) == samples[1:]


@pytest.fixture
def metrics_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(SAMPLES / "fake-nvidia-smi", bin_dir / "nvidia-smi")
    agent = AgentProcess(tmp_path / "home")
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    agent.start(
        env_extra={"PATH": path, "DSTACK_AGENT_METRICS_INTERVAL": "0.2", "FAKE_GPU_UTIL": "7"}
    )
    try:
        yield agent
    finally:
        agent.cleanup_jobs()
        agent.kill()


def test_agent_reports_samples_with_the_job_list(metrics_agent: AgentProcess) -> None:
    metrics_agent.shell("busy", "while :; do :; done", gpus=1)

    def samples() -> list | None:
        body = metrics_agent.ok("GET", p.LIST_JOBS.path(), params={p.METRICS_AFTER: 0})
        got = p.metrics_of(body).get("busy") or []
        return got if len(got) >= 3 else None

    got = wait_for(samples, timeout=10)
    last = got[-1]
    # A busy loop (on a loaded test machine it gets what it gets, but clearly more than 0).
    assert max(s["cpu_usage_percent"] or 0 for s in got) > 5
    assert last["memory_usage_bytes"] > 0
    assert last["gpus"] == [
        {
            "index": 0,
            "util": 7.0,
            "memory_used_bytes": 1200 * MIB,
            "memory_total_bytes": 81559 * MIB,
            "power_watts": 71.5,
            "temperature_celsius": 33.0,
        }
    ]
    newer = metrics_agent.ok("GET", p.LIST_JOBS.path(), params={p.METRICS_AFTER: last["ts"]})
    assert all(s["ts"] > last["ts"] for s in p.metrics_of(newer).get("busy", []))
    assert p.METRICS not in metrics_agent.ok("GET", p.LIST_JOBS.path())
    bad = metrics_agent.get(p.LIST_JOBS.path(), params={p.METRICS_AFTER: "x"})
    assert bad.status_code == 400 and p.METRICS_AFTER in bad.json()["error"]
