"""A real server, agent and CLI, each its own process, for end-to-end tests.

The server runs on a free loopback port with HOME in a temporary directory, so the CLI finds it
through the `~/.dstack/config.yml` the server writes on first start, exactly as a user's does.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(count: int = 4) -> int:
    """A base port whose next `count` ports are free too, below the ephemeral range.

    Service replicas on one host listen on `port + replica_num`; ports from `bind(0)` sit in
    the ephemeral range, where `port + 1` may already be the local end of any outgoing
    connection on the machine (the server opens many)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports found")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Server:
    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Run the server (and so its agent and jobs) under a wrapper, e.g. a mount namespace.
    argv_prefix: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_dir(self) -> Path:
        return self.home / ".dstack" / "server"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
        env.update(
            HOME=str(self.home),
            PYTHONUNBUFFERED="1",
            DSTACK_SERVER_RETRY_BACKOFF="0.5,1",
            DSTACK_SERVER_UNREACHABLE_GRACE="120",
            # A session opened over the same task's uncommitted writes fails at once
            # (db/session.py) instead of waiting out SQLite's busy timeout.
            DSTACK_DB_STRICT="1",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        log = open(self.home / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.argv_prefix, sys.executable, "-m", "dstack.cli.main", "server",
             "--port", str(self.port)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self._healthy, timeout=30, what=f"server on {self.url}")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        try:
            return (self.home / "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    @property
    def token(self) -> str:
        text = (self.home / ".dstack" / "config.yml").read_text()
        for line in text.splitlines():
            if line.strip().startswith("token:"):
                return line.split(":", 1)[1].strip()
        raise AssertionError("no token in config.yml")

    def api(
        self, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.post(f"{self.url}{path}", json=body or {}, headers=headers, timeout=10)

    def cli(
        self,
        *args: str,
        cwd: Path | None = None,
        input: str | None = None,
        timeout: float = 90,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = self.env()
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "dstack.cli.main", *args],
            cwd=cwd or self.home,
            env=full_env,
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_popen(self, *args: str, cwd: Path | None = None) -> BackgroundCLI:
        """The CLI running in the background (an attached `apply`), its output collected."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "dstack.cli.main", *args],
            cwd=cwd or self.home,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        return BackgroundCLI(proc)

    def run(self, name: str) -> dict[str, Any]:
        r = self.api("/api/project/main/runs/get", {"run_name": name})
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, name: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
        return wait_until(
            lambda: (run := self.run(name))["status"] in statuses and run,
            timeout=timeout,
            what=f"run {name} in {statuses}",
        )

    def agent_pid(self) -> int | None:
        try:
            return int(
                json.loads((self.server_dir / "local-agent" / "agent.json").read_text())["pid"]
            )
        except (OSError, ValueError, KeyError):
            return None

    def cleanup(self) -> None:
        """Abort whatever still runs, then stop the server and the local agent."""
        try:
            runs = self.api("/api/runs/list", {"only_active": True}).json()
            names = [r["run_spec"]["run_name"] for r in runs]
            if names:
                self.api("/api/project/main/runs/stop", {"runs_names": names, "abort": True})
                wait_until(
                    lambda: not self.api("/api/runs/list", {"only_active": True}).json(),
                    timeout=20,
                    what="runs to stop",
                )
        except Exception:  # noqa: BLE001 - best effort on teardown
            pass
        self.stop()
        pid = self.agent_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self._kill_leftover_jobs()

    def _kill_leftover_jobs(self) -> None:
        """Job supervisors run in sessions of their own so that jobs outlive the agent; a test
        that failed before its runs stopped would leave them running after the suite. Each one
        names its job's directory under this server's home: in its command line when started
        alone, as its working directory when forked by the agent's spawner (whose command line
        it keeps). End each one's session."""
        marker = f"{self.home}/.dstack/server/local-agent/jobs/".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                if b"dstack.agent.spawner" in cmdline:
                    cmdline += os.readlink(proc / "cwd").encode()
            except OSError:
                continue
            supervisor = b"dstack.agent.supervisor" in cmdline or b"dstack.agent.spawner" in cmdline
            if supervisor and marker in cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(proc.name), signal.SIGTERM)


class BackgroundCLI:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        import threading

        self.proc = proc
        self._out: list[bytes] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self._out.append(line)

    def read(self) -> str:
        return b"".join(self._out).decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def write_config(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path
