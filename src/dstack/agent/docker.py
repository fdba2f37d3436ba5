"""The docker runtime: building the `docker run` command line and reading its ports."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

from dstack.agent import volumes
from dstack.agent.gpus import docker_gpus_args

CODE_MOUNT = "/workflow"


def container_name(job_id: str) -> str:
    return f"dstack-{job_id}"


def container_workdir(working_dir: str | None) -> str:
    if not working_dir:
        return CODE_MOUNT
    if working_dir.startswith("/"):
        return working_dir
    return f"{CODE_MOUNT}/{working_dir.strip('/')}".rstrip("/")


def run_argv(
    spec: dict[str, Any],
    code_dir: str,
    has_nvidia: bool,
    assigned_gpus: dict[str, Any] | None = None,
    binds: list[dict[str, Any]] | None = None,
    mounts: list[str] | None = None,
) -> list[str]:
    """`docker run` attached (no -d), so its exit code is the container's.

    Env values are passed as bare `-e NAME` and taken from the docker client's own
    environment, so secrets never appear on a command line that `ps` shows. `binds`: the
    job's volumes as `volumes.prepare` found them on the host.
    """
    job_id = spec["id"]
    argv = [
        "docker",
        "run",
        "--name",
        container_name(job_id),
        "--label",
        f"dstack.job={job_id}",
        "--init",
    ]
    if spec.get("user"):
        argv += ["--user", spec["user"]]
    if spec.get("privileged"):
        argv.append("--privileged")
    if spec.get("shm_size_mib"):
        argv += ["--shm-size", f"{spec['shm_size_mib']}m"]
    for port in spec.get("ports") or []:
        argv += ["-p", f"127.0.0.1::{port}"]
    argv += ["-v", f"{code_dir}:{CODE_MOUNT}"]
    argv += volumes.docker_args(binds or [])
    argv += mounts or []  # `files`, as `-v` arguments (files.docker_mounts)
    for key in sorted(spec.get("env") or {}):
        argv += ["-e", key]
    argv += ["-w", container_workdir(spec.get("working_dir"))]
    argv += docker_gpus_args(int(spec.get("gpus", 0)), has_nvidia, assigned_gpus)
    commands = spec.get("commands") or []
    if commands:
        argv += ["--entrypoint", commands[0], spec["image"], *commands[1:]]
    else:
        argv.append(spec["image"])
    return argv


def parse_docker_port(text: str) -> dict[str, int]:
    """'8000/tcp -> 127.0.0.1:49153' lines -> {'8000': 49153}."""
    ports: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*(\d+)/\w+\s*->\s*.*:(\d+)\s*$", line)
        if match and match.group(1) not in ports:
            ports[match.group(1)] = int(match.group(2))
    return ports


def docker_cmd(
    args: list[str], timeout: float | None = 30.0
) -> subprocess.CompletedProcess[str] | None:
    if shutil.which("docker") is None:
        return None
    try:
        return subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None


def remove_container(job_id: str) -> None:
    docker_cmd(["rm", "-f", container_name(job_id)])
