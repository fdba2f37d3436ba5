"""A service with replica groups: each group's replicas run the group's own commands, numbered
in order across groups, and the proxy serves them all; a group asking to autoscale is refused
with a message naming it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from .harness import Server, free_port_block, wait_until, write_config
from .services_util import JOB_PYTHON, apply_detached, auth, proxy_url, service_dir


def groups_service(name: str, port: int, b_replicas: str = "2", alpha: str = "alpha") -> str:
    app = json.dumps(JOB_PYTHON + " svc_app.py")
    return (
        f"type: service\nname: {name}\nport: {port}\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"
        "groups:\n"
        f"  - name: alpha\n    replicas: 1\n    commands:\n      - APP_NAME={alpha} {app[1:-1]}\n"
        f"  - name: beta\n    replicas: {b_replicas}\n    commands:\n"
        f"      - APP_NAME=beta {app[1:-1]}\n"
    )


def test_replica_groups_run_their_own_commands(srv: Server, tmp_path: Path) -> None:
    d = service_dir(tmp_path)
    port = free_port_block(4)
    apply_detached(srv, d, "grouped", groups_service("grouped", port))
    try:

        def all_running() -> bool:
            jobs = srv.run("grouped")["jobs"]
            return len(jobs) == 3 and all(
                j["job_submissions"][-1]["status"] == "running" for j in jobs
            )

        wait_until(all_running, timeout=60, what="three running replicas")
        groups = {
            j["job_spec"]["replica_num"]: j["job_spec"]["replica_group"]
            for j in srv.run("grouped")["jobs"]
        }
        assert groups == {0: "alpha", 1: "beta", 2: "beta"}
        seen: set[str] = set()

        def both_groups_answer() -> bool:
            r = httpx.get(proxy_url(srv, "grouped"), headers=auth(srv), timeout=5)
            if r.status_code == 200:
                seen.add(r.json()["app"])
            return seen == {"alpha", "beta"}

        wait_until(both_groups_answer, timeout=30, interval=0.1, what="both groups answering")

        # A rolling update: the new replicas are numbered past the old ones, yet each group
        # gets back its own count and commands.
        apply_detached(srv, d, "grouped", groups_service("grouped", port, alpha="alpha2"))

        def rolled() -> bool:
            run = srv.run("grouped")
            live = [
                j["job_spec"]["replica_group"]
                for j in run["jobs"]
                if j["job_submissions"][-1]["status"] == "running"
                and j["job_submissions"][-1].get("deployment_num", 0) >= run["deployment_num"]
            ]
            old = [
                j for j in run["jobs"]
                if j["job_submissions"][-1]["status"] in ("running", "terminating")
                and j["job_submissions"][-1].get("deployment_num", 0) < run["deployment_num"]
            ]  # fmt: skip
            return sorted(live) == ["alpha", "beta", "beta"] and not old

        wait_until(rolled, timeout=90, interval=0.5, what="the rolling update of both groups")
        apps = {
            httpx.get(proxy_url(srv, "grouped"), headers=auth(srv), timeout=5).json()["app"]
            for _ in range(30)
        }
        assert apps == {"alpha2", "beta"}
    finally:
        srv.api("/api/project/main/runs/stop", {"runs_names": ["grouped"], "abort": True})


def test_a_group_with_a_range_is_refused(srv: Server, tmp_path: Path) -> None:
    d = service_dir(tmp_path)
    text = groups_service("ranged", free_port_block(4), b_replicas="0..2\n    scaling:\n"
                          "      metric: rps\n      target: 1")  # fmt: skip
    write_config(d, "ranged.dstack.yml", text)
    r = srv.cli("apply", "-f", "ranged.dstack.yml", "-y", "-d", cwd=d)
    assert r.returncode != 0
    assert "Replica group beta has a range of replicas" in r.stdout + r.stderr
