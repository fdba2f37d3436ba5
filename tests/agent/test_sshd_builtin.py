"""The local backend's own SSH server (server/backends/local_sshd.py) in sshd's place, on a host
where the agent finds no OpenSSH sshd (DSTACK_AGENT_SSHD=none hides the one installed here):
the real agent starts it for the job and the real OpenSSH client talks to it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.agent import sshd

from .helpers import AgentProcess, wait_for

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("ssh", "scp", "ssh-keygen")),
    reason="needs the OpenSSH client (ssh, scp, ssh-keygen)",
)

BUILTIN = json.dumps([sys.executable, "-m", "dstack.server.backends.local_sshd"])


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    env = {sshd.SSHD_ENV: "none", sshd.BUILTIN_SSHD_ENV: BUILTIN, "DSTACK_AGENT_JOB_USER": ""}
    process = AgentProcess(tmp_path / "home").start(env_extra=env)
    try:
        yield process
    finally:
        process.cleanup_jobs()
        process.kill()


def _keypair(tmp_path: Path, name: str = "id_test") -> tuple[Path, str]:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key, (tmp_path / f"{name}.pub").read_text().strip()


def _opts(key: Path) -> list[str]:
    return ["-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]  # fmt: skip


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)


def _ssh(key: Path, state: dict, command: str, *flags: str, stdin: str | None = None,
         user: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    target = f"{user or state['ssh_user']}@127.0.0.1"
    return _run(["ssh", *_opts(key), "-p", str(state["ssh_port"]), *flags, target, command], stdin)


def _scp(key: Path, state: dict, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(["scp", *_opts(key), "-P", str(state["ssh_port"]), *args])


def _ready(agent: AgentProcess, job_id: str) -> dict:
    return wait_for(lambda: (s := agent.job(job_id))["ssh_ready"] and s, timeout=20, interval=0.1)


def _echo_server() -> tuple[socket.socket, int]:
    """A loopback TCP service that answers one line, for the forward to reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello-through-the-forward\n")

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_availability_needs_sshd_or_a_builtin_server(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"ssh_keys": ["ssh-ed25519 AAAA"]}
    monkeypatch.setenv(sshd.SSHD_ENV, "none")
    monkeypatch.delenv(sshd.BUILTIN_SSHD_ENV, raising=False)
    assert "no OpenSSH server" in (sshd.availability(spec) or "")
    monkeypatch.setenv(sshd.BUILTIN_SSHD_ENV, "not json")
    assert "no OpenSSH server" in (sshd.availability(spec) or "")
    monkeypatch.setenv(sshd.BUILTIN_SSHD_ENV, BUILTIN)
    assert sshd.availability(spec) is None
    assert sshd.builtin_sshd() == json.loads(BUILTIN)


def test_exec_pty_sftp_scp_and_forwards_in_the_jobs_dir(agent: AgentProcess, tmp_path: Path):
    key, pub = _keypair(tmp_path)
    state = agent.submit(
        "j-b", ["/bin/sh", "-c", "echo payload > data.txt; sleep 60"],
        env={"MY_VAR": "it's here"}, ssh_keys=[pub],
    )  # fmt: skip
    state = _ready(agent, "j-b")
    workdir = state["working_dir"]
    r = _ssh(key, state, "pwd; echo $MY_VAR; cat data.txt; echo oops >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout.splitlines() == [workdir, "it's here", "payload"]
    assert r.stderr == "oops\n"
    # A PTY (`ssh -tt`), and what VS Code Remote-SSH does first: a script on bash's stdin.
    r = _ssh(key, state, "tty; exit 5", "-tt")
    assert r.returncode == 5 and r.stdout.startswith("/dev/pts/"), r.stdout + r.stderr
    r = _ssh(key, state, "sh", "-T", stdin="echo from-stdin-$MY_VAR\n")
    assert r.stdout == "from-stdin-it's here\n", r.stderr
    # scp over sftp (modern OpenSSH), the legacy protocol (-O), both ways, relative to workdir.
    local = tmp_path / "up.txt"
    local.write_text("uploaded\n")
    assert _scp(key, state, str(local), f"{state['ssh_user']}@127.0.0.1:up.txt").returncode == 0
    assert Path(workdir, "up.txt").read_text() == "uploaded\n"
    r = _scp(key, state, "-O", f"{state['ssh_user']}@127.0.0.1:data.txt", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d").read_text() == "payload\n"
    if shutil.which("rsync"):
        r = _run(["rsync", "-a", "-e", f"ssh {' '.join(_opts(key))} -p {state['ssh_port']}",
                  str(local), f"{state['ssh_user']}@127.0.0.1:tree/"])  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert Path(workdir, "tree", "up.txt").read_text() == "uploaded\n"
    # `ssh -L`: a direct-tcpip channel to a port on the job's host.
    service, port = _echo_server()
    local_port = _free_port()
    fwd = subprocess.Popen(
        ["ssh", *_opts(key), "-p", str(state["ssh_port"]), "-N", "-o", "ExitOnForwardFailure=yes",
         "-L", f"{local_port}:127.0.0.1:{port}", f"{state['ssh_user']}@127.0.0.1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        line = wait_for(lambda: _read_line(local_port), timeout=15, interval=0.2)
        assert line == b"hello-through-the-forward\n"
    finally:
        fwd.kill()
        fwd.wait(10)
        service.close()


def test_only_the_runs_key_and_user_and_the_server_dies_with_the_job(
    agent: AgentProcess, tmp_path: Path
):
    key, pub = _keypair(tmp_path)
    other, _ = _keypair(tmp_path, "other")
    agent.submit("j-k", ["/bin/sh", "-c", "sleep 60"], ssh_keys=[pub])
    state = _ready(agent, "j-k")
    assert _ssh(key, state, "true").returncode == 0
    assert _ssh(other, state, "true").returncode == 255
    assert _ssh(key, state, "true", user="someone-else").returncode == 255
    # A session still open when the job ends goes with it.
    held = subprocess.Popen(
        ["ssh", *_opts(key), "-p", str(state["ssh_port"]), f"{state['ssh_user']}@127.0.0.1",
         "sleep 120"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: agent.job("j-k")["no_connections_secs"] == 0, timeout=10, interval=0.2)
    agent.post("/api/jobs/j-k/stop", {"abort": True})
    agent.wait_finished("j-k")
    assert held.wait(20) == 255
    assert _ssh(key, state, "true").returncode == 255


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd"
)
def test_a_job_run_as_another_user_gets_sessions_and_files_as_that_user(tmp_path: Path):
    env = {sshd.SSHD_ENV: "none", sshd.BUILTIN_SSHD_ENV: BUILTIN,
           "DSTACK_AGENT_JOB_USER": "dstack-job"}  # fmt: skip
    agent = AgentProcess(tmp_path / "home").start(env_extra=env)
    try:
        _as_job_user(agent, tmp_path)
    finally:
        agent.cleanup_jobs()
        agent.kill()


def _as_job_user(agent: AgentProcess, tmp_path: Path) -> None:
    key, pub = _keypair(tmp_path)
    agent.submit("j-u", ["/bin/sh", "-c", "sleep 60"], ssh_keys=[pub])
    state = _ready(agent, "j-u")
    pid = json.loads(Path(agent.home, "jobs", "j-u", "sshd.json").read_text())["pid"]
    uid = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]
    assert int(uid) == _uid("dstack-job")  # the server itself, so sftp and forwards too
    r = _ssh(key, state, "id -un; pwd; cat /root/.profile >/dev/null 2>&1 || echo denied")
    assert r.stdout.splitlines() == ["dstack-job", state["working_dir"], "denied"], r.stderr
    r = _ssh(key, state, "id -un", "-tt")
    assert r.stdout.strip() == "dstack-job", r.stderr
    local = tmp_path / "up.txt"
    local.write_text("mine\n")
    assert _scp(key, state, str(local), f"{state['ssh_user']}@127.0.0.1:up.txt").returncode == 0
    assert Path(state["working_dir"], "up.txt").stat().st_uid == _uid("dstack-job")
    # The agent's files are not the job user's, over sftp either.
    r = _scp(key, state, f"{state['ssh_user']}@127.0.0.1:{agent.home}/agent.json", str(tmp_path))
    assert r.returncode != 0 and not (tmp_path / "agent.json").exists()


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_line(port: int) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.makefile("rb").readline() or None
    except OSError:
        return None
