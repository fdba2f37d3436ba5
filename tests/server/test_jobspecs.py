"""From a run configuration to job specs: commands, nodes, replicas, defaults."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from dstack.models.configurations import parse_configuration
from dstack.server.services.jobspecs import (
    DEFAULT_STOP_DURATION,
    OFF_STOP_DURATION,
    build_job_specs,
    join_commands,
)


def specs(conf: dict[str, Any], name: str = "my-run", code: str | None = "abc"):
    return build_job_specs(name, parse_configuration(conf), code)


@pytest.mark.parametrize(
    ("commands", "joined"),
    [
        ([], ""),
        (["echo hi"], "echo hi"),
        (["a", "b", "c"], "a && b && c"),
        (["  a  ", "b"], "a && b"),
        (["python -m http.server &", "sleep 1"], "{ python -m http.server & } && sleep 1"),
        (["a && b", "c || d"], "a && b && c || d"),
    ],
)
def test_join_commands(commands: list[str], joined: str) -> None:
    assert join_commands(commands) == joined


@pytest.mark.skipif(shutil.which("sh") is None, reason="no /bin/sh")
def test_backgrounded_command_runs_in_a_shell() -> None:
    script = join_commands(["sleep 0.01 &", "echo after", "wait", "echo done"])
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=5)
    assert (out.returncode, out.stdout) == (0, "after\ndone\n")


def test_task_one_job_per_node() -> None:
    jobs = specs({"type": "task", "commands": ["echo hi", "echo bye"], "nodes": 3})
    assert [(j.replica_num, j.job_num, j.job_name) for j in jobs] == [
        (0, 0, "my-run-0-0"),
        (0, 1, "my-run-1-0"),
        (0, 2, "my-run-2-0"),
    ]
    assert {j.jobs_per_replica for j in jobs} == {3}
    assert all(j.requirements["multinode"] is True for j in jobs)
    assert jobs[0].commands == ["/bin/bash", "-c", "echo hi && echo bye"]
    assert jobs[0].repo_code_hash == "abc"
    assert jobs[0].repo_dir == "/workflow"


def test_single_node_task() -> None:
    (job,) = specs({"type": "task", "commands": ["x"]})
    assert (job.jobs_per_replica, job.requirements["multinode"]) == (1, False)
    assert job.service_port is None


def test_service_one_job_per_replica() -> None:
    jobs = specs({"type": "service", "port": 8000, "commands": ["serve"], "replicas": 2})
    assert [(j.replica_num, j.job_num, j.job_name) for j in jobs] == [
        (0, 0, "my-run-0-0"),
        (1, 0, "my-run-0-1"),
    ]
    assert {j.service_port for j in jobs} == {8000}


def test_service_port_mapping_uses_the_container_port() -> None:
    (job,) = specs({"type": "service", "port": "8000:80", "commands": ["serve"]})
    assert job.service_port == 80


def test_defaults() -> None:
    (job,) = specs({"type": "task", "commands": ["x"]}, code=None)
    assert job.stop_duration == DEFAULT_STOP_DURATION == 300
    assert job.max_duration is None
    assert job.retry is None
    assert job.env == {}
    assert job.image_name is None
    assert job.privileged is False
    assert job.repo_code_hash is None
    assert job.requirements["spot"] == "on-demand"
    assert job.requirements["max_price"] is None
    # no image and GPUs allowed: the GPU vendor defaults to nvidia
    assert job.requirements["resources"]["gpu"]["vendor"] == "nvidia"


def test_time_policies() -> None:
    (job,) = specs({"type": "task", "commands": ["x"], "max_duration": "2h", "stop_duration": 30})
    assert (job.max_duration, job.stop_duration) == (7200, 30)
    (job,) = specs(
        {"type": "task", "commands": ["x"], "max_duration": "off", "stop_duration": "off"}
    )
    assert (job.max_duration, job.stop_duration) == (None, OFF_STOP_DURATION)


def test_retry_true_expands() -> None:
    (job,) = specs({"type": "task", "commands": ["x"], "retry": True})
    assert job.retry == {"on_events": ["no-capacity", "interruption", "error"], "duration": 3600}


def test_profile_requirements() -> None:
    conf = {
        "type": "task",
        "commands": ["x"],
        "spot_policy": "auto",
        "max_price": 1.5,
        "resources": {"gpu": "A100:2", "memory": "16GB.."},
    }
    (job,) = specs(conf)
    r = job.requirements
    assert (r["spot"], r["max_price"]) == ("auto", 1.5)
    assert r["resources"]["gpu"]["name"] == ["A100"]
    assert r["resources"]["gpu"]["count"] == {"min": 2, "max": 2}
    assert r["resources"]["memory"] == {"min": 16.0, "max": None}
    # a GPU name is given: no vendor is guessed
    assert r["resources"]["gpu"]["vendor"] is None


@pytest.mark.parametrize(
    ("extra", "vendor"),
    [
        ({"image": "ubuntu"}, None),
        ({"resources": {"gpu": 0}}, None),
        ({"resources": {"gpu": "amd:1"}}, "amd"),
    ],
)
def test_gpu_vendor_default(extra: dict[str, Any], vendor: str | None) -> None:
    (job,) = specs({"type": "task", "commands": ["x"], **extra})
    assert job.requirements["resources"]["gpu"]["vendor"] == vendor


def test_env_drops_unset_values() -> None:
    (job,) = specs({"type": "task", "commands": ["x"], "env": ["A=1", "B"]})
    assert job.env == {"A": "1"}


@pytest.mark.parametrize(
    ("extra", "shell"),
    [
        ({}, "/bin/bash"),
        ({"image": "ubuntu"}, "/bin/sh"),
        ({"shell": "sh"}, "/bin/sh"),
        ({"shell": "bash", "image": "ubuntu"}, "/bin/bash"),
        ({"shell": "/usr/bin/zsh"}, "/usr/bin/zsh"),
    ],
)
def test_shell(extra: dict[str, Any], shell: str) -> None:
    (job,) = specs({"type": "task", "commands": ["x"], **extra})
    assert job.commands == [shell, "-c", "x"]


def test_image_without_commands_runs_its_entrypoint() -> None:
    (job,) = specs({"type": "task", "image": "ubuntu"})
    assert (job.commands, job.image_name) == ([], "ubuntu")


def test_ports_become_app_specs() -> None:
    (job,) = specs({"type": "task", "commands": ["x"], "ports": [8080, "9000:9001"]})
    assert job.app_specs == [
        {"port": 8080, "map_to_port": 8080, "app_name": "app"},
        {"port": 9001, "map_to_port": 9000, "app_name": "app"},
    ]


def test_dev_environment_commands() -> None:
    conf = {
        "type": "dev-environment",
        "ide": "vscode",
        "working_dir": "/workspace",
        "init": ["pip install x"],
    }
    (job,) = specs(conf)
    assert job.commands == [
        "/bin/bash",
        "-c",
        "pip install x"
        " && echo 'To open in VS Code, use link below:'"
        " && echo '  vscode://vscode-remote/ssh-remote+my-run'\"${DSTACK_WORKING_DIR:-/workspace}\""
        " && echo 'To connect via SSH, use: `ssh my-run`'"
        " && echo 'To exit, press Ctrl+C.'"
        " && tail -f /dev/null",
    ]


def test_dev_environment_zed_and_no_ide() -> None:
    (zed,) = specs({"type": "dev-environment", "ide": "zed", "working_dir": "/w"})
    assert "echo '  zed://ssh/my-run'\"${DSTACK_WORKING_DIR:-/w}\"" in zed.commands[2]
    (plain,) = specs({"type": "dev-environment"})
    assert plain.commands[2] == (
        "echo 'To connect via SSH, use: `ssh my-run`' && echo 'To exit, press Ctrl+C.'"
        " && tail -f /dev/null"
    )


def test_dev_environment_link_without_working_dir_has_an_absolute_path() -> None:
    (job,) = specs({"type": "dev-environment", "ide": "vscode"})
    assert 'ssh-remote+my-run\'"${DSTACK_WORKING_DIR:-/workflow}"' in job.commands[2]
