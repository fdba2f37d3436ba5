"""What the job worker asks the agent about a service replica's port on the process runtime:
replica 0 is pinned to the configured port, replica N > 0 may move within a window, and the
port actually used (the agent's `listen_port`) is what the proxy reads back."""

from __future__ import annotations

from dstack.models.runs import JobSpec
from dstack.server.reconcilers.job_start import (
    REPLICA_PORT_SEARCH,
    listen_fields,
    runtime_data,
    service_listen_port,
)


def spec(replica: int, port: int | None = 8000) -> JobSpec:
    return JobSpec(replica_num=replica, job_num=0, job_name=f"s-0-{replica}", service_port=port)


def test_replica_0_is_pinned_and_replica_n_may_search():
    env = {"DSTACK_SERVICE_PORT": "8000"}
    assert listen_fields(spec(0), "process", env) == {
        "listen_port": 8000,
        "listen_port_search": 1,
    }
    env = {"DSTACK_SERVICE_PORT": "8002"}
    assert listen_fields(spec(2), "process", env) == {
        "listen_port": 8002,
        "listen_port_search": REPLICA_PORT_SEARCH,
    }


def test_no_check_for_containers_tasks_or_a_port_the_user_set():
    assert listen_fields(spec(1), "docker", {"DSTACK_SERVICE_PORT": "8000"}) == {}
    assert listen_fields(spec(0, None), "process", {}) == {}
    assert listen_fields(spec(1), "process", {"DSTACK_SERVICE_PORT": "9000"}) == {}
    assert service_listen_port(spec(3), "process") == 8003


def test_runtime_data_records_the_port_the_agent_chose():
    body = {"runtime": "process", "ports": [8000]}
    jrd = runtime_data(body, {"listen_port": 8005}, spec(1))
    assert jrd.ports == {8000: 8005}  # the proxy routes replica 1 to 8005
    assert runtime_data(body, {}, spec(1)).ports == {8000: 8001}  # an agent that chose none
    assert runtime_data(body, {"listen_port": 8000}, spec(0)).ports == {8000: 8000}
    docker = runtime_data({"runtime": "docker"}, {"ports": {"8000": 49153}}, spec(1))
    assert docker.ports == {8000: 49153}
