"""`startup_order: workers-first` and `stop_criteria: master-done` on a two-host SSH cluster:
the master starts only once the worker runs, and the run is done when the master is, the
worker (which would sleep for ten minutes) being stopped."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from ..harness import Server, write_config
from ..test_runs import task
from . import hosts as sshhosts
from .test_fleets import apply_fleet, fleet_yaml

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))


def _running_at(srv: Server, run: str) -> dict[str, datetime]:
    body = {"project_name": "main", "within_run": run, "limit": 1000}
    out: dict[str, datetime] = {}
    for e in srv.api("/api/events/list", body).json():
        if e["message"].endswith("-> RUNNING"):
            for target in e["targets"]:
                if target["type"] == "job":
                    out.setdefault(target["name"], datetime.fromisoformat(e["recorded_at"]))
    return out


def test_workers_first_and_master_done(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
) -> None:
    hs = [hosts.add(), hosts.add()]
    net = hs[0].address.rsplit(".", 1)[0] + ".0/24"
    text = fleet_yaml("order", hs, key, extra="placement: cluster\n")
    apply_fleet(srv, project_dir, text.replace("  hosts:", f"  network: {net}\n  hosts:"))
    write_config(
        project_dir,
        "mn.dstack.yml",
        task(
            "wf",
            'if [ "$DSTACK_NODE_RANK" = 0 ]; then echo master-finished; exit 0; fi',
            "echo worker-up; sleep 600",
            extra="nodes: 2\nfleets: [order]\nstartup_order: workers-first\n"
            "stop_criteria: master-done\n",
        ),
    )
    r = srv.cli("apply", "-f", "mn.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    run = srv.wait_status("wf", "done", "failed", "terminated", timeout=120)
    assert run["status"] == "done", json.dumps(run)[:3000]
    assert run["termination_reason"] == "all_jobs_done"
    worker = next(j for j in run["jobs"] if j["job_spec"]["job_num"] == 1)
    assert worker["job_submissions"][-1]["status"] in ("done", "terminated")
    started = _running_at(srv, "wf")
    assert started["wf-1-0"] <= started["wf-0-0"], started
    assert "worker-up" in srv.cli("logs", "wf", "--job", "1").stdout


def test_task_groups_run_one_job_per_node_with_the_masters_ip(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
) -> None:
    hs = [hosts.add(), hosts.add()]
    net = hs[0].address.rsplit(".", 1)[0] + ".0/24"
    text = fleet_yaml("grouped", hs, key, extra="placement: cluster\n")
    apply_fleet(srv, project_dir, text.replace("  hosts:", f"  network: {net}\n  hosts:"))
    conf = (
        "type: task\nname: grp\nfleets: [grouped]\ngroups:\n"
        "  - name: head\n    commands: ['echo head-rank=$DSTACK_NODE_RANK']\n"
        "    resources: {cpu: 1.., memory: 0.1GB.., disk: 1GB..}\n"
        "  - name: workers\n"
        "    commands: ['echo worker-sees=${{ groups[0].nodes[0].IP_ADDRESS }}']\n"
        "    resources: {cpu: 1.., memory: 0.1GB.., disk: 1GB..}\n"
    )
    write_config(project_dir, "g.dstack.yml", conf)
    r = srv.cli("apply", "-f", "g.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    run = srv.wait_status("grp", "done", "failed", timeout=120)
    assert run["status"] == "done", json.dumps(run)[:3000]
    assert "head-rank=0" in srv.cli("logs", "grp", "--job", "0").stdout
    assert f"worker-sees={hs[0].address}" in srv.cli("logs", "grp", "--job", "1").stdout
