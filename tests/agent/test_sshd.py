"""The job's own SSH server (process runtime): real sshd, real ssh client."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dstack.agent import sshd

from .helpers import AgentProcess, wait_for

pytestmark = pytest.mark.skipif(
    sshd.find_sshd() is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="needs OpenSSH (sshd, ssh, ssh-keygen)",
)


def _keypair(tmp_path: Path) -> tuple[Path, str]:
    key = tmp_path / "id_test"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key, (tmp_path / "id_test.pub").read_text().strip()


def _ssh(key: Path, port: int, user: str, *command: str, timeout: float = 20):
    argv = [
        "ssh",
        "-i",
        str(key),
        "-p",
        str(port),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=5",
        f"{user}@127.0.0.1",
        *command,
    ]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_job_sshd_lands_in_workdir_with_job_env(agent: AgentProcess, tmp_path: Path) -> None:
    key, pub = _keypair(tmp_path)
    state = agent.submit(
        "j-ssh", ["/bin/sh", "-c", "sleep 60"], env={"MY_VAR": "it's here"}, ssh_keys=[pub]
    )
    assert state["ssh_port"] and state["ssh_user"]
    assert state["working_dir"].endswith("/jobs/j-ssh/code")
    port, user = state["ssh_port"], state["ssh_user"]
    result = wait_for(
        lambda: (
            (r := _ssh(key, port, user, "pwd; echo $MY_VAR; echo $DSTACK_WORKING_DIR")).returncode
            == 0
            and r
        ),
        timeout=10,
        interval=0.2,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == state["working_dir"]
    assert lines[1] == "it's here"
    assert lines[2] == state["working_dir"]
    # Connections are counted: while none is open the job is idle.
    assert agent.job("j-ssh")["no_connections_secs"] is not None


def test_unknown_key_refused_and_server_dies_with_job(agent: AgentProcess, tmp_path: Path) -> None:
    key, pub = _keypair(tmp_path)
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    state = agent.submit("j-ssh2", ["/bin/sh", "-c", "sleep 60"], ssh_keys=[pub])
    port, user = state["ssh_port"], state["ssh_user"]
    wait_for(lambda: _ssh(key, port, user, "true").returncode == 0, timeout=10, interval=0.2)
    assert _ssh(other, port, user, "true").returncode != 0
    agent.post("/api/jobs/j-ssh2/stop", {"abort": True})
    agent.wait_finished("j-ssh2")
    refused = _ssh(key, port, user, "true")
    assert refused.returncode == 255


def test_no_keys_no_server(agent: AgentProcess) -> None:
    state = agent.submit("j-nossh", ["/bin/sh", "-c", "sleep 60"])
    assert state["ssh_port"] is None
    assert "without SSH keys" in state["ssh_error"]
    assert state["no_connections_secs"] is None


def test_bad_ssh_keys_rejected(agent: AgentProcess) -> None:
    r = agent.start_job({"id": "x", "commands": ["true"], "ssh_keys": ["garbage"]})
    assert r.status_code == 400
    assert r.json()["error"].startswith("ssh_keys:")


def test_count_connections_and_activity(tmp_path: Path) -> None:
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert sshd.count_connections(port) == 0
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    try:
        assert sshd.count_connections(port) >= 1
    finally:
        client.close()
        conn.close()
        server.close()
    assert sshd.no_connections_secs({"connected": True, "since": 0}) == 0
    assert sshd.no_connections_secs({"connected": False, "since": 100.0}, now=130.0) == 30
    assert sshd.no_connections_secs(None) is None


def test_host_keys_added_for_the_job_and_removed_with_it(tmp_path: Path) -> None:
    """An SSH-fleet host is the ProxyJump to the job: the user's key is authorized in the
    host user's authorized_keys while the job exists, tagged so only its lines go."""
    home = tmp_path / "hosthome"
    (home / ".ssh").mkdir(parents=True)
    own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn owner@laptop\n"
    (home / ".ssh" / "authorized_keys").write_text(own)
    _, pub = _keypair(tmp_path)
    agent = AgentProcess(tmp_path / "agent-home").start(env_extra={"HOME": str(home)})
    try:
        agent.submit("j-host", ["/bin/sh", "-c", "true"], host_ssh_keys=[pub])
        text = (home / ".ssh" / "authorized_keys").read_text()
        assert text.startswith(own)
        assert text.count("dstack-job-j-host") == 1
        assert pub.split()[1] in text
        agent.wait_finished("j-host")
        assert agent.post("/api/jobs/j-host/remove").status_code == 200
        assert (home / ".ssh" / "authorized_keys").read_text() == own
    finally:
        agent.cleanup_jobs()
        agent.kill()


def test_key_options_cannot_be_injected(agent: AgentProcess) -> None:
    bad = 'command="rm -rf /" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn x'
    r = agent.start_job({"id": "x", "commands": ["true"], "host_ssh_keys": [bad]})
    assert r.status_code == 400
    assert r.json()["error"].startswith("host_ssh_keys:")


def test_authorize_and_revoke_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn me"
    sshd.authorize_on_host("j1", [key], path)
    sshd.authorize_on_host("j1", [key], path)
    sshd.authorize_on_host("j2", [key], path)
    assert path.read_text().count("dstack-job-j1") == 1
    assert (path.stat().st_mode & 0o777) == 0o600
    sshd.revoke_on_host("j1", path)
    assert "dstack-job-j1" not in path.read_text() and "dstack-job-j2" in path.read_text()
    sshd.revoke_on_host("j1", path)
