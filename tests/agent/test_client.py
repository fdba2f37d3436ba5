"""The server-side AgentClient and the local agent launcher against a real agent."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dstack.agent.protocol import JOB_STATE_FIELDS
from dstack.server.agent_client import AgentClient, AgentError, AgentUnreachableError
from dstack.server.local_agent import ensure_local_agent

from .helpers import SRC, TOKEN, AgentProcess, _alive, wait_for


async def _lifecycle(url: str) -> None:
    async with AgentClient(url, TOKEN) as client:
        assert (await client.healthcheck())["service"] == "dstack-agent"
        assert (await client.host_info())["cpus"] >= 1
        spec = {"id": "c1", "name": "c1", "commands": ["/bin/sh", "-c", "cat f.txt; exit 4"]}
        code = _tar({"f.txt": "from client\n"})
        started = time.monotonic()
        first = await client.start_job(spec, code)
        # Generous bound of the apply-to-running budget (benchmarks measure the real number).
        assert time.monotonic() - started < 0.5
        assert first["status"] in ("running", "failed")
        again = await client.start_job(spec, code)  # a retried start: the same job
        assert again["submitted_at"] == first["submitted_at"]
        with pytest.raises(AgentError) as err:
            await client.start_job({**spec, "commands": ["true"]}, code)
        assert err.value.status_code == 409 and "commands" in err.value.message
        while (await client.get_job("c1"))["status"] == "running":
            assert time.monotonic() - started < 5
            await asyncio.sleep(0.02)
        state = await client.get_job("c1")
        assert (state["status"], state["exit_status"]) == ("failed", 4)
        page = await client.poll_logs("c1", 0, 1024)
        assert base64.b64decode(page["entries"][0]["message"]) == b"from client\n"
        assert page["finished"] is True
        listed = await client.list_jobs()
        assert listed == [state]  # everything get_job says, for every job of the host
        assert set(listed[0]) == set(JOB_STATE_FIELDS)
        assert (await client.stop_job("c1", abort=True, reason=None))["status"] == "failed"
        await client.remove_job("c1")
        with pytest.raises(AgentError) as err:
            await client.get_job("c1")
        assert err.value.status_code == 404 and "c1" in str(err.value)
    async with AgentClient(url, "wrong") as client:
        with pytest.raises(AgentError) as err:
            await client.list_jobs()
        assert err.value.status_code == 401


def _tar(files: dict[str, str]) -> bytes:
    from .test_api import make_tar

    return make_tar(files)


def test_client_lifecycle(agent: AgentProcess) -> None:
    asyncio.run(_lifecycle(agent.url))


def test_client_unreachable(unused_port: int) -> None:
    async def call() -> None:
        async with AgentClient(f"http://127.0.0.1:{unused_port}", TOKEN, timeout=1) as client:
            await client.healthcheck()

    with pytest.raises(AgentUnreachableError):
        asyncio.run(call())


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ensure_local_agent_starts_and_reuses(tmp_path: Path) -> None:
    home = tmp_path / "local"
    try:
        first = asyncio.run(ensure_local_agent(home, TOKEN))
        assert _alive(first.pid)
        again = asyncio.run(ensure_local_agent(home, TOKEN))
        assert (again.url, again.pid) == (first.url, first.pid)
        # A different token: the old agent is replaced by one that accepts it.
        other = asyncio.run(ensure_local_agent(home, "another-token"))
        assert other.pid != first.pid
        wait_for(lambda: not _alive(first.pid))
        # A dead agent (killed) is replaced too.
        os.kill(other.pid, signal.SIGKILL)
        wait_for(lambda: not _alive(other.pid))
        third = asyncio.run(ensure_local_agent(home, "another-token"))
        assert third.pid != other.pid
        assert json.loads((home / "agent.json").read_text())["pid"] == third.pid
    finally:
        info = json.loads((home / "agent.json").read_text())
        os.kill(info["pid"], signal.SIGKILL)


def test_ensure_local_agent_never_signals_a_stranger(tmp_path: Path) -> None:
    """agent.json naming a live pid that is not our agent (pid reuse) must not kill it."""
    home = tmp_path / "local"
    home.mkdir()
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        (home / "agent.json").write_text(json.dumps({"pid": stranger.pid, "port": 1}))
        agent = asyncio.run(ensure_local_agent(home, TOKEN))
        assert agent.pid != stranger.pid
        assert stranger.poll() is None
        os.kill(agent.pid, signal.SIGKILL)
    finally:
        stranger.kill()
        stranger.wait()


def test_local_agent_outlives_the_process_that_started_it(tmp_path: Path) -> None:
    """A killed server finds its agent (and the agent's jobs) still running."""
    home = tmp_path / "local"
    code = (
        "import asyncio, sys; from pathlib import Path;"
        "from dstack.server.local_agent import ensure_local_agent;"
        f"a = asyncio.run(ensure_local_agent(Path({str(home)!r}), {TOKEN!r})); print(a.pid)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.split()[-1])
    try:
        assert _alive(pid)
        again = asyncio.run(ensure_local_agent(home, TOKEN))
        assert again.pid == pid
    finally:
        os.kill(pid, signal.SIGKILL)
