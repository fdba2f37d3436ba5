"""LIST_JOBS's long poll: a supervisor's note about its job (output, exit) answers a held list
at once; without a change the list is held for `wait`."""

from __future__ import annotations

import time
from pathlib import Path

from dstack.agent import notify, protocol, sshd
from dstack.agent.sshd_job import JobSshServer

from .helpers import AgentProcess


def _cursor(agent: AgentProcess) -> str:
    body = agent.ok("GET", "/api/jobs")
    assert isinstance(body[protocol.CHANGES], str)
    return body[protocol.CHANGES]


def test_a_job_exit_answers_the_held_list(agent: AgentProcess) -> None:
    agent.shell("lp1", "sleep 1; echo late")
    cursor = _cursor(agent)
    seen: list[dict] = []
    # Each answer comes when something changed (output, exit); the job's end arrives within
    # a few answers, long before any of them would have run out its 30 s.
    for _ in range(10):
        params = {protocol.CHANGED_AFTER: cursor, protocol.WAIT: 30}
        body = agent.ok("GET", "/api/jobs", params=params, timeout=40)
        assert body[protocol.CHANGES] != cursor
        cursor = body[protocol.CHANGES]
        seen = [j for j in body["jobs"] if j["id"] == "lp1"]
        if seen and seen[0]["status"] in protocol.FINISHED:
            break
    assert seen and seen[0]["status"] == "done", seen
    assert seen[0]["log_bytes"] > 0


def test_without_change_the_list_is_held_then_answered(agent: AgentProcess) -> None:
    cursor = _cursor(agent)
    started = time.monotonic()
    body = agent.ok("GET", "/api/jobs", params={protocol.CHANGED_AFTER: cursor, protocol.WAIT: 0.3})
    assert time.monotonic() - started >= 0.3
    assert body[protocol.CHANGES] == cursor
    # Another agent process's cursor (or a made-up one) is answered at once.
    body = agent.ok("GET", "/api/jobs", params={protocol.CHANGED_AFTER: "old:7", protocol.WAIT: 30})
    assert body[protocol.CHANGES] == cursor


def test_bad_long_poll_parameters_are_refused(agent: AgentProcess) -> None:
    for value in ("-1", "61", "soon", "nan"):
        response = agent.get("/api/jobs", params={protocol.WAIT: value})
        assert response.status_code == 400
        assert response.json()["error"].startswith(protocol.WAIT)


def test_changes_cursor_moves_and_waits() -> None:
    changes = notify.Changes()
    first = changes.cursor()
    assert changes.wait(first, 0.05) == first
    changes.bump()
    assert changes.wait(first, 5) != first
    assert changes.wait(None, 5) == changes.cursor()


def test_notes_reach_the_listener(tmp_path: Path) -> None:
    if not notify.SUPPORTED:
        return
    got: list[str] = []
    listener = notify.Listener(tmp_path, got.append)
    try:
        (tmp_path / "jobs" / "job-1").mkdir(parents=True)
        notify.send(tmp_path / "jobs" / "job-1")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == ["job-1"]
    finally:
        listener.close()


def test_one_host_key_per_agent(tmp_path: Path) -> None:
    if sshd.find_sshd() is None:
        return
    first = sshd.shared_host_key(tmp_path)
    assert sshd.shared_host_key(tmp_path) == first
    assert first.stat().st_mode & 0o077 == 0
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no leftovers


def test_a_server_stopped_before_it_started_never_starts(tmp_path: Path) -> None:
    job = tmp_path / "jobs" / "j"
    job.mkdir(parents=True)
    (job / sshd.SSH_FILE).write_text('{"port": 1, "user": "x"}')
    server = JobSshServer(job, {"id": "j", "ssh_keys": ["k"]}, in_docker=False)
    server.stop()
    server.start({})
    assert server.proc is None
    assert (job / sshd.SSH_FILE).read_text() == '{"port": 1, "user": "x"}'
