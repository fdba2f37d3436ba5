"""SSH fleets when things go wrong: bad input refused before any host changes, wrong keys and
host keys, a host without python3, a host that stops answering mid-job, and a server restart in
the middle of a bootstrap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from ..harness import Server, wait_until, write_config
from ..test_runs import task
from . import hosts as sshhosts
from .test_fleets import apply_fleet, fleet, fleet_yaml, pytestmark  # noqa: F401


def _no_fleet(srv: Server, name: str) -> bool:
    return srv.api("/api/project/main/fleets/get", {"name": name}).status_code == 400


def test_bad_input_is_refused_before_any_host_changes(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path, tmp_path: Path
):
    h = hosts.add()
    before = h.home_entries()
    unreachable = h.address.rsplit(".", 1)[0] + ".250"
    cases = {
        "unreachable": (
            fleet_yaml("bad", [h], key) + f"    - hostname: {unreachable}\n      user: {h.name}\n",
            f"cannot reach {unreachable}:22",
        ),
        "duplicate": (fleet_yaml("bad", [h, h], key), "listed more than once"),
        "port": (
            fleet_yaml("bad", [h], key, host_extra="      port: 70000\n"),
            "less than or equal to 65535",
        ),
        "missing key": (fleet_yaml("bad", [h], tmp_path / "nope"), "does not exist"),
    }
    loose = tmp_path / "loose" / "id"
    sshhosts.keygen(loose)
    os.chmod(loose, 0o644)
    cases["loose key"] = (fleet_yaml("bad", [h], loose), "chmod 600")
    for what, (text, expected) in cases.items():
        r = apply_fleet(srv, project_dir, text, ok=False)
        assert r.returncode != 0, what
        assert expected in r.stdout + r.stderr, (what, r.stdout, r.stderr)
        assert _no_fleet(srv, "bad"), what
    assert h.home_entries() == before
    assert not h.user_processes()


def test_wrong_key_wrong_host_key_and_no_python(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path, tmp_path: Path
):
    h = hosts.add()
    other = sshhosts.keygen(tmp_path / "other" / "id")
    r = apply_fleet(srv, project_dir, fleet_yaml("kf", [h], other), ok=False)
    assert r.returncode != 0 and "SSH authentication failed" in r.stderr, r.stdout + r.stderr

    # Trust on first use: the key seen first is remembered; a new one is refused.
    apply_fleet(srv, project_dir, fleet_yaml("kf", [h], key))
    assert srv.cli("fleet", "delete", "kf", "-y").returncode == 0
    wait_until(lambda: _no_fleet(srv, "kf"), timeout=30, what="fleet kf deleted")
    h.stop_sshd()
    h.new_host_key()
    h.start_sshd()
    r = apply_fleet(srv, project_dir, fleet_yaml("kf", [h], key), ok=False)
    assert r.returncode != 0 and "host key" in r.stderr and "changed" in r.stderr, r.stderr

    # A host whose PATH has no python3: the bootstrap fails, naming it.
    bin_dir = tmp_path / "nopy-bin"
    bin_dir.mkdir()
    for tool in (
        "sh",
        "uname",
        "df",
        "awk",
        "cat",
        "mkdir",
        "mv",
        "chmod",
        "grep",
        "touch",
        "rm",
        "sed",
        "sleep",
        "setsid",
        "nohup",
        "tail",
    ):
        (bin_dir / tool).symlink_to(
            f"/usr/bin/{tool}" if os.path.exists(f"/usr/bin/{tool}") else f"/bin/{tool}"
        )
    os.chmod(tmp_path, 0o755)
    nopy = hosts.add(path_env=str(bin_dir))
    r = apply_fleet(srv, project_dir, fleet_yaml("nopy", [nopy], key), ok=False)
    assert r.returncode != 0 and "Some instances failed" in r.stderr, r.stdout + r.stderr
    got = srv.cli("fleet", "get", "nopy", "--json")
    (inst,) = json.loads(got.stdout)["instances"]
    assert inst["status"] == "terminated"
    assert "python3: not found" in inst["termination_reason_message"], inst
    assert "python3: not found" in srv.cli("event").stdout


def test_host_stops_answering_mid_job_and_comes_back(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
):
    h = hosts.add()
    apply_fleet(srv, project_dir, fleet_yaml("flaky", [h], key))
    write_config(
        project_dir, "long.dstack.yml", task("long", "sleep 120", extra="stop_duration: 1s\n")
    )
    assert srv.cli("apply", "-f", "long.dstack.yml", "-y", "-d", cwd=project_dir).returncode == 0
    srv.wait_status("long", "running", timeout=60)
    h.stop_sshd()
    wait_until(
        lambda: fleet(srv, "flaky")["instances"][0]["unreachable"],
        timeout=30,
        what="instance unreachable",
    )

    def reason() -> str | None:
        return srv.run("long")["jobs"][0]["job_submissions"][-1]["termination_reason"]

    wait_until(lambda: reason() == "instance_unreachable", timeout=30, what="job to fail")
    h.start_sshd()
    wait_until(
        lambda: not fleet(srv, "flaky")["instances"][0]["unreachable"],
        timeout=30,
        what="instance reachable again",
    )
    srv.wait_status("long", "failed", "terminated", timeout=60)
    write_config(project_dir, "again.dstack.yml", task("again", "echo back-again"))
    r = srv.cli("apply", "-f", "again.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0 and "back-again" in r.stdout, r.stdout + r.stderr
    assert len(fleet(srv, "flaky")["instances"]) == 1  # the same host, reused


def test_server_restart_during_bootstrap_finishes_once(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
):
    h = hosts.add()
    srv.stop()
    srv.extra_env["DSTACK_SERVER_TEST_BOOTSTRAP_PAUSE"] = "30"
    srv.start()
    write_config(project_dir, "fleet.dstack.yml", fleet_yaml("once", [h], key))
    r = srv.cli("apply", "-f", "fleet.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    agent_json = h.home / ".dstack-agent" / "state" / "agent.json"
    wait_until(agent_json.exists, timeout=30, what="the agent to start")
    first = json.loads(agent_json.read_text())["pid"]
    srv.kill()
    assert fleet_status_pending(srv)
    srv.extra_env.pop("DSTACK_SERVER_TEST_BOOTSTRAP_PAUSE")
    srv.start()
    wait_until(
        lambda: fleet(srv, "once")["instances"][0]["status"] == "idle",
        timeout=90,
        what="bootstrap to finish",
    )
    assert json.loads(agent_json.read_text())["pid"] == first
    agents = [p for p in h.user_processes() if _is_agent(p)]
    assert agents == [first], agents


def _is_agent(pid: int) -> bool:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return b"python" in os.path.basename(argv[0]) and any(a.endswith(b"agent.pyz") for a in argv)


def fleet_status_pending(srv: Server) -> bool:
    import sqlite3

    db = srv.server_dir / "data" / "sqlite.db"
    with sqlite3.connect(db) as c:
        (status,) = c.execute("SELECT status FROM instances").fetchone()
    return status == "pending"


def test_agent_killed_on_host_is_restarted_and_fleets_filter(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
):
    h = hosts.add()
    apply_fleet(srv, project_dir, fleet_yaml("loop", [h], key))
    agent_json = h.home / ".dstack-agent" / "state" / "agent.json"
    first = json.loads(agent_json.read_text())["pid"]
    os.kill(first, signal.SIGKILL)

    def restarted() -> bool:
        pid = json.loads(agent_json.read_text())["pid"]
        return pid != first and pid in h.user_processes()

    wait_until(restarted, timeout=20, what="the restart loop to start a new agent")
    # The server may have seen the dead agent first (the host is then `unreachable`, and a run
    # without a retry policy submitted now fails at once, naming it); its next check sees the
    # new agent.
    wait_until(
        lambda: not fleet(srv, "loop")["instances"][0]["unreachable"],
        timeout=60,
        what="the server to reach the restarted agent",
    )
    write_config(project_dir, "t.dstack.yml", task("after-restart", "echo still-here"))
    r = srv.cli("apply", "-f", "t.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0 and "still-here" in r.stdout, r.stdout + r.stderr

    # A run limited to fleets that do not have it fails at once, naming why.
    write_config(project_dir, "f.dstack.yml", task("elsewhere", "true", extra="fleets: [other]\n"))
    r = srv.cli("apply", "-f", "f.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode != 0
    job = srv.run("elsewhere")["jobs"][0]["job_submissions"][-1]
    assert job["termination_reason"] == "failed_to_start_due_to_no_capacity"
    assert "fleet loop not in ['other']" in job["termination_reason_message"], job


def test_network_drop_is_noticed_and_the_connection_comes_back(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
):
    """No RST this time: the link goes silent, so only keep-alives and timeouts can tell."""
    h = hosts.add()
    apply_fleet(srv, project_dir, fleet_yaml("silent", [h], key))
    subprocess.run(["ip", "link", "set", h.veth, "down"], check=True)
    try:
        wait_until(
            lambda: fleet(srv, "silent")["instances"][0]["unreachable"],
            timeout=45,
            what="instance unreachable",
        )
    finally:
        subprocess.run(["ip", "link", "set", h.veth, "up"], check=True)
    wait_until(
        lambda: not fleet(srv, "silent")["instances"][0]["unreachable"],
        timeout=45,
        what="instance reachable again",
    )
    write_config(project_dir, "t.dstack.yml", task("after-drop", "echo reconnected"))
    r = srv.cli("apply", "-f", "t.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0 and "reconnected" in r.stdout, r.stdout + r.stderr


def test_nvidia_devices_without_a_working_nvidia_smi_fail_bootstrap(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path, request: pytest.FixtureRequest
):
    # The host's sessions see /proc/driver/nvidia (a tmpfs in sshd's own mount namespace) and an
    # `nvidia-smi` on the PATH that exits 1: the bootstrap fails, naming the GPU driver.
    # Outside pytest's tmp tree, whose parents only root may enter.
    bin_dir = Path(tempfile.mkdtemp(prefix="dstack-badsmi-"))
    request.addfinalizer(lambda: shutil.rmtree(bin_dir, ignore_errors=True))
    bin_dir.chmod(0o755)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 1\n")
    smi.chmod(0o755)
    h = hosts.add(path_env=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", fake_nvidia=True)
    before = h.home_entries()
    r = apply_fleet(srv, project_dir, fleet_yaml("gpu", [h], key), ok=False)
    assert r.returncode != 0 and "Some instances failed" in r.stderr, r.stdout + r.stderr
    (inst,) = json.loads(srv.cli("fleet", "get", "gpu", "--json").stdout)["instances"]
    assert inst["status"] == "terminated"
    message = inst["termination_reason_message"]
    assert "GPU driver missing: NVIDIA devices found (/proc/driver/nvidia)" in message, inst
    assert "nvidia-smi does not run" in message
    assert "GPU driver missing" in srv.cli("event").stdout
    # Refused before anything was installed.
    assert h.home_entries() == before and h.user_processes() == []
