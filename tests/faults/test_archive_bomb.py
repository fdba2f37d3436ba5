"""Archive bombs through the real upload path: a code archive of a few hundred kB that unpacks
to 200 MB, and one with thousands of entries. The agent counts bytes and entries from the
headers while unpacking, stops at its caps, leaves nothing behind, and the job fails with a
message that says why; a normal archive still runs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import httpx
import pytest

from e2e.harness import Server

from .conftest import start_server, task_spec

MB = 1024 * 1024
MAX_BYTES = 50 * MB
MAX_FILES = 1000


class Zeros(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001
        b[:] = bytes(len(b))
        return len(b)


def archive(members: list[tuple[str, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(Zeros()) if size else None)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb_server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    env = {
        "DSTACK_AGENT_CODE_MAX_BYTES": str(MAX_BYTES),
        "DSTACK_AGENT_CODE_MAX_FILES": str(MAX_FILES),
    }
    srv = start_server(tmp_path_factory.mktemp("bombs"), env)
    try:
        yield srv
    finally:
        srv.cleanup()


def _run_with_code(srv: Server, name: str, blob: bytes, command: str) -> dict:
    r = httpx.post(
        f"{srv.url}/api/project/main/repos/upload_code",
        files={"file": ("code.tar.gz", blob)},
        headers={"Authorization": f"Bearer {srv.token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    spec = task_spec(name, command)
    spec["repo_code_hash"] = r.json()["hash"]
    r = srv.api("/api/project/main/runs/apply", {"plan": {"run_spec": spec}})
    assert r.status_code == 200, r.text
    run = srv.wait_status(name, "done", "failed", "terminated", timeout=90)
    return {"status": run["status"], **run["jobs"][0]["job_submissions"][-1]}


def _disk_use(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.mark.parametrize(
    ("label", "members", "expected"),
    [
        ("bytes", [("ok.txt", 10), ("zeros.bin", 200 * MB)], "unpacks to more than"),
        ("entries", [(f"f{i}", 0) for i in range(3 * MAX_FILES)], "more than 1000 entries"),
    ],
)
def test_a_bomb_fails_the_job_and_leaves_nothing(
    bomb_server: Server, label: str, members: list, expected: str
) -> None:
    srv = bomb_server
    blob = archive(members)
    assert len(blob) < 2 * MB  # under the server's upload limit: the agent must catch it
    job = _run_with_code(srv, f"bomb-{label}", blob, "echo should-not-run")
    assert job["status"] == "failed", job
    assert expected in (job["termination_reason_message"] or ""), job
    assert _disk_use(srv.server_dir / "local-agent") < MAX_BYTES


def test_a_normal_archive_still_runs(bomb_server: Server) -> None:
    blob = archive([("data.txt", 5), ("dir/more.txt", 3)])
    job = _run_with_code(bomb_server, "normal-code", blob, "ls data.txt dir/more.txt")
    assert job["status"] == "done", job
