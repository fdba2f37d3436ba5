"""Jobs of the local backend run as an unprivileged account, not as the server's user: a root
server's process job that sets no `user` runs as `dstack-job` (created on first use) and cannot
read the server's database or key file; `user: root` opts back in to root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .harness import Server, write_config
from .test_runs import task

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd"
)


def test_a_job_without_user_runs_as_dstack_job_and_cannot_read_the_servers_files(
    server: Server, project_dir: Path
) -> None:
    db = server.server_dir / "data" / "sqlite.db"
    key = server.server_dir / "data" / "encryption.key"
    assert db.is_file() and key.is_file()
    cmds = ["echo who=$(id -un) home=$HOME", "touch mine && echo wrote-code-dir"]
    for p in (db, key):
        cmds.append(f"cat {p} > /dev/null 2>&1 && echo READ {p.name} || echo denied {p.name}")
    cmds += [f"cat {db} 2>&1 | head -c 200; true"]
    write_config(project_dir, "u.dstack.yml", task("as-job-user", *cmds))
    r = server.cli("apply", "-f", "u.dstack.yml", "-y", cwd=project_dir, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "who=dstack-job home=/home/dstack-job" in out
    assert "wrote-code-dir" in out  # its code directory is its own
    assert "denied sqlite.db" in out and "denied encryption.key" in out, out
    assert "READ " not in out
    assert "Permission denied" in out  # refused for the right reason, not a wrong path


def test_user_root_still_runs_as_root(server: Server, project_dir: Path) -> None:
    key = server.server_dir / "data" / "encryption.key"
    cmds = ["echo who=$(id -un)", f"test -r {key} && echo can-read-key"]
    write_config(project_dir, "r.dstack.yml", task("as-root", *cmds, extra="user: root\n"))
    r = server.cli("apply", "-f", "r.dstack.yml", "-y", cwd=project_dir, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "who=root" in out and "can-read-key" in out
