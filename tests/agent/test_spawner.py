"""Supervisors are forks of one long-lived spawner per agent (spawner.py), not a new
interpreter per job; they behave as before: exit codes, output, surviving the spawner."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from .helpers import AgentProcess, wait_for


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_supervisors_are_forks_of_the_spawner(agent: AgentProcess) -> None:
    agent.shell("fork-a", "echo out-a; exit 3")
    agent.shell("fork-b", "echo out-b")
    a, b = agent.wait_finished("fork-a"), agent.wait_finished("fork-b")
    assert (a["status"], a["exit_status"]) == ("failed", 3)  # the child's exit code, waited for
    assert (b["status"], b["exit_status"]) == ("done", 0)
    assert "out-a" in agent.output("fork-a") and "out-b" in agent.output("fork-b")


def test_a_running_supervisor_outlives_its_spawner(agent: AgentProcess) -> None:
    agent.shell("fork-live", "sleep 1; echo survived")
    info = json.loads((agent.home / "jobs/fork-live/supervisor.json").read_text())
    cmd = _cmdline(info["pid"])
    assert "dstack.agent.spawner" in cmd, cmd  # a fork, not a fresh interpreter
    spawner = int(Path(f"/proc/{info['pid']}/stat").read_text().rsplit(")", 1)[1].split()[1])
    if spawner != 1 and "dstack.agent.spawner" in _cmdline(spawner):
        os.kill(spawner, signal.SIGKILL)
    final = agent.wait_finished("fork-live")
    assert final["status"] == "done", final
    assert "survived" in agent.output("fork-live")
    # A new spawner serves the next job.
    agent.shell("fork-next", "echo next")
    wait_for(lambda: agent.job("fork-next")["status"] == "done")
