"""`logs/poll` as a long poll (`wait`): held while nothing is new, answered by the job's next
output or by the run's end."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from .harness import Server, wait_until, write_config
from .test_runs import task

FINISHED = ("done", "failed", "terminated")


def _poll(server: Server, name: str, sub: str, token: str | None, wait: float) -> dict:
    body = {"run_name": name, "job_submission_id": sub, "next_token": token, "wait": wait}
    r = server.api("/api/project/main/logs/poll", body) if wait < 5 else _long(server, body)
    assert r.status_code == 200, r.text
    return r.json()


def _long(server: Server, body: dict):  # noqa: ANN202
    import httpx

    headers = {"Authorization": f"Bearer {server.token}"}
    return httpx.post(f"{server.url}/api/project/main/logs/poll", json=body, headers=headers,
                      timeout=60)


def _text(page: dict) -> str:
    return "".join(base64.b64decode(e["message"]).decode() for e in page["logs"])


def test_a_held_poll_is_answered_by_output_then_by_the_run_end(server: Server, project_dir: Path):
    name = "follow-long"
    write_config(project_dir, "l.dstack.yml",
                 task(name, "echo first", "sleep 2", "echo late-line", "sleep 1"))
    r = server.cli("apply", "-f", "l.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    run = server.wait_status(name, "running")
    sub = run["jobs"][0]["job_submissions"][-1]["id"]
    token = None
    text = ""
    # Each held answer brings new output; an answer at once would have come back empty.
    while "late-line" not in text:
        page = _poll(server, name, sub, token, 30)
        assert page["logs"], "a held poll came back without output while the run was running"
        text += _text(page)
        token = page["next_token"]
    assert text.index("first") < text.index("late-line")
    started = time.monotonic()
    page = _poll(server, name, sub, token, 30)
    assert page["logs"] == []
    assert time.monotonic() - started < 25  # answered by the run's end, not the wait
    wait_until(lambda: server.run(name)["status"] in FINISHED, what="run finished")


def test_the_wait_is_bounded(server: Server, project_dir: Path):
    write_config(project_dir, "b.dstack.yml", task("follow-bounded", "echo x"))
    server.cli("apply", "-f", "b.dstack.yml", "-y", cwd=project_dir)
    sub = server.run("follow-bounded")["jobs"][0]["job_submissions"][-1]["id"]
    body = {"run_name": "follow-bounded", "job_submission_id": sub, "wait": 31}
    r = server.api("/api/project/main/logs/poll", body)
    assert r.status_code in (400, 422), r.text
    assert "wait" in r.text
