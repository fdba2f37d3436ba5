"""The local agent's environment is readable by every job it runs (/proc/<pid>/environ, same
user): it must hold no credential, and an agent an older server started with its token there
is recognised so that it gets replaced."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dstack.server import local_agent


def test_the_agent_env_drops_the_servers_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSTACK_SERVER_ADMIN_TOKEN", "admin-secret")
    monkeypatch.setenv("DSTACK_AGENT_TOKEN", "agent-secret")
    monkeypatch.setenv("DSTACK_DATABASE_URL", "postgresql://u:pw@db/x")
    env = local_agent.agent_env()
    assert not {"DSTACK_SERVER_ADMIN_TOKEN", "DSTACK_AGENT_TOKEN", "DSTACK_DATABASE_URL"} & set(env)
    assert "PYTHONPATH" in env


def test_the_agent_env_names_the_default_job_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSTACK_LOCAL_JOB_USER", raising=False)
    assert local_agent.agent_env()["DSTACK_AGENT_JOB_USER"] == "dstack-job"
    monkeypatch.setenv("DSTACK_LOCAL_JOB_USER", "")  # off: jobs run as the server's user
    assert local_agent.agent_env()["DSTACK_AGENT_JOB_USER"] == ""
    monkeypatch.setenv("DSTACK_LOCAL_JOB_USER", "jobs")
    assert local_agent.agent_env()["DSTACK_AGENT_JOB_USER"] == "jobs"


@pytest.mark.parametrize(("env", "exposed"), [({"DSTACK_AGENT_TOKEN": "t"}, True), ({}, False)])
def test_a_process_with_a_token_in_its_environment_is_recognised(
    env: dict[str, str], exposed: bool
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import os, time; os.environ.pop('DSTACK_AGENT_TOKEN', 0); "
         "time.sleep(30)"],
        env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip
    try:
        # Until the child has exec'd, /proc shows the forked copy of this process.
        for _ in range(500):
            if b"time.sleep" in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                break
            time.sleep(0.01)
        # Popping the variable in the process does not remove it from /proc/<pid>/environ.
        assert local_agent._holds_private_env(proc.pid) is exposed
    finally:
        proc.kill()
        proc.wait()
