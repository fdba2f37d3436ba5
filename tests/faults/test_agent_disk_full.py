"""The agent alone on a full disk (its home on a small tmpfs): a job that fills the disk and goes
on is stopped and failed with "no space left on HOST" by its supervisor's watch (not by a
crash), the host keeps answering, a start on the full disk answers 507 with that message and
leaves nothing behind, and once space returns a job runs as usual."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.helpers import AgentProcess

from .test_disk_full import tmpfs

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs needs root")


def test_the_agent_fails_a_job_on_a_full_disk_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "home", "8m") as home:
        agent = AgentProcess(home).start(env_extra={"DSTACK_AGENT_DISK_FULL_GRACE": "1"})
        try:
            agent.shell("filler", "dd if=/dev/zero of=fill bs=1M count=64; sleep 300")
            state = agent.wait_finished("filler", timeout=30)
            assert state["status"] == "failed", state
            assert state["termination_reason"] == "executor_error", state
            assert "no space left on" in state["termination_message"], state
            # The watch stopped it; the supervisor did not die of the full disk.
            log = (home / "jobs" / "filler" / "supervisor.log").read_text(errors="replace")
            assert "Traceback" not in log, log
            # Every call about the host still answers.
            assert agent.get("/api/jobs").status_code == 200
            # A start on the still-full disk: 507 and the reason, nothing half-written.
            r = agent.start_job({"id": "second", "name": "second", "commands": ["true"]})
            assert r.status_code == 507, r.text
            assert "no space left on" in r.text
            assert not (home / "jobs" / "second").exists()
            # Space returns: the next job runs.
            (home / "jobs" / "filler" / "code" / "fill").unlink()
            agent.shell("third", "echo third-ran")
            assert agent.wait_finished("third", timeout=15)["status"] == "done"
            assert "third-ran" in agent.output("third")
        finally:
            agent.kill()
            shutil.rmtree(home / "jobs", ignore_errors=True)
