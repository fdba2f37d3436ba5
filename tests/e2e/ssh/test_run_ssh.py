"""`ssh <run>` and port forwarding into a job on an SSH-fleet host, end to end: the user's own
OpenSSH client jumps through the host's sshd (`<run>-host`, reached as the fleet reaches it) to
the job's sshd on the host's loopback (inside the host's network namespace, so nothing but the
jump can reach it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..harness import Server, wait_until, write_config
from ..test_ssh import Background, _get, job_submission, scp, ssh, start_web_task, stop
from . import hosts as sshhosts
from .test_fleets import apply_fleet, assert_clean, fleet_yaml

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))

RESOURCES = "resources:\n  cpu: 1..\n  memory: 0.1GB..\n  disk: 1GB..\n"


def test_ssh_and_port_forwarding_into_a_job_on_a_fleet_host(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path, tmp_path: Path
):
    h = hosts.add()
    before = h.home_entries()
    authorized = (h.home / ".ssh" / "authorized_keys").read_text()
    apply_fleet(srv, project_dir, fleet_yaml("onprem", [h], key))
    with_fleet = (h.home / ".ssh" / "authorized_keys").read_text()  # + the project's key

    # A dev environment: `ssh <run>` lands in the job's working dir on the host, as its user.
    write_config(
        project_dir,
        "dev.dstack.yml",
        "type: dev-environment\nname: dev-remote\nide: vscode\n" + RESOURCES,
    )
    r = srv.cli("apply", "-f", "dev.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    srv.wait_status("dev-remote", "running", timeout=60)
    sub = job_submission(srv, "dev-remote")
    jpd = sub["job_provisioning_data"]
    assert (jpd["hostname"], jpd["ssh_port"], jpd["username"]) == (h.address, 22, h.name)
    assert jpd["ssh_proxy"] is None
    workdir = sub["job_runtime_data"]["working_dir"]
    assert workdir.startswith(str(h.home) + "/"), workdir
    attach = Background(srv, "attach", "dev-remote", "-y", cwd=project_dir)
    try:
        attach.wait_for("Press Ctrl+C to detach...")
        entries = (srv.home / ".dstack" / "ssh" / "config").read_text()
        assert "Host dev-remote-host\n" in entries and f"HostName {h.address}\n" in entries
        assert "ProxyJump dev-remote-host\n" in entries
        # The user's key is let into the host while the job exists (the jump needs it).
        keys = (h.home / ".ssh" / "authorized_keys").read_text()
        assert keys.startswith(with_fleet) and "dstack-job-" in keys
        r = ssh(srv, "dev-remote", "echo ok; pwd; cat data.txt; whoami")
        assert r.returncode == 0, r.stderr + srv.log_tail()
        assert r.stdout.splitlines() == ["ok", workdir, "payload-from-the-working-dir", h.name]
        # scp in and out through the same jump; the file lands in the job's dir on the host.
        local = tmp_path / "up.txt"
        local.write_text("uploaded-by-scp\n")
        r = scp(srv, str(local), "dev-remote:in.txt")
        assert r.returncode == 0, r.stderr
        assert (Path(workdir) / "in.txt").read_text() == "uploaded-by-scp\n"
        back = tmp_path / "back.txt"
        r = scp(srv, "dev-remote:data.txt", str(back))
        assert r.returncode == 0, r.stderr
        assert back.read_text().startswith("payload-from-the-working-dir")
        assert attach.interrupt() == 0
    finally:
        attach.kill()
        stop(srv, "dev-remote")
    # The job is gone: so is its key on the host.
    wait_until(
        lambda: (h.home / ".ssh" / "authorized_keys").read_text() == with_fleet,
        timeout=20,
        what="the user's key removed from the host",
    )

    # A task's port: reachable on localhost after `dstack attach`, forwarded through the jump.
    app, local = start_web_task(srv, project_dir, "web-remote", RESOURCES)
    attach = Background(srv, "attach", "web-remote", "-y", cwd=project_dir)
    try:
        out = attach.wait_for("Press Ctrl+C to detach...")
        assert f"localhost:{local} -> {app}" in out
        r = wait_until(
            lambda: _get(f"http://localhost:{local}/web.dstack.yml"),
            timeout=20,
            what="the task's port on localhost",
        )
        assert "web-remote" in r.text
        # Nothing on this machine listens on the app's port: the forward went to the host.
        assert _get(f"http://127.0.0.1:{app}/") is None
        assert attach.interrupt() == 0
    finally:
        attach.kill()
        stop(srv, "web-remote")

    r = srv.cli("fleet", "delete", "onprem", "-y")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(
        lambda: srv.api("/api/project/main/fleets/get", {"name": "onprem"}).status_code == 400,
        timeout=30,
        what="fleet gone",
    )
    assert_clean(h, before, authorized)
