"""A run that sets `image` runs in a container on the local instance (skipped without Docker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import Server, write_config

pytestmark = pytest.mark.docker


def test_task_with_image_runs_in_a_container(
    server: Server, project_dir: Path, busybox_image: str
) -> None:
    write_config(
        project_dir,
        "docker.dstack.yml",
        f"type: task\nname: in-docker\nimage: {busybox_image}\n"
        "commands:\n  - echo inside=$DSTACK_RUN_NAME\n  - cat data.txt\n  - pwd\n"
        "env:\n  - GREETING=hi-from-env\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n",
    )
    r = server.cli("apply", "-f", "docker.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "inside=in-docker" in r.stdout
    assert "payload-from-the-working-dir" in r.stdout  # code mounted in the container
    assert "/workflow" in r.stdout  # the repo dir inside the container
    run = server.run("in-docker")
    assert run["status"] == "done"


def test_failing_container_reports_its_exit_code(
    server: Server, project_dir: Path, busybox_image: str
) -> None:
    write_config(
        project_dir,
        "dfail.dstack.yml",
        f"type: task\nname: docker-fails\nimage: {busybox_image}\ncommands:\n  - exit 7\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n",
    )
    r = server.cli("apply", "-f", "dfail.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode == 1
    sub = server.run("docker-fails")["jobs"][0]["job_submissions"][-1]
    assert sub["exit_status"] == 7 and sub["status_message"] == "exited (7)"
