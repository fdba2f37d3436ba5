"""SSH and port forwarding into a docker-runtime job: the job's sshd runs on the host and each
session is a `docker exec` into the container (a busybox image has no sshd of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import Server, free_port, wait_until, write_config
from .test_ssh import RESOURCES, Background, _get, ssh, stop

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def test_docker_job_ssh_and_forwarded_port(
    server: Server, project_dir: Path, busybox_image: str
) -> None:
    app, local = free_port(), free_port()
    write_config(
        project_dir,
        "dweb.dstack.yml",
        f"type: task\nname: docker-web\nimage: {busybox_image}\n"
        f"commands:\n  - echo docker-hello\n  - httpd -f -p {app} -h /workflow\n"
        f"ports:\n  - {local}:{app}\nenv:\n  - GREETING=from-container\n" + RESOURCES,
    )
    r = server.cli("apply", "-f", "dweb.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    server.wait_status("docker-web", "running", timeout=90)
    attach = Background(server, "attach", "docker-web", "-y", cwd=project_dir)
    try:
        out = attach.wait_for("Press Ctrl+C to detach...", timeout=60)
        assert f"localhost:{local} -> {app}" in out
        r = wait_until(
            lambda: _get(f"http://localhost:{local}/data.txt"), timeout=30,
            what="the container's port on localhost",
        )  # fmt: skip
        assert r.text == "payload-from-the-working-dir\n"
        r = ssh(server, "docker-web", "pwd; cat data.txt; echo $GREETING; uname -n")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[:3] == ["/workflow", "payload-from-the-working-dir", "from-container"]
        assert attach.interrupt() == 0
    finally:
        attach.kill()
        stop(server, "docker-web")
