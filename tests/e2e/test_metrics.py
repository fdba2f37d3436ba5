"""Metrics end to end: a real server whose local agent sees two H100s through a fake
`nvidia-smi` on PATH (tests/agent/samples/fake-nvidia-smi, utilization $FAKE_GPU_UTIL = 3%),
sampling every half second. `dstack metrics`, utilization_policy stopping a run whose GPU
idles, and `/metrics` parsed as Prometheus parses it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import Server, free_port, wait_until, write_config
from .services_util import (
    JOB_PYTHON,
    apply_detached,
    auth,
    proxy_url,
    service,
    service_dir,
    wait_serving,
)

FAKE = Path(__file__).resolve().parents[1] / "agent" / "samples" / "fake-nvidia-smi"


@pytest.fixture(scope="module")
def gpu_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("metrics-home")
    bin_dir = home / "bin"
    bin_dir.mkdir()
    shutil.copy(FAKE, bin_dir / "nvidia-smi")
    srv = Server(
        home=home,
        extra_env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_GPU_UTIL": "3",
            "DSTACK_AGENT_METRICS_INTERVAL": "0.5",
            "DSTACK_MIN_UTILIZATION_WINDOW_SECONDS": "1",
            "DSTACK_ENABLE_PROMETHEUS_METRICS": "1",
            "DSTACK_SERVER_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        },
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()


def _task(name: str, extra: str = "") -> str:
    command = json.dumps(f"{JOB_PYTHON} -c 'import time; time.sleep(600)'")
    return (
        f"type: task\nname: {name}\ncommands:\n  - {command}\nresources:\n  gpu: H100:2\n" + extra
    )


def _metrics(srv: Server, name: str, **params: object) -> dict[str, dict]:
    r = httpx.get(
        f"{srv.url}/api/project/main/metrics/job/{name}",
        params={"limit": 100, **params},
        headers=auth(srv),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["metrics"]}


def test_dstack_metrics_shows_the_jobs_gpu(gpu_srv: Server, tmp_path: Path) -> None:
    write_config(tmp_path, "t.dstack.yml", _task("watched"))
    r = gpu_srv.cli("apply", "-f", "t.dstack.yml", "-y", "-d", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    gpu_srv.wait_status("watched", "running")
    series = wait_until(
        lambda: (
            (m := _metrics(gpu_srv, "watched"))
            and len(m.get("gpu_util_percent_gpu0", {}).get("values", [])) >= 3
            and m
        ),
        timeout=30,
        what="three samples of the job's GPU",
    )
    assert set(series) >= {
        "cpu_usage_percent",
        "memory_usage_bytes",
        "memory_working_set_bytes",
        "gpus_detected_num",
        "gpu_util_percent_gpu0",
        "gpu_memory_usage_bytes_gpu0",
        "gpu_power_draw_watts_gpu0",
        "gpu_temperature_celsius_gpu0",
    }
    # The local backend offers the whole machine: the job has both GPUs.
    assert series["gpus_detected_num"]["values"][-1] == 2
    assert series["gpu_memory_usage_bytes_gpu1"]["values"][-1] == 900 * 1024 * 1024
    assert series["gpu_util_percent_gpu0"]["values"][-1] == 3.0
    assert series["memory_usage_bytes"]["values"][-1] > 1024 * 1024
    out = gpu_srv.cli("metrics", "watched")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "job=0" in out.stdout and "gpu=1" in out.stdout and "3%" in out.stdout
    assert any(block in out.stdout for block in "▁▂▃▄▅▆▇█")
    missing = gpu_srv.cli("metrics", "no-such-run")
    assert missing.returncode == 1 and "not found" in (missing.stdout + missing.stderr)
    gpu_srv.cli("stop", "watched", "-y", "-x")


def test_utilization_policy_stops_an_idle_gpu_run(gpu_srv: Server, tmp_path: Path) -> None:
    policy = "utilization_policy:\n  min_gpu_utilization: 10\n  time_window: 10s\n"
    write_config(tmp_path, "idle.dstack.yml", _task("idle-gpu", policy))
    r = gpu_srv.cli("apply", "-f", "idle.dstack.yml", "-y", "-d", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    run = gpu_srv.wait_status("idle-gpu", "terminated", "failed", "done", timeout=60)
    sub = run["jobs"][0]["job_submissions"][-1]
    assert sub["termination_reason"] == "terminated_due_to_utilization_policy", sub
    assert "GPU 0 utilization stayed below 10%" in (sub["termination_reason_message"] or "")
    ps = gpu_srv.cli("ps", "-a", "-v")
    assert "utilization policy" in ps.stdout, ps.stdout
    events = gpu_srv.cli("event")
    assert "TERMINATED_DUE_TO_UTILIZATION_POLICY" in events.stdout, events.stdout


def test_a_busy_gpu_run_keeps_running(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same policy, the fake GPU at 95%: the run outlives the window several times."""
    home = tmp_path_factory.mktemp("busy-home")
    bin_dir = home / "bin"
    bin_dir.mkdir()
    shutil.copy(FAKE, bin_dir / "nvidia-smi")
    srv = Server(
        home=home,
        extra_env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_GPU_UTIL": "95",
            "DSTACK_AGENT_METRICS_INTERVAL": "0.5",
            "DSTACK_MIN_UTILIZATION_WINDOW_SECONDS": "1",
        },
    )
    srv.start()
    try:
        policy = "utilization_policy:\n  min_gpu_utilization: 10\n  time_window: 5s\n"
        work = tmp_path_factory.mktemp("busy")
        write_config(work, "b.dstack.yml", _task("busy-gpu", policy))
        r = srv.cli("apply", "-f", "b.dstack.yml", "-y", "-d", cwd=work)
        assert r.returncode == 0, r.stdout + r.stderr
        srv.wait_status("busy-gpu", "running")
        wait_until(
            lambda: (
                len(_metrics(srv, "busy-gpu").get("gpu_util_percent_gpu0", {}).get("values", []))
                >= 12
            ),
            timeout=30,
            what="twelve seconds of samples",
        )
        assert srv.run("busy-gpu")["status"] == "running"
    finally:
        srv.cleanup()


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_prometheus_endpoint(gpu_srv: Server, tmp_path: Path) -> None:
    write_config(tmp_path, "p.dstack.yml", _task("scraped"))
    assert gpu_srv.cli("apply", "-f", "p.dstack.yml", "-y", "-d", cwd=tmp_path).returncode == 0
    gpu_srv.wait_status("scraped", "running")
    d = service_dir(tmp_path / "svc")
    apply_detached(gpu_srv, d, "web", service("web"))
    wait_serving(gpu_srv, "web")
    for _ in range(3):
        assert (
            httpx.get(proxy_url(gpu_srv, "web", "hello"), headers=auth(gpu_srv)).status_code == 200
        )
    address = gpu_srv.extra_env["DSTACK_SERVER_METRICS_ADDRESS"]

    def scraped() -> dict[str, list] | None:
        r = httpx.get(f"http://{address}/metrics", timeout=10)  # the separate listener: no token
        assert r.status_code == 200
        families = _families(r.text)
        gpu = families.get("dstack_job_gpu_usage_ratio", [])
        return families if any(s.labels["run_name"] == "scraped" for s in gpu) else None

    families = wait_until(scraped, timeout=30, what="the job's GPU gauge")
    runs = {
        (s.labels["project_name"], s.labels["status"]): s.value for s in families["dstack_runs"]
    }
    assert runs[("main", "running")] >= 2
    for name in ("dstack_jobs", "dstack_fleets", "dstack_instances"):
        assert families[name], name
    gpu = [s for s in families["dstack_job_gpu_usage_ratio"] if s.labels["run_name"] == "scraped"]
    assert gpu[0].value == pytest.approx(0.03) and gpu[0].labels["gpu"] == "0"
    assert gpu[0].labels["job_name"] and gpu[0].labels["replica_num"] == "0"
    for name in (
        "dstack_job_cpu_usage_ratio",
        "dstack_job_memory_usage_bytes",
        "dstack_job_memory_working_set_bytes",
        "dstack_job_gpu_memory_usage_bytes",
        "dstack_job_gpu_power_draw_watts",
        "dstack_job_gpu_temperature_celsius",
    ):
        assert any(s.labels.get("run_name") == "scraped" for s in families[name]), name
    assert "dstack_instance_price_dollars_per_hour" in families
    proxied = [
        s
        for s in families["dstack_proxy_requests"]
        if s.name.endswith("_total") and s.labels["run_name"] == "web"
    ]
    assert proxied and proxied[0].labels["outcome"] == "forwarded" and proxied[0].value >= 3
    latency = families["dstack_proxy_request_duration_seconds"]
    assert any(s.name.endswith("_count") and s.labels["run_name"] == "web" for s in latency)
    passes = families["dstack_reconciler_pass_duration_seconds"]
    assert {s.labels["kind"] for s in passes if s.name.endswith("_count")} >= {"runs", "jobs"}
    assert "dstack_reconciler_leases_lost" in families
    # On the API port: the admin's token, and nothing without one.
    api = httpx.get(f"{gpu_srv.url}/metrics", headers=auth(gpu_srv), timeout=10)
    assert api.status_code == 200 and "dstack_runs" in _families(api.text)
    assert httpx.get(f"{gpu_srv.url}/metrics", timeout=10).status_code == 403
    assert httpx.get(f"http://{address}/api/runs/list", timeout=10).status_code == 404
    for name in ("scraped", "web"):
        gpu_srv.cli("stop", name, "-y", "-x")
