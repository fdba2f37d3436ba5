"""Helpers that start the real agent as a subprocess on a free loopback port."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from dstack.agent import protocol

SRC = str(Path(__file__).resolve().parents[2] / "src")
TOKEN = "test-token-0123456789"
# Run the whole suite against another interpreter, e.g. a Python 3.9 one.
AGENT_PYTHON = os.environ.get("DSTACK_TEST_AGENT_PYTHON", sys.executable)


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll instead of sleeping: returns the first truthy value or fails."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class AgentProcess:
    def __init__(self, home: Path, token: str = TOKEN) -> None:
        self.home = home
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.client: httpx.Client | None = None

    def start(
        self, argv: list[str] | None = None, env_extra: dict[str, str] | None = None
    ) -> AgentProcess:
        old = self._agent_json()
        env = dict(os.environ, DSTACK_AGENT_TOKEN=self.token, PYTHONPATH=SRC)
        env.update(env_extra or {})
        cmd = argv or [AGENT_PYTHON, "-m", "dstack.agent", "--home", str(self.home)]
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        info = wait_for(lambda: self._fresh_agent_json(old), timeout=10)
        self.url = f"http://127.0.0.1:{info['port']}"
        self.client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )
        wait_for(lambda: self._healthy(), timeout=5)
        return self

    def _agent_json(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.home / "agent.json").read_text())
        except (OSError, ValueError):
            return None

    def _fresh_agent_json(self, old: dict[str, Any] | None) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
        info = self._agent_json()
        return info if info and info != old and info.get("pid") == self.proc.pid else None

    def _healthy(self) -> bool:
        try:
            return self.get("/api/healthcheck").status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # --- HTTP helpers --------------------------------------------------------------
    def get(self, path: str, **kw: Any) -> httpx.Response:
        assert self.client is not None
        return self.client.get(path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        assert self.client is not None
        return self.client.post(path, json=body, **kw)

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        assert self.client is not None
        response = self.client.request(method, path, json=body, **kw)
        assert response.status_code == 200, response.text
        return response.json()

    def start_job(self, spec: dict[str, Any], code: bytes = b"") -> httpx.Response:
        """One start request, spec and code together, as the server sends it."""
        assert self.client is not None
        headers, body = protocol.encode_start(spec, code)
        job_id = str(spec.get("id", "x"))
        return self.client.post(protocol.START_JOB.path(job_id), content=body, headers=headers)

    def submit(self, job_id: str, commands: list[str], code: bytes = b"", **spec: Any) -> Any:
        body = {"id": job_id, "name": job_id, "commands": commands, **spec}
        response = self.start_job(body, code)
        assert response.status_code == 200, response.text
        return response.json()

    def shell(self, job_id: str, script: str, **spec: Any) -> Any:
        return self.submit(job_id, ["/bin/sh", "-c", script], **spec)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.ok("GET", f"/api/jobs/{job_id}")

    def wait_finished(self, job_id: str, timeout: float = 8.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            state = self.job(job_id)
            return state if state["status"] in ("done", "failed", "terminated") else None

        return wait_for(finished, timeout=timeout)

    def output(self, job_id: str, stream: str | None = None) -> str:
        data = b""
        offset = 0
        while True:
            page = self.ok("GET", f"/api/jobs/{job_id}/logs", params={"offset": offset})
            for entry in page["entries"]:
                if stream is None or entry["stream"] == stream:
                    data += base64.b64decode(entry["message"])
            if page["next_offset"] == offset:
                return data.decode()
            offset = page["next_offset"]

    def wait_output(self, job_id: str, text: str, timeout: float = 5.0) -> str:
        return wait_for(lambda: text in self.output(job_id) and self.output(job_id), timeout)

    def cleanup_jobs(self) -> None:
        """Abort whatever still runs so no test leaves processes behind."""
        with contextlib.suppress(Exception):
            for state in self.ok("GET", "/api/jobs")["jobs"]:
                if state["status"] == "running":
                    self.post(f"/api/jobs/{state['id']}/stop", {"abort": True})
        for path in (self.home / "jobs").glob("*/supervisor.json"):
            pid = json.loads(path.read_text())["pid"]
            try:
                wait_for(lambda pid=pid: not _alive(pid), timeout=5)
            except AssertionError:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True
