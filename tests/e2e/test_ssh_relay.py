"""SSH through the server's relay on the local backend, forced with DSTACK_SSH_VIA_SERVER=1:
the `Host <run>` block is a ProxyCommand (`dstack ssh-proxy`), no address; `ssh` and `scp` both
ways work through it; a relay the client closes leaves no connection to the job's sshd; and a
stopped run is refused at once with the server's reason on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import Server, wait_until, write_config
from .test_ssh import RESOURCES, Background, job_ssh_port, ssh_config

pytestmark = [pytest.mark.e2e]


def relay_env(server: Server, **extra: str) -> dict[str, str]:
    """What the user's shell has: HOME (the ProxyCommand reads ~/.dstack/config.yml there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    return {**env, "HOME": str(server.home), **extra}


def run_ssh(server: Server, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-F", str(ssh_config(server)), "-o", "BatchMode=yes", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=relay_env(server),
    )  # fmt: skip


def established_to(port: int, netns: str | None = None) -> int:
    """TCP connections open to PORT (the job's sshd) on this machine or in NETNS."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    out = subprocess.run(
        [*prefix, "ss", "-Htn", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    return len([line for line in out.splitlines() if line.strip()])


def block_of(server: Server, alias: str) -> str:
    text = (server.home / ".dstack" / "ssh" / "config").read_text()
    start = text.index(f"# >>> dstack run {alias}\n")
    return text[start : text.index(f"# <<< dstack run {alias}\n", start)]


def test_forced_relay_ssh_and_scp_on_the_local_backend(
    server: Server, project_dir: Path, tmp_path: Path
) -> None:
    write_config(project_dir, "r.dstack.yml", "type: task\nname: relay-task\ncommands:\n"
                 "  - sleep 300\n" + RESOURCES)  # fmt: skip
    r = server.cli("apply", "-f", "r.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    server.wait_status("relay-task", "running", timeout=60)
    sshd = job_ssh_port(server, "relay-task")
    attach = Background(
        server, "attach", "relay-task", "-y", cwd=project_dir, env={"DSTACK_SSH_VIA_SERVER": "1"}
    )
    try:
        attach.wait_for("Press Ctrl+C to detach...")
        block = block_of(server, "relay-task")
        # Through the ProxyCommand, with the absolute interpreter, the server and the project,
        # and neither an address nor a token.
        assert f"    ProxyCommand {sys.executable} -m dstack.cli.main ssh-proxy " in block
        assert f"--url {server.url} --project main --replica 0 --job 0 relay-task\n" in block
        assert "HostName" not in block and "Port " not in block
        assert server.token not in block
        assert established_to(sshd) == 1  # the attach's master connection, via the server

        r = run_ssh(server, "ssh", "relay-task", "echo ok; cat data.txt")
        assert r.returncode == 0, r.stderr + server.log_tail()
        assert r.stdout == "ok\npayload-from-the-working-dir\n"
        local = tmp_path / "in.txt"
        local.write_bytes(os.urandom(300_000))
        r = run_ssh(server, "scp", str(local), "relay-task:in.bin")
        assert r.returncode == 0, r.stderr
        back = tmp_path / "back.bin"
        r = run_ssh(server, "scp", "relay-task:in.bin", str(back))
        assert r.returncode == 0, r.stderr
        assert back.read_bytes() == local.read_bytes()
        # Each session's relay closed with it: only the master's connection is left.
        wait_until(lambda: established_to(sshd) == 1, timeout=10, what="relays to close")
        assert attach.interrupt() == 0
    finally:
        attach.kill()
    wait_until(lambda: established_to(sshd) == 0, timeout=10, what="the master's relay to close")

    server.api("/api/project/main/runs/stop", {"runs_names": ["relay-task"], "abort": True})
    server.wait_status("relay-task", "terminated", "failed", "done", timeout=60)
    started = time.monotonic()
    r = run_ssh(server, "ssh", "relay-task", "echo never")
    assert r.returncode == 255
    assert time.monotonic() - started < 10
    assert "dstack: Run relay-task is terminated; it no longer accepts SSH" in r.stderr, r.stderr


def test_relay_refusals_from_the_proxy_command(server: Server) -> None:
    """Bad input straight to `dstack ssh-proxy`: an unknown run, a wrong token."""
    argv = [sys.executable, "-m", "dstack.cli.main", "ssh-proxy", "--url", server.url,
            "--project", "main", "no-such-run"]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=relay_env(server))
    assert r.returncode == 1
    assert r.stderr.strip() == "dstack: Run no-such-run not found in project main"
    env = relay_env(server, DSTACK_SERVER_URL=server.url, DSTACK_TOKEN="wrong")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1 and r.stderr.strip() == "dstack: Invalid token"
