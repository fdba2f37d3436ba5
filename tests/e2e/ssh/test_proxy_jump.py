"""An SSH fleet host behind a bastion (`proxy_jump`), end to end: the target's namespace is
linked only to the bastion's (hosts.py `behind`), on a subnet this namespace, where the server
runs, has no route to, so everything the server does on the target rides the jump."""

from __future__ import annotations

import contextlib
import pwd
from pathlib import Path

import pytest

from ..harness import Server, wait_until, write_config
from ..test_runs import task
from ..test_ssh import Background, ssh, stop
from . import hosts as sshhosts
from .test_fleets import apply_fleet, assert_clean, fleet

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))


def test_fleet_through_proxy_jump(srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path):
    bastion = hosts.add()
    target = hosts.add(behind=bastion)
    # Only the bastion's network reaches the target's sshd.
    assert not target.answers(timeout=2)
    assert target.answers(bastion.name)
    before = {h.name: h.home_entries() for h in (bastion, target)}
    authorized = {
        h.name: (h.home / ".ssh" / "authorized_keys").read_text() for h in (bastion, target)
    }

    apply_fleet(
        srv,
        project_dir,
        f"type: fleet\nname: jumped\nssh_config:\n  identity_file: {key}\n"
        f"  proxy_jump:\n    hostname: {bastion.address}\n    port: 22\n"
        f"    user: {bastion.name}\n    identity_file: {key}\n"
        f"  hosts:\n    - hostname: {target.address}\n      user: {target.name}\n",
    )
    f = fleet(srv, "jumped")
    assert [i["status"] for i in f["instances"]] == ["idle"], f
    assert (target.home / ".dstack-agent").is_dir()
    assert not (bastion.home / ".dstack-agent").exists()  # the bastion only forwards

    write_config(project_dir, "t.dstack.yml", task("jumped-task", "echo via-jump-$(whoami)"))
    r = srv.cli("apply", "-f", "t.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    run = srv.wait_status("jumped-task", "done", "failed", "terminated", timeout=90)
    assert run["status"] == "done", run
    logs = srv.cli("logs", "jumped-task").stdout
    assert f"via-jump-{target.name}" in logs, logs

    # `ssh <run>` the direct way (DSTACK_SSH_VIA_SERVER=0; by default a host behind a proxy
    # jump is reached through the server's relay, tests/e2e/ssh/test_relay.py): the CLI's chain
    # <run>-jump-host -> <run>-host -> the job's sshd. The user's own key must open the bastion
    # (the server only lets it into the target while the job runs).
    write_config(project_dir, "s.dstack.yml", task("jumped-ssh", "sleep 300"))
    r = srv.cli("apply", "-f", "s.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    srv.wait_status("jumped-ssh", "running", timeout=60)
    user_pub = (srv.home / ".dstack" / "ssh" / "id_rsa.pub").read_text().strip()
    with open(bastion.home / ".ssh" / "authorized_keys", "a") as fh:
        fh.write(user_pub + "\n")
    attach = Background(
        srv, "attach", "jumped-ssh", "-y", cwd=project_dir, env={"DSTACK_SSH_VIA_SERVER": "0"}
    )
    try:
        attach.wait_for("Press Ctrl+C to detach...")
        entries = (srv.home / ".dstack" / "ssh" / "config").read_text()
        assert (
            "Host jumped-ssh-jump-host\n" in entries and f"HostName {bastion.address}\n" in entries
        )
        assert "ProxyJump jumped-ssh-jump-host\n" in entries
        r = ssh(srv, "jumped-ssh", "whoami")
        assert r.returncode == 0, r.stderr + srv.log_tail()
        assert r.stdout.strip() == target.name
        assert attach.interrupt() == 0
    finally:
        attach.kill()
        stop(srv, "jumped-ssh")
    (bastion.home / ".ssh" / "authorized_keys").write_text(authorized[bastion.name])

    r = srv.cli("fleet", "delete", "jumped", "-y")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(
        lambda: srv.api("/api/project/main/fleets/get", {"name": "jumped"}).status_code == 400,
        timeout=30,
        what="fleet gone",
    )
    for h in (bastion, target):
        assert_clean(h, before[h.name], authorized[h.name])
    # The server's jump connection closed with the target's: no session left on the bastion.
    wait_until(lambda: not sessions(bastion), timeout=15, what="the bastion's sessions to end")


def sessions(h: sshhosts.Host) -> list[int]:
    """The host user's SSH sessions (`sshd: <user>@notty` processes run as the user)."""
    uid = pwd.getpwnam(h.name).pw_uid
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
                if entry.stat().st_uid == uid and cmd.startswith(f"sshd: {h.name}"):
                    out.append(int(entry.name))
    return out
