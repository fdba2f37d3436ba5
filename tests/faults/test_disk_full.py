"""A full disk, for real: a small tmpfs mounted under the test's directory holds the server's
data (SQLite) or the agent's job directories. Writes answer 507 with a message (not a bare
500); a job that fills the agent's disk fails with "no space left on HOST" (not `running`
forever), the next job fails just as clearly (never "internal agent error"), and once space
returns everything works again."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.harness import Server, wait_until

from .conftest import start_server, task_spec

UPLOAD = "/api/project/main/repos/upload_code"

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem refuses: it is full now."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


def _upload(srv: Server, blob: bytes) -> httpx.Response:
    return httpx.post(
        f"{srv.url}{UPLOAD}",
        files={"file": ("code.tar.gz", blob)},
        headers={"Authorization": f"Bearer {srv.token}"},
        timeout=30,
    )


def test_server_data_on_a_full_disk_answers_507_and_recovers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = home / ".dstack" / "server" / "data"
    with tmpfs(data, "16m"):
        srv = start_server(home)
        try:
            filler = fill(data)
            blob = os.urandom(1900 * 1024)  # more than the WAL already holds room for
            r = _upload(srv, blob)
            assert r.status_code == 507, (r.status_code, r.text[:300])
            assert "out of disk space" in r.json()["detail"][0]["msg"]
            assert srv.api("/api/runs/list", {}).status_code == 200  # reads still answer
            assert srv.proc is not None and srv.proc.poll() is None
            filler.unlink()
            r = _upload(srv, blob)
            assert r.status_code == 200, r.text[:300]
        finally:
            srv.cleanup()


def _job(srv: Server, name: str) -> dict:
    return srv.run(name)["jobs"][0]["job_submissions"][-1]


def _apply(srv: Server, name: str, command: str) -> None:
    # The host's disk is the small tmpfs: ask for none of the default 100 GB.
    body = {"plan": {"run_spec": task_spec(name, command, resources={"disk": "0GB.."})}}
    r = srv.api("/api/project/main/runs/apply", body)
    assert r.status_code == 200, r.text


def test_a_full_job_disk_fails_the_job_clearly_and_recovers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    agent_home = home / ".dstack" / "server" / "local-agent"
    with tmpfs(agent_home, "24m"):
        # Jobs as the agent's own user: a `dstack-job` job's folder is outside the agent's home
        # (/var/tmp/dstack-user-jobs), and the full filesystem here is the agent's home.
        srv = start_server(home, {"DSTACK_AGENT_DISK_FULL_GRACE": "1", "DSTACK_LOCAL_JOB_USER": ""})
        try:
            # The job fills the disk, then goes on as if nothing happened.
            _apply(srv, "filler", "dd if=/dev/zero of=fill bs=1M count=100; sleep 300")
            run = srv.wait_status("filler", "failed", "terminated", "done", timeout=90)
            sub = _job(srv, "filler")
            assert run["status"] == "failed", (run["status"], sub)
            assert "no space left on" in (sub["termination_reason_message"] or ""), sub
            # The next job on the still-full disk: a clear failure, never "internal agent error".
            _apply(srv, "second", "echo second")
            run = srv.wait_status("second", "failed", "done", timeout=90)
            sub = _job(srv, "second")
            message = sub["termination_reason_message"] or ""
            assert "internal agent error" not in message, sub
            if run["status"] == "failed":
                assert "no space left on" in message, sub
            # Space returns: the next job runs as usual.
            for big in agent_home.rglob("fill"):
                big.unlink()
            _apply(srv, "third", "echo third-ran")
            run = srv.wait_status("third", "done", "failed", timeout=90)
            assert run["status"] == "done", _job(srv, "third")
            wait_until(lambda: srv.proc is not None and srv.proc.poll() is None, timeout=1)
        finally:
            srv.cleanup()
