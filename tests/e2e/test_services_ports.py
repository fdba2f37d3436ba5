"""Service replicas on the process runtime whose port is already taken on the host, end to
end: replica N > 0 moves to a free port and the proxy finds it there; replica 0 keeps its
configured port and, when that is taken, fails once with a message naming the port and host
instead of crash-looping; with `retry` it is resubmitted after a back-off, each time saying why."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .harness import Server, free_port_block, wait_until
from .services_util import apply_detached, auth, proxy_url, service, service_dir, wait_serving


@contextmanager
def occupied(port: int) -> Iterator[socket.socket]:
    """Another program on the host listening on `port` (loopback, as most dev servers do)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen(8)
    try:
        yield sock
    finally:
        sock.close()


def submissions(server: Server, name: str, replica: int) -> list[dict]:
    for job in server.run(name)["jobs"]:
        if job["job_spec"]["replica_num"] == replica:
            return job["job_submissions"]
    return []


def run_events(server: Server, name: str) -> list[str]:
    events = server.api("/api/events/list", {"within_run": name, "limit": 1000}).json()
    return [e["message"] for e in events]


def stop(server: Server, name: str) -> None:
    server.api("/api/project/main/runs/stop", {"runs_names": [name], "abort": True})


def test_a_replica_whose_port_is_taken_moves_to_a_free_one(srv: Server, tmp_path: Path):
    d = service_dir(tmp_path)
    port = free_port_block(4)
    with occupied(port + 1):
        apply_detached(srv, d, "moved", service("moved", port=port, extra="replicas: 2\n"))

        def both_running() -> bool:
            return all(
                (subs := submissions(srv, "moved", n)) and subs[-1]["status"] == "running"
                for n in (0, 1)
            )

        wait_until(both_running, timeout=60, what="two running replicas")
        ports = {
            n: submissions(srv, "moved", n)[-1]["job_runtime_data"]["ports"][str(port)]
            for n in (0, 1)
        }
        assert ports == {0: port, 1: port + 2}  # port + 1 is taken: the next free one
        assert len(submissions(srv, "moved", 1)) == 1  # it started once, no failure first
        # The app itself was told the port it got (DSTACK_SERVICE_PORT), and the proxy
        # routes to it: both replicas answer through the service URL.
        wait_until(lambda: _answers(f"http://127.0.0.1:{port + 2}/"), timeout=30, what="replica 1")
        wait_serving(srv, "moved")
        seen = set()
        for _ in range(40):
            r = httpx.get(proxy_url(srv, "moved", "who"), headers=auth(srv), timeout=10)
            assert r.status_code == 200, r.text
            seen.add(r.json()["replica"])
            if len(seen) == 2:
                break
        assert len(seen) == 2
    stop(srv, "moved")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_replica_0s_taken_port_fails_once_with_a_clear_message(srv: Server, tmp_path: Path):
    d = service_dir(tmp_path)
    port = free_port_block(2)
    with occupied(port):
        apply_detached(srv, d, "pinned", service("pinned", port=port))
        run = srv.wait_status("pinned", "failed", "terminated", "done", timeout=60)
        assert run["status"] == "failed" and run["termination_reason"] == "job_failed"
        subs = submissions(srv, "pinned", 0)
        assert len(subs) == 1  # not replaced in a loop: the run failed with its one replica
        sub = subs[0]
        message = f"port {port} is already in use on host local"
        assert sub["termination_reason"] == "ports_binding_failed"
        assert sub["termination_reason_message"].startswith(message)
        events = run_events(srv, "pinned")
        assert not [e for e in events if e.startswith("Scaling up")]
        assert any("PORTS_BINDING_FAILED" in e and message in e for e in events), events
        ps = srv.cli("ps", "-a", "-v", env={"COLUMNS": "400"})
        assert message in ps.stdout, ps.stdout
        ev = srv.cli("event", "--since", "10m", env={"COLUMNS": "400"})
        assert message in ev.stdout, ev.stdout


def test_with_retry_the_replica_is_resubmitted_with_the_reason_then_serves(
    srv: Server, tmp_path: Path
):
    d = service_dir(tmp_path)
    port = free_port_block(2)
    retry = "retry:\n  on_events: [error]\n  duration: 10m\n"
    with occupied(port):
        apply_detached(srv, d, "retried", service("retried", port=port, extra=retry))
        wait_until(
            lambda: len(submissions(srv, "retried", 0)) >= 3,
            timeout=60,
            what="two resubmissions",
        )
        events = run_events(srv, "retried")
    resubmits = [e for e in events if e.startswith("Resubmitting replica 0")]
    assert resubmits, events
    assert "ended with PORTS_BINDING_FAILED" in resubmits[0]
    assert f"port {port} is already in use on host local" in resubmits[0]
    assert "back-off" in resubmits[0]
    assert not [e for e in events if e.startswith("Scaling up")]
    # The port is free again: the next submission starts and serves.
    wait_serving(srv, "retried", timeout=60)
    assert submissions(srv, "retried", 0)[-1]["status"] == "running"
    stop(srv, "retried")
