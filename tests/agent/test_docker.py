"""The docker runtime against a real Docker engine, with a tiny locally built image.

Images cannot be pulled here, so the image is a busybox rootfs made with `docker
import`. Skipped when no engine answers `docker info` or no static busybox exists.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from .helpers import AgentProcess, wait_for
from .test_api import make_tar

pytestmark = pytest.mark.docker

IMAGE = "dstack-test-busybox:latest"  # built by the busybox_image fixture (tests/conftest.py)

@pytest.fixture(scope="module")
def image(busybox_image: str) -> str:
    """The small local image every docker test uses (built in tests/conftest.py)."""
    return busybox_image


@pytest.fixture
def dagent(agent: AgentProcess, image: str) -> Iterator[AgentProcess]:
    yield agent
    for job in (agent.home / "jobs").iterdir():
        subprocess.run(["docker", "rm", "-f", f"dstack-{job.name}"], capture_output=True)


def _docker_job(
    agent: AgentProcess, job_id: str, script: str, code: bytes = b"", **spec: object
) -> None:
    agent.submit(job_id, ["/bin/sh", "-c", script], code, runtime="docker", image=IMAGE, **spec)


def test_docker_job_code_env_and_exit_code(dagent: AgentProcess) -> None:
    _docker_job(
        dagent,
        "d1",
        'pwd; cat hello.txt; echo "$MULTI"; echo err >&2; exit 3',
        make_tar({"sub/hello.txt": "hi\n"}),
        working_dir="sub",
        env={"MULTI": "a\nb"},
        shm_size_mib=64,
    )
    final = dagent.wait_finished("d1", timeout=15)
    assert (final["status"], final["exit_status"]) == ("failed", 3)
    assert final["termination_reason"] == "container_exited_with_error"
    assert final["runtime"] == "docker"
    assert dagent.output("d1", "stdout") == "/workflow/sub\nhi\na\nb\n"
    assert dagent.output("d1", "stderr") == "err\n"


def test_docker_ports_and_graceful_stop(dagent: AgentProcess) -> None:
    script = "echo serving; exec httpd -f -p 8000 -h /workflow"
    _docker_job(dagent, "web", script, make_tar({"index.html": "hello web\n"}), ports=[8000])
    state = wait_for(lambda: dagent.job("web")["ports"] or None, timeout=15)
    host_port = state["8000"]

    def fetch() -> str | None:
        try:
            return httpx.get(f"http://127.0.0.1:{host_port}/index.html", timeout=2).text
        except httpx.HTTPError:
            return None

    assert wait_for(fetch, timeout=10) == "hello web\n"
    dagent.ok("POST", "/api/jobs/web/stop", {"abort": False, "reason": None})
    final = dagent.wait_finished("web", timeout=15)
    assert (final["status"], final["termination_reason"]) == ("terminated", "terminated_by_server")


def test_docker_abort_and_remove(dagent: AgentProcess) -> None:
    _docker_job(dagent, "stuck", "trap '' TERM; echo started; while true; do sleep 1; done")
    dagent.wait_output("stuck", "started", timeout=15)
    dagent.ok("POST", "/api/jobs/stuck/stop", {"abort": True, "reason": "aborted_by_user"})
    final = dagent.wait_finished("stuck", timeout=10)
    assert (final["status"], final["termination_reason"]) == ("terminated", "aborted_by_user")
    inspect = ["docker", "container", "inspect", "dstack-stuck"]
    assert subprocess.run(inspect, capture_output=True).returncode == 0
    dagent.ok("POST", "/api/jobs/stuck/remove")
    assert subprocess.run(inspect, capture_output=True).returncode != 0


def test_docker_missing_image_is_creating_container_error(dagent: AgentProcess) -> None:
    dagent.submit("noimg", ["true"], runtime="docker", image="dstack-test-missing:nope")
    final = dagent.wait_finished("noimg", timeout=30)
    assert (final["status"], final["termination_reason"]) == ("failed", "creating_container_error")
