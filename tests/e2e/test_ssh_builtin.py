"""A machine without openssh-server: the local backend's own SSH server (asyncssh,
server/backends/local_sshd.py) gives a dev environment `ssh <run>`, scp (sftp and legacy),
rsync and port forwarding, end to end with the user's OpenSSH client.

The server runs where there is no sshd: as root, in a mount namespace whose sshd binaries are
masked (not executable, so not on PATH nor at the usual paths), which is what a fresh machine
after the README's two commands looks like; elsewhere the agent is told so
(DSTACK_AGENT_SSHD=none).
Also here: an attached `dstack apply` of a short task never warns that SSH failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Server, free_port, wait_until, write_config
from .test_ssh import (
    RESOURCES,
    Background,
    _get,
    job_submission,
    scp,
    short_attached_runs_never_warn,
    ssh,
    ssh_config,
    stop,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ssh", "scp")),
        reason="needs the OpenSSH client (ssh, scp)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("nosshd-home")
    prefix = _without_sshd()
    extra = {} if prefix else {"DSTACK_AGENT_SSHD": "none"}
    srv = Server(home=home, extra_env=extra, argv_prefix=prefix)
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()


_MASK_SSHD = (
    'for f in /usr/sbin/sshd /usr/local/sbin/sshd /sbin/sshd; do'
    ' if [ -e "$f" ]; then mount --bind /dev/null "$f" || exit 90; fi; done;'
    ' if command -v sshd >/dev/null; then exit 91; fi; exec "$@"'
)


def _without_sshd() -> list[str]:
    """A wrapper that runs the server with every sshd binary masked, where this test may make
    mount namespaces (root with `unshare`); [] otherwise."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return []
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _MASK_SSHD, "sh"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else []


def _sshd_cmdline(server: Server, name: str) -> str:
    """The command line of the job's SSH server process (the agent records its pid)."""
    import json

    job_id = server.run(name)["jobs"][0]["job_submissions"][-1]["id"]
    found = list((server.home / ".dstack" / "server").rglob(f"jobs/{job_id}/sshd.json"))
    assert found, "the agent recorded no SSH server for the job"
    pid = json.loads(found[0].read_text())["pid"]
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_dev_environment_without_sshd(server: Server, project_dir: Path, tmp_path: Path) -> None:
    write_config(
        project_dir,
        "dev.dstack.yml",
        "type: dev-environment\nname: dev-nosshd\nide: vscode\n"
        "env:\n  - GREETING=hello-env\n" + RESOURCES,
    )
    apply = Background(server, "apply", "-f", "dev.dstack.yml", "-y", cwd=project_dir)
    try:
        out = apply.wait_for("To exit, press Ctrl+C.", timeout=90)
        assert "Warning" not in out and "Failed to connect" not in out, out
        assert "dstack.server.backends.local_sshd" in _sshd_cmdline(server, "dev-nosshd")
        workdir = job_submission(server, "dev-nosshd")["job_runtime_data"]["working_dir"]
        r = ssh(server, "dev-nosshd", "pwd; cat data.txt; echo $GREETING")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [workdir, "payload-from-the-working-dir", "hello-env"]
        r = subprocess.run(
            ["ssh", "-F", str(ssh_config(server)), "-o", "BatchMode=yes", "-tt", "dev-nosshd",
             "tty"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert r.stdout.startswith("/dev/pts/"), r.stdout + r.stderr

        local = tmp_path / "in.txt"
        local.write_text("uploaded-by-scp\n")
        r = scp(server, str(local), "dev-nosshd:in.txt")
        assert r.returncode == 0, r.stderr
        assert ssh(server, "dev-nosshd", "cat in.txt").stdout == "uploaded-by-scp\n"
        r = scp(server, "-O", "dev-nosshd:data.txt", str(tmp_path / "legacy.txt"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "legacy.txt").read_text() == "payload-from-the-working-dir\n"
        if shutil.which("rsync"):
            r = subprocess.run(
                ["rsync", "-a", "-e", f"ssh -F {ssh_config(server)}", str(local),
                 "dev-nosshd:tree/"], capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert ssh(server, "dev-nosshd", "cat tree/in.txt").stdout == "uploaded-by-scp\n"

        remote_port, local_port = free_port(), free_port()
        serve = subprocess.Popen(
            ["ssh", "-F", str(ssh_config(server)), "-o", "BatchMode=yes", "dev-nosshd",
             f"exec python3 -m http.server {remote_port} --bind 127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        fwd = subprocess.Popen(
            ["ssh", "-F", str(ssh_config(server)), "-o", "BatchMode=yes", "-N",
             "-L", f"{local_port}:127.0.0.1:{remote_port}", "dev-nosshd"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            r = wait_until(
                lambda: _get(f"http://127.0.0.1:{local_port}/data.txt"), timeout=20,
                what="the forwarded port",
            )  # fmt: skip
            assert r.text == "payload-from-the-working-dir\n"
        finally:
            for p in (fwd, serve):
                p.kill()
                p.wait(10)
        assert apply.interrupt() == 0
    finally:
        apply.kill()
        stop(server, "dev-nosshd")
    r = ssh(server, "dev-nosshd", "echo never", timeout=20)
    assert r.returncode == 255 and "Connection refused" in r.stderr


def test_attached_short_task_never_warns_about_ssh(server: Server, project_dir: Path) -> None:
    short_attached_runs_never_warn(server, project_dir)
