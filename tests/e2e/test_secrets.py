"""Secrets end to end (a real server, local agent and CLI): a value set through the CLI
reaches the job through `${{ secrets.NAME }}` and is absent in clear from the database file,
the server log, events, API answers and the agent's files; and a job that searches /proc and
the files it can read for the local agent's token finds nothing (while it does find a control
token planted in its own environment, so the search is known to work)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
from pathlib import Path

from dstack.server.services.crypto import Box

from .harness import Server, write_config
from .test_runs import task

APPS = Path(__file__).parent / "apps"
SENTINEL = "sentinel-" + secrets.token_hex(12)


def _files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                if needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                continue
    return hits


def test_a_secret_set_through_the_cli_reaches_the_job_and_nothing_else(
    server: Server, project_dir: Path
) -> None:
    r = server.cli("secret", "set", "hf_token", input=SENTINEL + "\n")  # stdin: not in argv
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    listed = server.cli("secret", "list")
    assert "hf_token" in listed.stdout and "******" in listed.stdout
    assert SENTINEL not in listed.stdout
    assert SENTINEL in server.cli("secret", "get", "hf_token").stdout
    digest = hashlib.sha256(SENTINEL.encode()).hexdigest()
    show = (
        "import hashlib,os; print('sha=' + hashlib.sha256(os.environ['HF'].encode()).hexdigest())"
    )
    extra = "env:\n  - HF=${{ secrets.hf_token }}\n"
    write_config(
        project_dir, "t.dstack.yml", task("uses-secret", f'python3 -c "{show}"', extra=extra)
    )
    r = server.cli("apply", "-f", "t.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"sha={digest}" in r.stdout  # the job got the value
    answers = [
        server.api("/api/project/main/runs/get", {"run_name": "uses-secret"}).text,
        server.api("/api/runs/list", {}).text,
        server.api("/api/events/list", {"project_name": "main"}).text,
        server.cli("ps", "-a", "-v").stdout,
        server.cli("event").stdout,
    ]
    for answer in answers:
        assert SENTINEL not in answer
    assert "${{ secrets.hf_token }}" in answers[0]
    needle = SENTINEL.encode()
    assert _files_holding(server.server_dir, needle) == []  # database, logs, agent files
    assert needle not in (server.home / "server.log").read_bytes()
    missing = "env:\n  - X=${{ secrets.not_there }}\n"
    write_config(project_dir, "m.dstack.yml", task("no-secret", "true", extra=missing))
    r = server.cli("apply", "-f", "m.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode != 0 and "not_there" in r.stdout + r.stderr


def _agent_token(server: Server) -> str:
    db = sqlite3.connect(server.server_dir / "data" / "sqlite.db")
    try:
        rows = db.execute(
            "SELECT agent_token_enc FROM instances WHERE status IN ('idle', 'busy')"
        ).fetchall()
    finally:
        db.close()
    assert rows, "no live local instance"
    box = Box(server.server_dir / "data" / "encryption.key")
    return box.decrypt(rows[0][0])


def test_a_job_finds_the_agents_token_nowhere(server: Server, project_dir: Path) -> None:
    write_config(project_dir, "w.dstack.yml", task("warm", "true"))
    assert server.cli("apply", "-f", "w.dstack.yml", "-y", cwd=project_dir).returncode == 0
    token = _agent_token(server)
    control = secrets.token_urlsafe(32)
    shutil.copy(APPS / "token_search.py", project_dir / "token_search.py")
    roots = [
        str(server.server_dir / "local-agent"),
        str(server.home),
        "/tmp",
        "/var/tmp",
        "/dev/shm",
        "/run",
        "/etc",
    ]
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    cmd = " ".join(["python3", "token_search.py", sha(token), sha(control), *roots])
    extra = f"env:\n  - CONTROL={control}\n"
    write_config(project_dir, "s.dstack.yml", task("token-search", cmd, extra=extra))
    r = server.cli("apply", "-f", "s.dstack.yml", "-y", cwd=project_dir, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "FOUND control /proc/" in out  # the search does look at environments
    assert "searched " in out and "TIMEOUT" not in out, out
    found = [line for line in out.splitlines() if line.startswith("FOUND secret")]
    assert found == [], json.dumps(found)
