"""`dstack attach --job N` into a multi-node task on a `placement: cluster` SSH fleet, end to
end: the second node's `<run>-1-0` alias reaches rank 1 on the second host (through that host's
sshd as the jump), the run's own alias reaches rank 0 on the first, and `dstack logs --job 1`
shows the second node's output. The netns hosts share this machine's UTS namespace (one
hostname), so each host is told apart by its own user."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..harness import Server, wait_until, write_config
from ..test_runs import task
from ..test_ssh import Background, ssh, stop
from . import hosts as sshhosts
from .test_fleets import apply_fleet, assert_clean, fleet_yaml

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))

PROBE = "echo rank=$DSTACK_NODE_RANK; whoami; hostname"


def _probe(srv: Server, project_dir: Path, alias: str, *args: str) -> list[str]:
    """`ssh <alias> PROBE` while `dstack attach mn-attach -y ARGS` holds the alias."""
    attach = Background(srv, "attach", "mn-attach", "-y", *args, cwd=project_dir)
    try:
        out = attach.wait_for("Press Ctrl+C to detach...")
        assert f"use `ssh {alias}`" in out, out
        entries = (srv.home / ".dstack" / "ssh" / "config").read_text()
        assert f"Host {alias}\n" in entries, entries
        r = ssh(srv, alias, PROBE)
        assert r.returncode == 0, r.stderr + srv.log_tail()
        assert attach.interrupt() == 0
        return r.stdout.splitlines()
    finally:
        attach.kill()


def test_attach_to_the_second_node_of_a_cluster_task(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
):
    hs = [hosts.add(), hosts.add()]
    befores = [h.home_entries() for h in hs]
    authorized = [(h.home / ".ssh" / "authorized_keys").read_text() for h in hs]
    net = hs[0].address.rsplit(".", 1)[0] + ".0/24"
    text = fleet_yaml("mnfleet", hs, key, extra="placement: cluster\n")
    apply_fleet(srv, project_dir, text.replace("  hosts:", f"  network: {net}\n  hosts:"))

    write_config(
        project_dir,
        "mn.dstack.yml",
        task("mn-attach", "echo node-says-$DSTACK_NODE_RANK", "sleep 600", extra="nodes: 2\n"),
    )
    r = srv.cli("apply", "-f", "mn.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        srv.wait_status("mn-attach", "running", timeout=90)
        run = srv.run("mn-attach")
        users = [j["job_submissions"][-1]["job_provisioning_data"]["username"] for j in run["jobs"]]
        assert sorted(users) == sorted(h.name for h in hs), users
        by_rank = {j["job_spec"]["job_num"]: u for j, u in zip(run["jobs"], users, strict=True)}

        for args in (("--job", "1"), ("--replica", "0", "--job", "1")):
            out = _probe(srv, project_dir, "mn-attach-1-0", *args)
            assert out[:2] == ["rank=1", by_rank[1]], out
        out = _probe(srv, project_dir, "mn-attach")
        assert out[:2] == ["rank=0", by_rank[0]], out
        assert by_rank[0] != by_rank[1]  # one node per host

        logs = wait_until(
            lambda: (
                (out := srv.cli("logs", "mn-attach", "--job", "1").stdout)
                and "node-says-1" in out
                and out
            ),
            timeout=20,
            what="job 1's output in its logs",
        )
        assert "node-says-0" not in logs

        # runs/get says how to reach each running job (runs/list does not).
        info = [j["job_connection_info"] for j in srv.run("mn-attach")["jobs"]]
        assert [i and i["ssh_alias"] for i in info] == ["mn-attach", "mn-attach-1-0"], info
        assert info[1]["ssh_command"] == "ssh mn-attach-1-0"
        listed = srv.api("/api/runs/list", {"project_name": "main"}).json()
        assert [j["job_connection_info"] for j in listed[0]["jobs"]] == [None, None]
    finally:
        stop(srv, "mn-attach")

    # An attached apply of a short 2-node task: each node may end before (or while) the CLI
    # reaches its SSH server through the host; that is not a failure to report.
    write_config(
        project_dir, "short.dstack.yml", task("mn-short", "echo short-out", extra="nodes: 2\n")
    )
    for _ in range(2):
        r = srv.cli("apply", "-f", "short.dstack.yml", "-y", cwd=project_dir, timeout=180)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "short-out" in out, out
        for noise in ("Warning", "Failed to connect", "stdio forwarding", "kex_exchange"):
            assert noise not in out, out

    r = srv.cli("fleet", "delete", "mnfleet", "-y")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(
        lambda: srv.api("/api/project/main/fleets/get", {"name": "mnfleet"}).status_code == 400,
        timeout=30,
        what="fleet gone",
    )
    for h, before, keys in zip(hs, befores, authorized, strict=True):
        assert_clean(h, before, keys)
