"""Jobs outlive the agent: state is derived from files, supervisors own the processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from .helpers import SRC, AgentProcess, _alive, wait_for


def test_agent_kill_and_restart_keeps_jobs(agent: AgentProcess) -> None:
    flag = agent.home / "go-restart"
    agent.shell("done-before", "echo early; exit 0")
    agent.wait_finished("done-before")
    agent.shell(
        "survivor", f"echo before; while [ ! -f {flag} ]; do sleep 0.02; done; echo after; exit 7"
    )
    agent.wait_output("survivor", "before")
    agent.kill()  # SIGKILL: no chance to clean up anything
    agent.start()  # same home, a fresh port
    jobs = {j["id"]: j for j in agent.ok("GET", "/api/jobs")["jobs"]}
    assert jobs["survivor"]["status"] == "running"
    assert jobs["done-before"]["status"] == "done"
    flag.touch()
    final = agent.wait_finished("survivor")
    assert (final["status"], final["exit_status"]) == ("failed", 7)
    assert agent.output("survivor") == "before\nafter\n"
    assert agent.output("done-before") == "early\n"


def test_lost_supervisor_is_reported_as_executor_error(agent: AgentProcess) -> None:
    agent.shell("orphan", "echo started; sleep 30")
    agent.wait_output("orphan", "started")
    supervisor = json.loads((agent.home / "jobs/orphan/supervisor.json").read_text())
    os.kill(supervisor["pid"], signal.SIGKILL)
    wait_for(lambda: not _alive(supervisor["pid"]))
    final = agent.wait_finished("orphan")
    assert final["status"] == "failed"
    assert final["termination_reason"] == "executor_error"
    assert "supervisor" in final["termination_message"]
    # What was left of the job (its own process group) was killed by the agent.
    child = json.loads((agent.home / "jobs/orphan/child.json").read_text())
    wait_for(lambda: not _alive(child["pid"]))
    assert agent.job("orphan") == final  # recorded once, stable from now on


def test_second_agent_on_same_home_refuses(agent: AgentProcess) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dstack.agent", "--home", str(agent.home)],
        env=dict(os.environ, DSTACK_AGENT_TOKEN="x", PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode != 0
    assert "already running" in proc.stderr


def test_refuses_non_loopback_and_missing_token(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "dstack.agent", "--home", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("DSTACK_AGENT_TOKEN", None)
    proc = subprocess.run(
        [*base, "--host", "0.0.0.0"],
        env={**env, "DSTACK_AGENT_TOKEN": "t"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 2 and "loopback" in proc.stderr
    proc = subprocess.run(base, env=env, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2 and "token" in proc.stderr
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    agent = AgentProcess(tmp_path / "h2", token="from-file")
    agent.start([*base[:-1], str(tmp_path / "h2"), "--token-file", str(token_file)])
    try:
        assert agent.ok("GET", "/api/jobs")["jobs"] == []
    finally:
        agent.kill()


def test_starts_from_the_token_hash_alone(tmp_path: Path) -> None:
    """What a systemd unit does on an SSH host: the token never lies on the host's disk."""
    hashed = tmp_path / "token.sha256"
    hashed.write_text(hashlib.sha256(b"hashed-only").hexdigest() + "\n")
    base = [sys.executable, "-m", "dstack.agent", "--home", str(tmp_path / "h")]
    agent = AgentProcess(tmp_path / "h", token="hashed-only")
    agent.start([*base, "--token-sha256-file", str(hashed)], env_extra={"DSTACK_AGENT_TOKEN": ""})
    try:
        assert agent.ok("GET", "/api/jobs")["jobs"] == []
        wrong = httpx.get(f"{agent.url}/api/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    finally:
        agent.kill()
    hashed.write_text("not-a-digest\n")
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("DSTACK_AGENT_TOKEN", None)
    proc = subprocess.run(
        [*base, "--token-sha256-file", str(hashed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 2 and "64 hex digits" in proc.stderr


def test_sigterm_to_supervisor_is_a_graceful_stop(agent: AgentProcess) -> None:
    """What a host shutdown does: the job gets SIGTERM and a recorded outcome."""
    agent.shell(
        "host-stop", "trap 'echo bye; exit 0' TERM; echo started; while true; do sleep 0.05; done"
    )
    agent.wait_output("host-stop", "started")
    supervisor = json.loads((agent.home / "jobs/host-stop/supervisor.json").read_text())
    os.kill(supervisor["pid"], signal.SIGTERM)
    final = agent.wait_finished("host-stop")
    assert (final["status"], final["termination_reason"]) == ("terminated", "terminated_by_server")
    assert "bye" in agent.output("host-stop")
