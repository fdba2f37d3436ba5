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
    if spec.get("shm_size_mib"):
        argv += ["--shm-size", f"{spec['shm_size_mib']}m"]
    for port in spec.get("ports") or []:
        argv += ["-p", f"127.0.0.1::{port}"]
    argv += ["-v", f"{code_dir}:{CODE_MOUNT}"]
    argv += volumes.docker_args(binds or [])
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


def registry_of(image: str) -> str | None:
    """The registry host an image is pulled from; None for Docker Hub (`docker login`'s
    default). `ghcr.io/org/app:1` -> `ghcr.io`, `localhost:5000/app` -> `localhost:5000`."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def login(
    docker_bin: str, config_dir: str, image: str, auth: dict[str, str], env: dict[str, str]
) -> str | None:
    """`docker login` into a config directory of the job's own (mode 0700), the password on
    stdin (never on a command line). Returns an error text without the password, or None."""
    registry = registry_of(image)
    argv = [docker_bin, "--config", config_dir, "login", "-u", auth["username"]]
    argv += ["--password-stdin"] + ([registry] if registry else [])
    try:
        done = subprocess.run(
            argv,
            input=auth["password"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"docker login failed: {e.__class__.__name__}"
    if done.returncode == 0:
        return None
    why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return f"docker login to {registry or 'Docker Hub'} as {auth['username']} failed: {why[0]}"
