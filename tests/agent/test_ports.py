"""The agent's listen-port check: a service replica's port is tested on the host before the job
starts; a pinned port that is taken fails the job with `ports_binding_failed`, a window picks
the next free port and tells the app through DSTACK_SERVICE_PORT."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.agent.ports import (
    LISTEN_FILE,
    busy_message,
    choose_port,
    port_in_use,
    reserved_ports,
)
from dstack.agent.spec import BadRequest, validate_spec
from dstack.agent.util import RESULT_FILE, SUPERVISOR_FILE

from .helpers import AgentProcess


def _free_block(count: int) -> int:
    """A base port whose next `count` ports are free (below the ephemeral range)."""
    for base in range(21000, 29000, 97):
        if not any(port_in_use(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free block")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on a port of 127.0.0.1, as another program on the host would."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", _free_block(3)))
    sock.listen(1)
    try:
        yield sock
    finally:
        sock.close()


def test_port_in_use_sees_a_loopback_listener(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert port_in_use(port)
    listener.close()
    assert not port_in_use(port)


def test_a_bound_but_not_listening_wildcard_socket_counts_too() -> None:
    sock = socket.socket()
    sock.bind(("0.0.0.0", _free_block(1)))
    try:
        assert port_in_use(sock.getsockname()[1])
    finally:
        sock.close()


def test_choose_port_skips_busy_and_reserved_ports_within_the_window() -> None:
    busy = {8001, 8002}
    assert choose_port(8000, 1, set(), busy.__contains__) == 8000
    assert choose_port(8001, 1, set(), busy.__contains__) is None  # pinned and taken
    assert choose_port(8001, 5, set(), busy.__contains__) == 8003
    assert choose_port(8001, 5, {8003}, busy.__contains__) == 8004
    assert choose_port(8001, 2, set(), busy.__contains__) is None  # the window is bounded
    assert choose_port(65535, 10, set(), lambda p: False) == 65535
    assert choose_port(65535, 10, set(), lambda p: True) is None


def test_busy_message_names_the_port_and_host() -> None:
    assert busy_message(8000, 1, "local").startswith("port 8000 is already in use on host local")
    assert busy_message(8001, 3, "gpu-1") == "ports 8001-8003 are all in use on host gpu-1"


def test_reserved_ports_are_those_of_started_unfinished_jobs(tmp_path: Path) -> None:
    def job(name: str, port: int, started: bool = True, finished: bool = False) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / LISTEN_FILE).write_text(json.dumps({"port": port}))
        if started:
            (d / SUPERVISOR_FILE).write_text("{}")
        if finished:
            (d / RESULT_FILE).write_text("{}")
        return d

    own = job("own", 9000)
    job("running", 9001)
    job("done", 9002, finished=True)
    job("never-started", 9003, started=False)
    assert reserved_ports(tmp_path, own) == {9001}


def test_spec_validates_the_listen_fields() -> None:
    spec = validate_spec({"id": "j", "commands": ["x"]})
    assert spec["listen_port"] is None and spec["listen_port_search"] == 1
    spec = validate_spec(
        {"id": "j", "commands": ["x"], "listen_port": 8001, "listen_port_search": 50}
    )
    assert (spec["listen_port"], spec["listen_port_search"]) == (8001, 50)
    for bad in ({"listen_port": 70000}, {"listen_port": "80"}, {"listen_port_search": 0}):
        with pytest.raises(BadRequest) as err:
            validate_spec({"id": "j", "commands": ["x"], **bad})
        assert str(err.value).startswith(next(iter(bad)))


def test_pinned_busy_port_fails_the_job_before_it_starts(
    agent: AgentProcess, listener: socket.socket, tmp_path: Path
) -> None:
    port = listener.getsockname()[1]
    marker = tmp_path / "ran"
    state = agent.shell("pinned", f"touch {marker}", listen_port=port, host_label="local")
    assert state["status"] == "failed"
    assert state["termination_reason"] == "ports_binding_failed"
    assert state["termination_message"].startswith(f"port {port} is already in use on host local")
    assert state["exit_status"] is None and state["listen_port"] is None
    assert not marker.exists()  # the commands never ran
    assert f"port {port} is already in use" in agent.output("pinned", "stderr")
    # Asking again does not start it either; it can be removed like any finished job.
    again = agent.shell("pinned", f"touch {marker}", listen_port=port, host_label="local")
    assert again["status"] == "failed" and not marker.exists()
    agent.ok("POST", "/api/jobs/pinned/remove")


def test_a_window_moves_to_the_next_free_port_and_tells_the_app(
    agent: AgentProcess, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    script = 'echo "PORT=$DSTACK_SERVICE_PORT"'
    env = {"DSTACK_SERVICE_PORT": str(port)}  # what the server sends; the agent corrects it
    state = agent.shell("moved", script, env=env, listen_port=port, listen_port_search=3)
    assert state["listen_port"] == port + 1
    assert agent.wait_finished("moved")["status"] == "done"
    assert agent.output("moved", "stdout") == f"PORT={port + 1}\n"


def test_concurrent_jobs_never_choose_the_same_port(agent: AgentProcess) -> None:
    base = _free_block(4)
    # The first job has not bound its port (it only sleeps): the reservation keeps it apart.
    first = agent.shell("a", "sleep 30", listen_port=base, listen_port_search=4)
    second = agent.shell("b", "sleep 30", listen_port=base, listen_port_search=4)
    assert first["listen_port"] == base and second["listen_port"] == base + 1
    agent.ok("POST", "/api/jobs/a/stop", {"abort": True})
    agent.wait_finished("a")
    third = agent.shell("c", "sleep 30", listen_port=base, listen_port_search=4)
    assert third["listen_port"] == base  # a finished job's port is free again
    for job_id in ("b", "c"):
        agent.ok("POST", f"/api/jobs/{job_id}/stop", {"abort": True})
