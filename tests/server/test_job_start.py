"""What the job worker asks the agent about a service replica's port on the process runtime:
replica 0 is pinned to the configured port, replica N > 0 may move within a window, and the
port actually used (the agent's `listen_port`) is what the proxy reads back."""

from __future__ import annotations

from dstack.models.runs import JobRuntimeData, JobSpec
from dstack.server.reconcilers.job_start import (
    JOB_SSH_PORT,
    REPLICA_PORT_SEARCH,
    listen_fields,
    published_ports,
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


def test_the_ssh_port_is_published_once_the_jobs_ssh_server_listens():
    body = {"runtime": "process", "ports": []}
    starting = {"ssh_port": 41000, "ssh_ready": False, "ssh_user": "u"}
    jrd = runtime_data(body, starting, spec(0, None))
    assert JOB_SSH_PORT not in (jrd.ports or {}) and jrd.ssh_error is None
    jrd_json = jrd.model_dump_json()
    assert published_ports(jrd_json, starting) is None  # nothing new yet
    ready = published_ports(jrd_json, {**starting, "ssh_ready": True})
    assert ready is not None
    assert JobRuntimeData.model_validate_json(ready).ports == {JOB_SSH_PORT: 41000}
    assert published_ports(ready, {**starting, "ssh_ready": True}) is None  # written once
    # An agent from before `ssh_ready` is taken at its word.
    assert runtime_data(body, {"ssh_port": 41000}, spec(0, None)).ports == {JOB_SSH_PORT: 41000}


def test_why_a_job_has_no_ssh_server_reaches_the_runtime_data():
    body = {"runtime": "process", "ports": []}
    jrd = runtime_data(body, {"ssh_error": "no keys"}, spec(0, None))
    assert jrd.ssh_error == "no keys"
    failed = {"ssh_port": None, "ssh_ready": False, "ssh_error": "the SSH server exited"}
    later = published_ports(runtime_data(body, {}, spec(0, None)).model_dump_json(), failed)
    assert later is not None
    assert JobRuntimeData.model_validate_json(later).ssh_error == "the SSH server exited"
