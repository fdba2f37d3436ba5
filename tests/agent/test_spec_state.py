"""Job spec validation, state derivation and docker command lines (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from dstack.agent.docker import container_workdir, parse_docker_port, run_argv
from dstack.agent.spec import BadRequest, validate_spec
from dstack.agent.state import derive_state

SPEC: dict[str, Any] = {"id": "j", "name": "j", "runtime": "process", "submitted_at": "t0"}


def test_validate_spec_defaults() -> None:
    spec = validate_spec({"id": "job-1", "commands": ["/bin/sh", "-c", "true"], "extra": 1})
    assert spec["name"] == "job-1" and spec["runtime"] == "process"
    assert spec["stop_duration"] == 300 and spec["gpus"] == 0
    assert spec["max_duration"] is None and spec["env"] == {} and "extra" not in spec
    ports = validate_spec({"id": "j", "commands": ["x"], "ports": [8000, 22, 8000]})["ports"]
    assert ports == [8000, 22]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"commands": ["x"]}, "id"),
        ({"id": "../x", "commands": ["x"]}, "id"),
        ({"id": "j", "commands": []}, "commands"),
        ({"id": "j", "commands": ["x"], "ports": [70000]}, "ports"),
        ({"id": "j", "commands": ["x"], "volumes": [{"host": "/a"}]}, "volumes"),
        ({"id": "j", "commands": ["x"], "max_duration": True}, "max_duration"),
        ({"id": "j", "commands": ["x"], "shm_size_mib": 0}, "shm_size_mib"),
        ({"id": "j", "commands": ["x"], "working_dir": 3}, "working_dir"),
        ({"id": "j", "commands": ["x"], "env": {"A=B": "c"}}, "env"),
    ],
)
def test_validate_spec_errors_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(BadRequest) as err:
        validate_spec(body)
    assert str(err.value).startswith(field)


def test_state_submitted_running_lost_and_finished() -> None:
    assert derive_state(SPEC, None, False, None, None, 0, None)["status"] == "submitted"
    sup = {"pid": 1, "started_at": "t1"}
    running = derive_state(SPEC, sup, True, None, None, 10, None)
    assert (running["status"], running["started_at"], running["log_bytes"]) == ("running", "t1", 10)
    lost = derive_state(SPEC, sup, False, None, None, 0, None)
    assert (lost["status"], lost["termination_reason"]) == ("failed", "executor_error")
    result = {
        "status": "done",
        "exit_status": 0,
        "termination_reason": "done_by_runner",
        "termination_message": None,
        "finished_at": "t2",
    }
    # A result wins even over a supervisor still seen alive (it is just exiting).
    done = derive_state(SPEC, sup, True, result, {"80": 3000}, 5, {"abort": False})
    assert (done["status"], done["exit_status"], done["finished_at"]) == ("done", 0, "t2")
    assert done["ports"] == {"80": 3000} and done["stop_requested"] is True


def test_docker_run_argv() -> None:
    spec = {
        "id": "j1",
        "image": "img:1",
        "commands": ["/bin/sh", "-c", "echo hi"],
        "env": {"B": "2", "A": "secret"},
        "working_dir": "sub",
        "shm_size_mib": 512,
        "ports": [8000],
        "gpus": -1,
    }
    binds = [{"source": "/data", "path": "/mnt/data", "read_only": False, "name": None}]
    argv = run_argv(spec, "/home/jobs/j1/code", has_nvidia=True, binds=binds)
    assert argv[:2] == ["docker", "run"]
    joined = " ".join(argv)
    assert "--name dstack-j1" in joined and "--label dstack.job=j1" in joined
    assert "--shm-size 512m" in joined and "-p 127.0.0.1::8000" in joined
    assert "-v /home/jobs/j1/code:/workflow" in joined and "-v /data:/mnt/data" in joined
    assert "-e A -e B" in joined and "secret" not in joined
    assert "-w /workflow/sub" in joined and "--gpus all" in joined
    assert argv[-5:] == ["--entrypoint", "/bin/sh", "img:1", "-c", "echo hi"]
    no_gpu = run_argv({**spec, "gpus": 0}, "/c", has_nvidia=True)
    assert "--gpus" not in no_gpu
    assert "--gpus" not in run_argv(spec, "/c", has_nvidia=False)
    assert run_argv({**spec, "commands": []}, "/c", has_nvidia=False)[-1] == "img:1"


def test_container_workdir_and_ports() -> None:
    assert container_workdir(None) == "/workflow"
    assert container_workdir("a/b/") == "/workflow/a/b"
    assert container_workdir("/opt/app") == "/opt/app"
    text = "8000/tcp -> 127.0.0.1:49153\n8000/tcp -> [::1]:49154\n22/tcp -> 0.0.0.0:32768\n"
    assert parse_docker_port(text) == {"8000": 49153, "22": 32768}
