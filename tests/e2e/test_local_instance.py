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


def test_an_agent_no_instance_owns_is_swept_and_the_instance_recovers(
    tmp_path: Path, project_dir: Path
):
    srv = Server(
        home=tmp_path / "home",
        extra_env={
            "DSTACK_SERVER_INSTANCE_CHECK_SECONDS": "0.5",
            "DSTACK_SERVER_INVENTORY_SWEEP_SECONDS": "0.5",
        },
    )
    srv.home.mkdir()
    srv.start()
    try:
        write_config(project_dir, "a.dstack.yml", task("first", "echo one"))
        assert srv.cli("apply", "-f", "a.dstack.yml", "-y", cwd=project_dir).returncode == 0
        (inst,) = _instances(srv)
        agent = srv.agent_pid()
        assert agent and _alive(agent)
        # What a crash between starting an agent and writing its row leaves: an agent tagged
        # with an instance the database does not have.
        tag = srv.server_dir / "local-agent" / "instance_id"
        assert tag.read_text() == inst["id"]
        tag.write_text("00000000-0000-0000-0000-000000000000")
        wait_until(lambda: not _alive(agent), timeout=15, what="the orphan agent to be stopped")
        out = srv.cli("event").stdout
        assert "which no live instance owns" in out, out
        # The real instance's agent is brought back under its own tag, and runs go on.
        wait_until(
            lambda: (pid := srv.agent_pid()) not in (None, agent) and _alive(pid),
            timeout=30,
            what="the instance's agent to be restarted",
        )
        assert tag.read_text() == inst["id"]
        write_config(project_dir, "b.dstack.yml", task("second", "echo two"))
        r = srv.cli("apply", "-f", "b.dstack.yml", "-y", cwd=project_dir)
        assert r.returncode == 0 and "two" in r.stdout, r.stdout + r.stderr
        assert [i["id"] for i in _instances(srv)] == [inst["id"]]
    finally:
        srv.cleanup()
