"""Nothing is lost when the server or the agent dies while a job runs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from .harness import Server, wait_until, write_config
from .test_runs import task

COUNT = 40


def _counting_task(name: str) -> str:
    return task(name, f"for i in $(seq 1 {COUNT}); do echo line-$i; sleep 0.1; done")


def _assert_complete(server: Server, name: str) -> None:
    out = server.cli("logs", name).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, COUNT + 1)], out


@pytest.fixture
def own_server(tmp_path: Path):  # noqa: ANN201
    srv = Server(home=tmp_path / "home")
    srv.home.mkdir()
    srv.start()
    yield srv
    srv.cleanup()


def test_server_killed_mid_job_finds_it_running_and_logs_complete(
    own_server: Server, project_dir: Path
):
    srv = own_server
    write_config(project_dir, "c.dstack.yml", _counting_task("survives-server"))
    assert srv.cli("apply", "-f", "c.dstack.yml", "-y", "-d", cwd=project_dir).returncode == 0
    srv.wait_status("survives-server", "running")
    wait_until(lambda: "line-3" in srv.cli("logs", "survives-server").stdout, what="first lines")
    srv.kill()
    srv.start()
    run = srv.run("survives-server")
    assert run["status"] == "running"  # the job kept running while the server was down
    run = srv.wait_status("survives-server", "done", "failed", timeout=60)
    assert run["status"] == "done", run
    _assert_complete(srv, "survives-server")


def test_agent_killed_mid_job_is_restarted_and_the_job_completes(
    own_server: Server, project_dir: Path
):
    srv = own_server
    write_config(project_dir, "a.dstack.yml", _counting_task("survives-agent"))
    assert srv.cli("apply", "-f", "a.dstack.yml", "-y", "-d", cwd=project_dir).returncode == 0
    srv.wait_status("survives-agent", "running")
    pid = srv.agent_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    run = srv.wait_status("survives-agent", "done", "failed", timeout=90)
    assert run["status"] == "done", run
    assert srv.agent_pid() != pid  # the server started a new agent for the instance
    _assert_complete(srv, "survives-agent")
