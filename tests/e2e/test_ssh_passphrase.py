"""A run submitted with a passphrase-protected `--ssh-identity`: `attach` (batch-mode ssh, no
terminal) refuses with the `ssh-add` hint instead of a bare "Permission denied", and works
once the user's ssh-agent holds the key."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .harness import Server, write_config
from .test_ssh import RESOURCES, Background, ssh, stop

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ssh", "ssh-keygen", "ssh-agent", "ssh-add"))
        or not any(Path(p).exists() for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd")),
        reason="needs OpenSSH (ssh, ssh-keygen, ssh-agent, ssh-add, sshd)",
    ),
]

PASSPHRASE = "correct horse"


def _agent(tmp_path: Path, key: Path) -> dict[str, str]:
    """A real ssh-agent holding KEY (the passphrase typed by an SSH_ASKPASS script)."""
    sock = tmp_path / "agent.sock"
    subprocess.run(["ssh-agent", "-a", str(sock)], check=True, capture_output=True)
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{PASSPHRASE}'\n")
    askpass.chmod(0o700)
    env = {
        **os.environ,
        "SSH_AUTH_SOCK": str(sock),
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
    }
    subprocess.run(
        ["ssh-add", str(key)], check=True, env=env, capture_output=True, stdin=subprocess.DEVNULL
    )
    return {"SSH_AUTH_SOCK": str(sock)}


def test_attach_with_a_passphrase_key(
    server: Server, project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    key = tmp_path / "id_locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-f", str(key)], check=True
    )
    write_config(project_dir, "t.dstack.yml", "type: task\nname: locked\ncommands:\n"
                 "  - sleep 600\n" + RESOURCES)  # fmt: skip
    r = server.cli(
        "apply", "-f", "t.dstack.yml", "-y", "-d", "--ssh-identity", str(key), cwd=project_dir
    )
    assert r.returncode == 0, r.stdout + r.stderr
    agent_env: dict[str, str] = {}
    try:
        server.wait_status("locked", "running", timeout=60)
        # No agent, no terminal: a clear refusal naming the fix.
        plain = Background(
            server, "attach", "locked", "-y", "--ssh-identity", str(key), cwd=project_dir,
            env={"SSH_AUTH_SOCK": ""},
        )  # fmt: skip
        assert plain.wait(timeout=60) == 1, plain.output
        assert f"has a passphrase: run `ssh-add {key}`" in plain.output, plain.output
        # The agent holds it: attach works, and so does the user's own ssh.
        agent_env = _agent(tmp_path, key)
        attach = Background(
            server, "attach", "locked", "-y", "--ssh-identity", str(key), cwd=project_dir,
            env=agent_env,
        )  # fmt: skip
        try:
            attach.wait_for("Press Ctrl+C to detach...")
            monkeypatch.setenv("SSH_AUTH_SOCK", agent_env["SSH_AUTH_SOCK"])
            r = ssh(server, "locked", "echo ok")
            assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
            assert attach.interrupt() == 0
        finally:
            attach.kill()
    finally:
        if agent_env:
            subprocess.run(["ssh-agent", "-k"], env={**os.environ, **agent_env},
                           capture_output=True)  # fmt: skip
        stop(server, "locked")
