"""`repos` against real Git servers on loopback: `git daemon` (public, branch and hash) and a
password-protected HTTP server (a token given with `-t`, kept encrypted and never shown)."""

from __future__ import annotations

import base64
import functools
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .harness import Server, free_port, wait_until, write_config

RES = "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"
TOKEN = "tok-e2e-0123456789"


def _git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}  # fmt: skip
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return out.stdout.decode().strip()


@pytest.fixture(scope="module")
def repo_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A bare repository `r.git`: main with two commits, a `dev` branch with dev.txt."""
    root = tmp_path_factory.mktemp("git-root")
    work = root / "work"
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    (work / "hello.txt").write_text("main-1\n")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "one")
    first = _git(work, "rev-parse", "HEAD")
    (work / "hello.txt").write_text("main-2\n")
    _git(work, "commit", "-q", "-am", "two")
    _git(work, "checkout", "-q", "-b", "dev")
    (work / "dev.txt").write_text("on-dev\n")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "dev")
    _git(work, "checkout", "-q", "main")
    _git(root, "clone", "-q", "--bare", str(work), "r.git")
    _git(root / "r.git", "update-server-info")  # for the dumb HTTP server
    return root, {"first": first}


@pytest.fixture(scope="module")
def git_daemon(repo_root: tuple[Path, dict[str, str]]) -> Iterator[str]:
    root, _ = repo_root
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
         "--listen=127.0.0.1", f"--port={port}", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"git://127.0.0.1:{port}/r.git"
    try:
        wait_until(
            lambda: subprocess.run(["git", "ls-remote", url], capture_output=True).returncode == 0,
            timeout=10,
            what="git daemon",
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(5)


class _AuthHandler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        expected = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
        if self.headers.get("Authorization") != f"Basic {expected}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def private_http(repo_root: tuple[Path, dict[str, str]]) -> Iterator[str]:
    root, _ = repo_root
    handler = functools.partial(_AuthHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/r.git"
    finally:
        httpd.shutdown()


def test_repo_branch_cloned_at_its_path(server: Server, tmp_path: Path, git_daemon: str) -> None:
    write_config(
        tmp_path,
        "r.dstack.yml",
        f"type: task\nname: repo-branch\nrepos:\n  - url: {git_daemon}\n    branch: dev\n"
        "    path: src\nsingle_branch: true\n"
        "commands:\n  - cat src/dev.txt src/hello.txt\n  - git -C src branch -r\n" + RES,
    )
    r = server.cli("apply", "-f", "r.dstack.yml", "-y", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on-dev" in r.stdout and "main-2" in r.stdout
    assert "origin/dev" in r.stdout and "origin/main" not in r.stdout  # single_branch


def test_repo_flags_pick_the_commit(
    server: Server, tmp_path: Path, git_daemon: str, repo_root: tuple[Path, dict[str, str]]
) -> None:
    first = repo_root[1]["first"]
    write_config(tmp_path, "h.dstack.yml", "type: task\nname: repo-hash\n"
                 "commands:\n  - cat hello.txt\n  - git rev-parse HEAD\n" + RES)  # fmt: skip
    r = server.cli(
        "apply", "-f", "h.dstack.yml", "-y", "-P", git_daemon, "--repo-hash", first,
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "main-1" in r.stdout and first in r.stdout


def test_private_repo_with_a_token(server: Server, tmp_path: Path, private_http: str) -> None:
    conf = "type: task\nname: repo-private\ncommands:\n  - cat hello.txt\n" + RES
    write_config(tmp_path, "p.dstack.yml", conf)
    denied = server.cli(
        "apply", "-f", "p.dstack.yml", "-y", "-P", private_http, cwd=tmp_path, timeout=120
    )
    assert denied.returncode != 0
    assert "cannot clone" in denied.stdout + denied.stderr
    r = server.cli(
        "apply", "-f", "p.dstack.yml", "-y", "-P", private_http, "-t", TOKEN,
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "main-2" in r.stdout
    shown = json.dumps(server.run("repo-private"))
    assert TOKEN not in shown and "<redacted>" in shown
    stored = list(server.server_dir.rglob("*.db*"))
    assert stored and not any(TOKEN.encode() in f.read_bytes() for f in stored)  # encrypted


def test_file_urls_are_refused_at_plan(server: Server, tmp_path: Path) -> None:
    write_config(tmp_path, "f.dstack.yml", "type: task\nname: repo-file\nrepos:\n"
                 "  - url: file:///etc\ncommands:\n  - ls\n" + RES)  # fmt: skip
    r = server.cli("apply", "-f", "f.dstack.yml", "-y", cwd=tmp_path, timeout=60)
    assert r.returncode != 0
    assert "only https, http, git and ssh URLs" in r.stdout + r.stderr
