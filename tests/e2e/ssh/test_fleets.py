"""SSH fleets on real hosts: sshd processes in their own network namespaces (hosts.py).

The server reaches each host only over SSH (the agent listens on the host's loopback, inside
the host's namespace, so nothing but the tunnel can reach it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..harness import Server, wait_until, write_config
from ..test_runs import task
from . import hosts as sshhosts

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))


def fleet_yaml(
    name: str, hs: list[sshhosts.Host], key: Path, extra: str = "", host_extra: str = ""
) -> str:
    lines = [f"type: fleet\nname: {name}\n{extra}ssh_config:\n  identity_file: {key}\n  hosts:"]
    for h in hs:
        lines.append(f"    - hostname: {h.address}\n      user: {h.name}\n{host_extra}")
    return "\n".join(lines) + "\n"


def fleet(srv: Server, name: str) -> dict:
    r = srv.api("/api/project/main/fleets/get", {"name": name})
    assert r.status_code == 200, r.text
    return r.json()


def apply_fleet(srv: Server, d: Path, text: str, ok: bool = True):  # noqa: ANN201
    write_config(d, "fleet.dstack.yml", text)
    r = srv.cli("apply", "-f", "fleet.dstack.yml", "-y", cwd=d, timeout=120)
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    return r


def assert_clean(h: sshhosts.Host, before: list[str], authorized: str) -> None:
    wait_until(lambda: not h.user_processes(), timeout=10, what=f"{h.name} processes to end")
    assert h.home_entries() == before
    assert (h.home / ".ssh" / "authorized_keys").read_text() == authorized


def test_fleet_bootstrap_task_and_delete(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
):
    hs = [hosts.add(), hosts.add()]
    before = {h.name: h.home_entries() for h in hs}
    authorized = {h.name: (h.home / ".ssh" / "authorized_keys").read_text() for h in hs}
    apply_fleet(srv, project_dir, fleet_yaml("onprem", hs, key))
    f = fleet(srv, "onprem")
    assert [i["status"] for i in f["instances"]] == ["idle", "idle"], f
    assert {i["hostname"] for i in f["instances"]} == {h.address for h in hs}
    assert "ssh_key" not in json.dumps(f)  # private keys never come back
    listing = srv.cli("fleet").stdout
    assert "onprem" in listing and "ssh" in listing
    # Each agent runs as its host's user, listening only on that namespace's loopback.
    for h in hs:
        agent = json.loads((h.home / ".dstack-agent" / "state" / "agent.json").read_text())
        assert agent["pid"] in h.user_processes()

    write_config(
        project_dir, "t.dstack.yml", task("on-ssh", "echo hello-from-$(whoami)", "cat data.txt")
    )
    r = srv.cli("apply", "-f", "t.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hello-from-dst4-" in r.stdout and "payload-from-the-working-dir" in r.stdout

    # Delete one instance, then the fleet: each host is left as it was found.
    r = srv.cli("fleet", "delete", "onprem", "-i", "1", "-y")
    assert r.returncode == 0, r.stderr
    wait_until(
        lambda: (
            [
                i["instance_num"]
                for i in fleet(srv, "onprem")["instances"]
                if i["status"] != "terminated"
            ]
            == [0]
        ),
        timeout=30,
        what="instance 1 gone",
    )
    assert_clean(hs[1], before[hs[1].name], authorized[hs[1].name])
    r = srv.cli("fleet", "delete", "onprem", "-y")
    assert r.returncode == 0 and "Fleet onprem deleted" in r.stdout, r.stderr
    wait_until(
        lambda: srv.api("/api/project/main/fleets/get", {"name": "onprem"}).status_code == 400,
        timeout=30,
        what="fleet gone",
    )
    for h in hs:
        assert_clean(h, before[h.name], authorized[h.name])
    events = srv.cli("event").stdout
    assert "TERMINATING -> TERMINATED" in events or "-> TERMINATED" in events, events


def test_multinode_task_and_blocks(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
):
    hs = [hosts.add(), hosts.add()]
    net = hs[0].address.rsplit(".", 1)[0] + ".0/24"
    text = fleet_yaml(
        "cluster", hs, key, extra="placement: cluster\nblocks: 2\nenv:\n  - FLEET_VAR=from-fleet\n"
    )
    text = text.replace("  hosts:", f"  network: {net}\n  hosts:")
    apply_fleet(srv, project_dir, text)
    f = fleet(srv, "cluster")
    assert [i["total_blocks"] for i in f["instances"]] == [2, 2], f

    # Two nodes: one job per host, ranks 0 and 1, the master's IP from the fleet's network.
    write_config(
        project_dir,
        "mn.dstack.yml",
        task(
            "two-nodes",
            "echo rank=$DSTACK_NODE_RANK nodes=$DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP",
            "echo ips=$(echo $DSTACK_NODES_IPS | tr '\\n' ,) fleet=$FLEET_VAR",
            extra="nodes: 2\n",
        ),
    )
    r = srv.cli("apply", "-f", "mn.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    run = srv.wait_status("two-nodes", "done", "failed", timeout=90)
    assert run["status"] == "done", json.dumps(run)[:3000]
    master = hs[0].address
    logs = [srv.cli("logs", "two-nodes", "--job", str(n)).stdout for n in (0, 1)]
    assert f"rank=0 nodes=2 master={master}" in logs[0], logs
    assert f"rank=1 nodes=2 master={master}" in logs[1], logs
    assert f"ips={hs[0].address} {hs[1].address}" in logs[0] or (
        f"ips={hs[0].address},{hs[1].address}" in logs[0]
    ), logs
    assert "fleet=from-fleet" in logs[1]
    used = {j["job_submissions"][-1]["job_provisioning_data"]["instance_id"] for j in run["jobs"]}
    assert len(used) == 2  # one job per host

    # Blocks: two single-block jobs share one host's two blocks at the same time.
    for name in ("blk-a", "blk-b"):
        write_config(
            project_dir,
            f"{name}.dstack.yml",
            task(
                name,
                "sleep 30",
                extra="fleets: [cluster]\nresources:\n  cpu: 1\n  memory: 0.1GB..\n  disk: 1GB..\n",
            ).replace("resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n", ""),
        )
        r = srv.cli("apply", "-f", f"{name}.dstack.yml", "-y", "-d", cwd=project_dir)
        assert r.returncode == 0, r.stdout + r.stderr
    for name in ("blk-a", "blk-b"):
        run = srv.wait_status(name, "running", "failed", "done", "terminated", timeout=60)
        assert run["status"] == "running", json.dumps(run)[:4000]
    insts = {
        srv.run(n)["jobs"][0]["job_submissions"][-1]["job_provisioning_data"]["instance_id"]
        for n in ("blk-a", "blk-b")
    }
    assert len(insts) == 1, insts  # both on one host, one block each
    busy = [i for i in fleet(srv, "cluster")["instances"] if i["busy_blocks"]]
    assert [i["busy_blocks"] for i in busy] == [2], [
        (srv.run(n)["status"], srv.run(n)["jobs"][0]["job_submissions"][-1])
        for n in ("blk-a", "blk-b")
    ]
    srv.api("/api/project/main/runs/stop", {"runs_names": ["blk-a", "blk-b"], "abort": True})
    for name in ("blk-a", "blk-b"):
        srv.wait_status(name, "terminated", "aborted", "failed", "done", timeout=60)


def test_fleet_in_place_update_and_recreate(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
):
    hs = [hosts.add(), hosts.add()]
    apply_fleet(srv, project_dir, fleet_yaml("grow", hs[:1], key))
    first = fleet(srv, "grow")["instances"][0]["id"]
    r = apply_fleet(srv, project_dir, fleet_yaml("grow", hs, key))
    assert "Detected changes that can be updated in-place" in r.stdout, r.stdout
    assert f"add host {hs[1].address}" in r.stdout
    insts = fleet(srv, "grow")["instances"]
    assert [i["status"] for i in insts] == ["idle", "idle"] and insts[0]["id"] == first
    r = apply_fleet(srv, project_dir, fleet_yaml("grow", hs, key))
    assert "No configuration changes detected" in r.stdout
    r = apply_fleet(srv, project_dir, fleet_yaml("grow", hs, key, extra="placement: cluster\n"))
    assert "cannot be updated in-place" in r.stdout and "placement changed" in r.stdout
    insts = fleet(srv, "grow")["instances"]
    assert len(insts) == 2 and first not in {i["id"] for i in insts}
    assert all(i["status"] == "idle" for i in insts)
