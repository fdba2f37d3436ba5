"""Replicas, probes, autoscaling, scale to zero, rolling updates and the OpenAI entry point,
end to end with real processes (see test_services.py)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from .harness import Server, free_port_block, wait_until
from .services_util import (
    apply_detached,
    auth,
    proxy_url,
    ready_replicas,
    service,
    service_dir,
    shared_dir,
    wait_serving,
)


def live_replicas(server: Server, name: str) -> list[dict]:
    run = server.run(name)
    return [
        j["job_submissions"][-1]
        for j in run["jobs"]
        if j["job_submissions"][-1]["status"] in ("submitted", "provisioning", "running")
    ]


class Load:
    """A steady client in a thread: `rps` requests per second, every status recorded."""

    def __init__(self, server: Server, name: str, rps: float, path: str = "") -> None:
        self.url = proxy_url(server, name, path)
        self.headers = auth(server)
        self.period = 1.0 / rps
        self.statuses: list[int] = []
        self.bodies: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                r = client.get(self.url, headers=self.headers)
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.bodies.append(r.json())
                self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=40)


def test_openai_chat_completions_through_the_models_entry(srv: Server, tmp_path: Path):
    d = service_dir(tmp_path)
    apply_detached(srv, d, "llm", service("llm", extra="model: fake-model\n"))
    base = f"{srv.url}/proxy/models/main"
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}]}
    # The default model probe must pass before the replica takes requests.
    r = httpx.post(f"{base}/chat/completions", json=body, headers=auth(srv), timeout=90)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: hello there"
    models = httpx.get(f"{base}/models", headers=auth(srv)).json()
    assert [m["id"] for m in models["data"]] == ["fake-model"]
    words = []
    with httpx.stream(
        "POST", f"{base}/chat/completions", json={**body, "stream": True}, headers=auth(srv)
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                words.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
    assert words == ["echo:", "hello", "there"]
    r = httpx.post(
        f"{base}/chat/completions", json={**body, "model": "gpt-nope"}, headers=auth(srv)
    )
    assert r.status_code == 404 and "gpt-nope" in r.text
    assert httpx.get(f"{base}/models").status_code == 403
    run = srv.run("llm")
    assert run["service"]["model"]["base_url"] == "/proxy/models/main/"
    srv.api("/api/project/main/runs/stop", {"runs_names": ["llm"], "abort": True})


def test_failing_probe_keeps_a_replica_out_of_rotation(
    srv: Server, tmp_path: Path, request: pytest.FixtureRequest
):
    d = service_dir(tmp_path)
    port = free_port_block()
    flags = shared_dir(request)  # the replicas read it
    flag = flags / "fail"
    (flags / f"fail.{port + 1}").write_text("replica 1 is sick")
    extra = (
        "replicas: 2\n"
        "probes:\n  - type: http\n    url: /health\n    interval: 1s\n    timeout: 2s\n"
    )
    apply_detached(
        srv, d, "probed", service("probed", port=port, extra=extra, env={"FAIL_HEALTH": flag})
    )
    wait_until(
        lambda: len(ready_replicas(srv, "probed")) == 2, timeout=60, what="two running replicas"
    )
    wait_serving(srv, "probed")
    time.sleep(3)  # several probe rounds
    seen = set()
    for _ in range(20):
        r = httpx.get(proxy_url(srv, "probed", "who"), headers=auth(srv))
        assert r.status_code == 200
        seen.add(r.json()["replica"])
    assert len(seen) == 1  # only the healthy replica serves
    events = srv.api("/api/events/list", {"target_name": "probed-0-0", "limit": 100}).json()
    assert any(e["message"] == "Replica ready: probes passed" for e in events)
    ps = srv.cli("ps", "-v")
    assert "replica=1" in ps.stdout and "×" in ps.stdout and "✓" in ps.stdout, ps.stdout
    # The sick replica recovers: both serve.
    (flags / f"fail.{port + 1}").unlink()
    wait_until(
        lambda: (
            len(
                {
                    httpx.get(proxy_url(srv, "probed", "who"), headers=auth(srv)).json()["replica"]
                    for _ in range(20)
                }
            )
            == 2
        ),
        timeout=30,
        what="both replicas in rotation",
    )
    srv.api("/api/project/main/runs/stop", {"runs_names": ["probed"], "abort": True})


def test_load_above_target_adds_a_replica_then_it_is_scaled_down(srv: Server, tmp_path: Path):
    d = service_dir(tmp_path)
    extra = (
        "replicas: 1..2\n"
        "scaling:\n  metric: rps\n  target: 1\n  window: 30s\n"
        "  scale_up_delay: 1s\n  scale_down_delay: 2s\n"
    )
    apply_detached(srv, d, "auto", service("auto", extra=extra))
    wait_serving(srv, "auto")
    with Load(srv, "auto", rps=15) as load:
        wait_until(
            lambda: len(ready_replicas(srv, "auto")) == 2,
            timeout=60,
            interval=0.5,
            what="a second replica under load",
        )
        time.sleep(2)
    assert load.statuses and set(load.statuses) == {200}
    assert len({b["replica"] for b in load.bodies[-15:]}) >= 1
    # The rate decays as the burst leaves the 30 s window; then the surplus replica stops.
    wait_until(
        lambda: len(live_replicas(srv, "auto")) == 1,
        timeout=90,
        interval=1,
        what="scale down to one replica",
    )
    events = srv.api("/api/events/list", {"target_name": "auto", "limit": 200}).json()
    texts = " | ".join(e["message"] for e in events)
    assert "Scaling up" in texts and "Scaling down" in texts
    srv.api("/api/project/main/runs/stop", {"runs_names": ["auto"], "abort": True})


def test_scale_to_zero_then_the_first_request_wakes_it(srv: Server, tmp_path: Path):
    d = service_dir(tmp_path)
    extra = (
        "replicas: 0..1\n"
        "scaling:\n  metric: rps\n  target: 10\n  window: 30s\n"
        "  scale_up_delay: 1s\n  scale_down_delay: 2s\n"
    )
    apply_detached(srv, d, "zero", service("zero", extra=extra))
    srv.wait_status("zero", "pending", timeout=60)  # no requests: scaled to zero
    assert not live_replicas(srv, "zero")
    started = time.monotonic()
    r = httpx.get(proxy_url(srv, "zero", "wake"), headers=auth(srv), timeout=90)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/wake"
    assert time.monotonic() - started < 60
    assert srv.run("zero")["status"] == "running"
    srv.api("/api/project/main/runs/stop", {"runs_names": ["zero"], "abort": True})


def test_rolling_update_never_drops_a_request(srv: Server, tmp_path: Path):
    d = service_dir(tmp_path)
    port = free_port_block()
    probes = "probes:\n  - type: http\n    url: /health\n    interval: 1s\n"
    apply_detached(srv, d, "roll", service("roll", port=port, extra=probes, env={"APP_NAME": "v1"}))
    wait_serving(srv, "roll")
    with Load(srv, "roll", rps=5) as load:
        time.sleep(1)
        (d / "roll.dstack.yml").write_text(
            service("roll", port=port, extra=probes, env={"APP_NAME": "v2"})
        )
        r = srv.cli("apply", "-f", "roll.dstack.yml", "-y", "-d", cwd=d)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "can be updated in-place" in r.stdout
        assert "updated, detaching" in r.stdout
        wait_until(
            lambda: load.bodies and load.bodies[-1]["app"] == "v2",
            timeout=60,
            what="the new deployment to serve",
        )
        wait_until(
            lambda: len(live_replicas(srv, "roll")) == 1, timeout=60, what="old replica gone"
        )
        time.sleep(1)
    assert load.statuses and set(load.statuses) == {200}, load.statuses
    apps = [b["app"] for b in load.bodies]
    assert apps[0] == "v1" and apps[-1] == "v2"
    run = srv.run("roll")
    assert run["deployment_num"] == 1
    srv.api("/api/project/main/runs/stop", {"runs_names": ["roll"], "abort": True})
