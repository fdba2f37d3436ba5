"""`ssh <run>`, scp, rsync, port forwarding, `attach --logs` and inactivity, end to end: the real
server, agent (a per-job sshd), CLI and the user's own OpenSSH client.

ssh reads the test HOME's config through `-F` (OpenSSH takes `~` from the password database,
not `$HOME`); the Include that dstack adds there is an absolute path, so this is exactly what
a user's `ssh <run>` reads.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .harness import Server, free_port, wait_until, write_config
from .test_runs import task

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ssh", "scp", "ssh-keygen"))
        or not any(Path(p).exists() for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd")),
        reason="needs OpenSSH (ssh, scp, ssh-keygen, sshd)",
    ),
]

RESOURCES = "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"


class Background:
    """A CLI process whose output is collected as it comes (attached apply, attach)."""

    def __init__(
        self, server: Server, *args: str, cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        env = {**server.env(), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dstack.cli.main", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output += line

    def wait_for(self, text: str, timeout: float = 60) -> str:
        def seen() -> bool:
            if text in self.output:
                return True
            if self.proc.poll() is not None:
                self._reader.join(2)
                if text in self.output:
                    return True
                raise AssertionError(f"process exited ({self.proc.returncode}): {self.output}")
            return False

        wait_until(seen, timeout=timeout, what=f"{text!r} in output")
        return self.output

    def interrupt(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        self._reader.join(5)
        return code

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ssh_config(server: Server) -> Path:
    return server.home / ".ssh" / "config"


def ssh(server: Server, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(ssh_config(server)), "-o", "BatchMode=yes", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def scp(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scp", "-F", str(ssh_config(server)), "-o", "BatchMode=yes", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def stop(server: Server, name: str, abort: bool = True) -> None:
    server.api("/api/project/main/runs/stop", {"runs_names": [name], "abort": abort})
    server.wait_status(name, "terminated", "failed", "done", timeout=60)


def job_submission(server: Server, name: str) -> dict:
    return server.run(name)["jobs"][0]["job_submissions"][-1]


def job_ssh_port(server: Server, name: str) -> int:
    """The host port of the job's SSH server, published once it listens (a moment after the
    job runs: attaching before that would be refused)."""

    def port() -> int | None:
        ports = job_submission(server, name)["job_runtime_data"].get("ports") or {}
        return int(ports["10022"]) if "10022" in ports else None

    return wait_until(port, timeout=30, what=f"the SSH server of {name}")


def test_dev_environment_ssh_scp_rsync_and_ide_link(server: Server, project_dir: Path, tmp_path):
    write_config(
        project_dir,
        "dev.dstack.yml",
        "type: dev-environment\nname: dev-ssh\nide: vscode\ninit:\n  - echo init-ran\n"
        "env:\n  - GREETING=hello-env\n" + RESOURCES,
    )
    apply = Background(server, "apply", "-f", "dev.dstack.yml", "-y", cwd=project_dir)
    try:
        out = apply.wait_for("To exit, press Ctrl+C.", timeout=90)
        assert "init-ran" in out
        workdir = job_submission(server, "dev-ssh")["job_runtime_data"]["working_dir"]
        assert workdir.startswith("/")
        assert f"vscode://vscode-remote/ssh-remote+dev-ssh{workdir}" in out
        assert "ssh dev-ssh" in out
        # One Include of the absolute dstack config path, at the top of ~/.ssh/config.
        text = ssh_config(server).read_text()
        include = f"Include {server.home / '.dstack' / 'ssh' / 'config'}"
        assert text.count(include) == 1
        assert (ssh_config(server).stat().st_mode & 0o077) == 0
        key = server.home / ".dstack" / "ssh" / "id_rsa"
        assert (key.stat().st_mode & 0o777) == 0o600

        r = ssh(server, "dev-ssh", "echo ok; pwd; cat data.txt; echo $GREETING")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            "ok",
            workdir,
            "payload-from-the-working-dir",
            "hello-env",
        ]

        # What VS Code Remote-SSH does first: `ssh -T host bash` with a script on stdin.
        r = subprocess.run(
            ["ssh", "-F", str(ssh_config(server)), "-o", "BatchMode=yes", "-T", "dev-ssh", "bash"],
            input="echo vscode-$GREETING\npwd\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.stdout.splitlines() == ["vscode-hello-env", workdir], r.stderr

        local = tmp_path / "in.txt"
        local.write_text("uploaded-by-scp\n")
        assert scp(server, str(local), "dev-ssh:in.txt").returncode == 0
        assert ssh(server, "dev-ssh", "cat in.txt").stdout == "uploaded-by-scp\n"
        back = tmp_path / "out.txt"
        r = scp(server, "dev-ssh:data.txt", str(back))
        assert r.returncode == 0, r.stderr
        assert back.read_text() == "payload-from-the-working-dir\n"

        if shutil.which("rsync"):
            src = tmp_path / "tree"
            (src / "sub").mkdir(parents=True)
            (src / "sub" / "f.txt").write_text("rsynced\n")
            r = subprocess.run(
                ["rsync", "-a", "-e", f"ssh -F {ssh_config(server)}", f"{src}/", "dev-ssh:tree/"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert r.returncode == 0, r.stderr
            assert ssh(server, "dev-ssh", "cat tree/sub/f.txt").stdout == "rsynced\n"

        # Port forwarding through the job's sshd (what VS Code Remote-SSH relies on).
        remote_port = free_port()
        serve = subprocess.Popen(
            ["ssh", "-F", str(ssh_config(server)), "-o", "BatchMode=yes", "dev-ssh",
             f"exec python3 -m http.server {remote_port} --bind 127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        local_port = free_port()
        fwd = subprocess.Popen(
            ["ssh", "-F", str(ssh_config(server)), "-o", "BatchMode=yes", "-N",
             "-L", f"{local_port}:127.0.0.1:{remote_port}", "dev-ssh"],
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
                p.kill()  # an ssh client may linger on SIGTERM while a channel drains
                p.wait(10)

        # Ctrl+C on a non-terminal detaches; the run stays up and `ssh` still works.
        assert apply.interrupt() == 0
        assert "Detached" in apply.output
        assert server.run("dev-ssh")["status"] == "running"
        assert ssh(server, "dev-ssh", "echo still").stdout == "still\n"
    finally:
        apply.kill()
        stop(server, "dev-ssh")
    # The run is gone: the SSH server died with it and a new connection fails fast.
    started = time.monotonic()
    r = ssh(server, "dev-ssh", "echo never", timeout=20)
    assert r.returncode == 255
    assert time.monotonic() - started < 10
    assert "Connection refused" in r.stderr
    # `dstack stop` leaves an entry that says what happened.
    server.cli("stop", "dev-ssh", "-y")
    r = ssh(server, "dev-ssh", "echo never", timeout=20)
    assert r.returncode == 255
    assert "dstack: run dev-ssh was stopped; it no longer accepts SSH" in r.stderr
    # A fresh attach to the stopped run says so.
    r = server.cli("attach", "dev-ssh")
    assert r.returncode == 1
    assert "Run dev-ssh is" in r.stdout + r.stderr


def _get(url: str) -> httpx.Response | None:
    try:
        r = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return r if r.status_code == 200 else None


def start_web_task(
    server: Server, project_dir: Path, name: str, resources: str = RESOURCES, first: str = ""
) -> tuple[int, int]:
    """A detached task serving its working dir over HTTP on a loopback port, with that port
    mapped to a local one in `ports`; returns (app port, local port) once it runs."""
    app, local = free_port(), free_port()
    write_config(
        project_dir,
        "web.dstack.yml",
        f"type: task\nname: {name}\ncommands:\n{first}"
        f"  - python3 -m http.server {app} --bind 127.0.0.1\n"
        f"ports:\n  - {local}:{app}\n" + resources,
    )
    r = server.cli("apply", "-f", "web.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    server.wait_status(name, "running", timeout=60)
    return app, local


def test_attach_forwards_task_ports_and_replays_logs(server: Server, project_dir: Path):
    app, local = start_web_task(server, project_dir, "web-task", first="  - echo hello-from-task\n")
    attach = Background(server, "attach", "web-task", "-y", cwd=project_dir)
    try:
        out = attach.wait_for("Press Ctrl+C to detach...")
        assert "Attached to run web-task (replica=0 job=0)" in out
        assert f"localhost:{local} -> {app}" in out
        assert "To connect to the run via SSH, use `ssh web-task`." in out
        r = wait_until(
            lambda: _get(f"http://localhost:{local}/web.dstack.yml"), timeout=20,
            what="the task's port on localhost",
        )  # fmt: skip
        assert "web-task" in r.text

        # A busy local port is refused with a free one offered.
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            r = server.cli("attach", "web-task", "-p", f"{taken}:{app}")
            assert r.returncode == 1
            text = r.stdout + r.stderr
            assert f"port {taken} is already in use" in text
            assert f":{app}` to forward it to the free port" in text
        r = server.cli("attach", "web-task", "-p", "9:1")
        assert r.returncode == 1 and "Port 1 is not exposed" in r.stdout + r.stderr

        # `--logs` replays everything from the start.
        logs = Background(server, "attach", "web-task", "--logs", "-y", cwd=project_dir)
        try:
            logs.wait_for("hello-from-task")
        finally:
            logs.interrupt()
        assert attach.interrupt() == 0
        assert "Detached" in attach.output
        # The forward went with the attachment.
        assert wait_until(lambda: _get(f"http://localhost:{local}/") is None, timeout=10)
    finally:
        attach.kill()
        stop(server, "web-task")


def test_attach_bad_input(server: Server, project_dir: Path):
    r = server.cli("attach", "no-such-run")
    assert r.returncode == 1
    assert "Run no-such-run not found" in r.stdout + r.stderr
    write_config(
        project_dir,
        "f.dstack.yml",
        "type: task\nname: quick-fail\ncommands:\n  - exit 4\n" + RESOURCES,
    )
    r = server.cli("apply", "-f", "f.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0
    server.wait_status("quick-fail", "failed", timeout=60)
    r = server.cli("attach", "quick-fail")
    assert r.returncode == 1
    assert "Run quick-fail is exited (4)" in r.stdout + r.stderr
    # An attached apply checks a mapped local port before submitting.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        write_config(
            project_dir,
            "p.dstack.yml",
            f"type: task\nname: port-busy\ncommands:\n  - sleep 1\nports:\n  - {taken}:81\n"
            + RESOURCES,
        )
        r = server.cli("apply", "-f", "p.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 1
    assert f"Failed to submit: port {taken} is already in use" in r.stdout + r.stderr
    assert server.api("/api/project/main/runs/get", {"run_name": "port-busy"}).status_code != 200


def test_inactivity_stops_an_idle_dev_environment_and_keeps_a_connected_one(
    server: Server, project_dir: Path
):
    write_config(
        project_dir,
        "idle.dstack.yml",
        "type: dev-environment\nname: dev-idle\ninactivity_duration: 6s\n" + RESOURCES,
    )
    r = server.cli("apply", "-f", "idle.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    server.wait_status("dev-idle", "running", timeout=60)
    attach = Background(server, "attach", "dev-idle", "-y", cwd=project_dir)
    try:
        attach.wait_for("Press Ctrl+C to detach...")
        running_since = time.monotonic()
        # Connected for longer than inactivity_duration: still running.
        time.sleep(9)
        assert server.run("dev-idle")["status"] == "running"
        assert job_submission(server, "dev-idle")["inactivity_secs"] == 0
        assert time.monotonic() - running_since > 6
        attach.interrupt()
        # Idle now: stopped once inactivity_duration passes.
        run = server.wait_status("dev-idle", "terminated", "failed", timeout=40)
    finally:
        attach.kill()
        with contextlib.suppress(Exception):
            stop(server, "dev-idle")
    # As in the reference: the job is terminated for inactivity and the run ends `job_failed`.
    assert run["termination_reason"] == "job_failed"
    run = wait_until(
        lambda: (r := server.run("dev-idle"))["jobs"][0]["job_submissions"][-1]["status"]
        == "terminated" and r,
        timeout=20, what="the job to finish",
    )  # fmt: skip
    sub = run["jobs"][0]["job_submissions"][-1]
    assert sub["termination_reason"] == "inactivity_duration_exceeded"
    assert sub["error"] == "inactivity duration exceeded"


def short_attached_runs_never_warn(server: Server, project_dir: Path, runs: int = 3) -> None:
    """An attached apply of a task that ends at once: the job may end before, or while, the CLI
    connects to its SSH server; that is no failure to report."""
    for i in range(runs):
        name = f"short-{i}"
        write_config(project_dir, "s.dstack.yml", task(name, "echo short-output"))
        r = server.cli("apply", "-f", "s.dstack.yml", "-y", cwd=project_dir, timeout=120)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert "short-output" in out
        assert "Warning" not in out and "Failed to connect" not in out, out
        assert "kex_exchange_identification" not in out, out


def test_attached_short_task_never_warns_about_ssh(server: Server, project_dir: Path) -> None:
    short_attached_runs_never_warn(server, project_dir)
