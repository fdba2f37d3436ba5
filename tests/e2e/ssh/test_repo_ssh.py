"""`repos` over SSH: a bare repository in a netns host's home, cloned by a job on the local
backend with the key given as `--git-identity` (kept encrypted on the server)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from ..harness import Server, write_config
from . import hosts as sshhosts

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))

RES = "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"


def _bare_repo(host: sshhosts.Host, tmp_path: Path) -> str:
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
    (work / "over-ssh.txt").write_text("cloned-over-ssh\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "one"]):
        subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True)
    bare = host.home / "r.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    pw = pwd.getpwnam(host.name)
    subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(bare)], check=True)
    return f"ssh://{host.name}@{host.address}:{host.port}{bare}"


def test_private_repo_over_ssh_with_a_key(
    server: Server, hosts: sshhosts.Hosts, key: Path, tmp_path: Path
) -> None:
    host = hosts.add()
    url = _bare_repo(host, tmp_path)
    proj = tmp_path / "proj"
    write_config(proj, "s.dstack.yml", "type: task\nname: repo-ssh\n"
                 "commands:\n  - cat over-ssh.txt\n" + RES)  # fmt: skip
    denied = server.cli("apply", "-f", "s.dstack.yml", "-y", "-P", url, cwd=proj, timeout=120)
    assert denied.returncode != 0 and "cannot clone" in denied.stdout + denied.stderr
    r = server.cli(
        "apply", "-f", "s.dstack.yml", "-y", "-P", url, "--git-identity", str(key),
        cwd=proj, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cloned-over-ssh" in r.stdout
    private = key.read_text().strip().splitlines()[1]
    assert private not in json.dumps(server.run("repo-ssh"))
