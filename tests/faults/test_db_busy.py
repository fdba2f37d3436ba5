"""SQLite's write lock held by another process (`BEGIN IMMEDIATE`): writes answer 503 with
`Retry-After` within the busy timeout instead of a 500 after 30 s, reads still answer, the
background loops wait it out, and once the lock is gone nothing submitted before is lost and
the refused write goes through on retry. (Postgres has no database-wide write lock.)"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from e2e.harness import Server, wait_until

from .conftest import start_server, task_spec

LOCKER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
c.execute("ROLLBACK")
"""


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    srv = start_server(tmp_path_factory.mktemp("busy"), {"DSTACK_DB_BUSY_TIMEOUT": "1"})
    try:
        yield srv
    finally:
        srv.cleanup()


def _log(srv: Server) -> str:
    return (srv.home / "server.log").read_text(errors="replace")


def _apply(srv: Server, name: str, command: str):  # noqa: ANN202
    return srv.api("/api/project/main/runs/apply", {"plan": {"run_spec": task_spec(name, command)}})


def test_a_held_write_lock_answers_503_and_loses_nothing(busy_server: Server) -> None:
    srv = busy_server
    r = _apply(srv, "before-lock", "sleep 4; echo survived")
    assert r.status_code == 200, r.text
    srv.wait_status("before-lock", "running")
    db = srv.server_dir / "data" / "sqlite.db"
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        log_before = len(_log(srv))
        started = time.monotonic()
        r = _apply(srv, "during-lock", "echo later")
        elapsed = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after", "").isdigit()
        assert "busy" in r.json()["detail"][0]["msg"]
        assert elapsed < 8, elapsed
        # Reads go on while the lock is held.
        assert srv.api("/api/runs/list", {}).status_code == 200
        time.sleep(5)  # the job finishes meanwhile; the loops must wait, not die or spin
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        locker.stdin.close()  # type: ignore[union-attr]
        locker.wait(timeout=10)
    # Nothing lost: the job that finished under the lock is recorded once the lock is gone.
    run = srv.wait_status("before-lock", "done", "failed", timeout=60)
    assert run["status"] == "done", run
    # The refused write goes through on retry, exactly once.
    r = wait_until(
        lambda: (resp := _apply(srv, "during-lock", "echo later")).status_code == 200 and resp,
        timeout=30,
        what="apply after the lock",
    )
    assert r.json()["run_spec"]["run_name"] == "during-lock"
    names = [x["run_spec"]["run_name"] for x in srv.api("/api/runs/list", {}).json()]
    assert names.count("during-lock") == 1 and names.count("before-lock") == 1
    # The loops backed off with one line each time, no traceback, no spinning.
    during = _log(srv)[log_before:]
    assert "Traceback" not in during, during[-3000:]
    assert 0 < during.count("database busy") < 60, during.count("database busy")
