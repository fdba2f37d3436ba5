"""The local backend's instance: created on demand, reused while idle, terminated (its agent
stopped) once idle past idle_duration, and created again by the next run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .harness import Server, wait_until, write_config
from .test_runs import task


@pytest.fixture
def quick_server(tmp_path: Path):  # noqa: ANN201
    srv = Server(home=tmp_path / "home", extra_env={"DSTACK_SERVER_INSTANCE_CHECK_SECONDS": "0.5"})
    srv.home.mkdir()
    srv.start()
    yield srv
    srv.cleanup()


def _instances(srv: Server) -> list[dict]:
    fleet = srv.api("/api/project/main/fleets/get", {"name": "local"}).json()
    return fleet["instances"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_idle_instance_is_terminated_and_recreated(quick_server: Server, project_dir: Path):
    srv = quick_server
    assert _instances(srv) == []  # nothing runs until a run needs it
    write_config(
        project_dir, "a.dstack.yml", task("first", "echo one", extra="idle_duration: 3s\n")
    )
    assert srv.cli("apply", "-f", "a.dstack.yml", "-y", cwd=project_dir).returncode == 0
    (inst,) = _instances(srv)
    assert inst["status"] == "idle" and inst["backend"] == "local"
    agent = srv.agent_pid()
    assert agent and _alive(agent)
    wait_until(lambda: _instances(srv) == [], timeout=30, what="idle instance to terminate")
    wait_until(lambda: not _alive(agent), timeout=10, what="the agent to stop")
    out = srv.cli("event").stdout
    assert "IDLE -> TERMINATING. Termination reason: IDLE_TIMEOUT" in out, out
    write_config(project_dir, "b.dstack.yml", task("second", "echo two"))
    r = srv.cli("apply", "-f", "b.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0 and "two" in r.stdout
    (again,) = _instances(srv)
    assert again["id"] != inst["id"] and again["instance_num"] == 1
