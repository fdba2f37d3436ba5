"""SSH through the server's relay to a job on a host behind a `proxy_jump` bastion: the target's
namespace is linked only to the bastion's, and the user's key is NOT on the bastion, so the
direct path (`<run>-jump-host`) cannot work. `dstack attach` picks the relay by itself (the
host has an SSH proxy); `ssh <run>` and an app port forward ride the server's pooled SSH
connection through the bastion (a direct-tcpip channel per session), and a closed session
leaves no connection to the job's sshd on the target."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..harness import Server, wait_until
from ..test_ssh import Background, _get, job_ssh_port, start_web_task, stop
from ..test_ssh_relay import block_of, established_to, run_ssh
from . import hosts as sshhosts
from .test_fleets import apply_fleet

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))

RESOURCES = "resources:\n  cpu: 1..\n  memory: 0.1GB..\n  disk: 1GB..\n"


def test_ssh_and_port_forward_through_the_server_to_a_host_behind_a_bastion(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
) -> None:
    bastion = hosts.add()
    target = hosts.add(behind=bastion)
    assert not target.answers(timeout=2)
    bastion_keys = (bastion.home / ".ssh" / "authorized_keys").read_text()
    apply_fleet(
        srv,
        project_dir,
        f"type: fleet\nname: hidden\nssh_config:\n  identity_file: {key}\n"
        f"  proxy_jump:\n    hostname: {bastion.address}\n    port: 22\n"
        f"    user: {bastion.name}\n    identity_file: {key}\n"
        f"  hosts:\n    - hostname: {target.address}\n      user: {target.name}\n",
    )
    app, local = start_web_task(srv, project_dir, "hidden-web", RESOURCES)
    sshd = job_ssh_port(srv, "hidden-web")
    user_pub = (srv.home / ".dstack" / "ssh" / "id_rsa.pub").read_text().split()[1]
    assert user_pub not in (bastion.home / ".ssh" / "authorized_keys").read_text()

    attach = Background(srv, "attach", "hidden-web", "-y", cwd=project_dir)
    try:
        out = attach.wait_for("Press Ctrl+C to detach...")
        block = block_of(srv, "hidden-web")
        assert "ProxyCommand " in block and " ssh-proxy " in block, block
        assert "ProxyJump" not in block and "HostName" not in block
        assert f"localhost:{local} -> {app}" in out
        r = run_ssh(srv, "ssh", "hidden-web", "echo ok; whoami")
        assert r.returncode == 0, r.stderr + srv.log_tail()
        assert r.stdout.splitlines() == ["ok", target.name]
        # The app's port, forwarded by the attach's ssh over the relay.
        r = wait_until(
            lambda: _get(f"http://localhost:{local}/web.dstack.yml"),
            timeout=20,
            what="the task's port on localhost",
        )
        assert "hidden-web" in r.text
        assert _get(f"http://127.0.0.1:{app}/") is None  # it is only on the target
        # Only the attach's master connection stays open to the job's sshd on the target.
        wait_until(
            lambda: established_to(sshd, target.name) == 1, timeout=10, what="one connection"
        )
        assert attach.interrupt() == 0
    finally:
        attach.kill()
    wait_until(
        lambda: established_to(sshd, target.name) == 0,
        timeout=10,
        what="the relayed channel to close on the target",
    )
    assert (bastion.home / ".ssh" / "authorized_keys").read_text() == bastion_keys
    stop(srv, "hidden-web")
