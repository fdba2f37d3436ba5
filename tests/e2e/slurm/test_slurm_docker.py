"""Jobs with `image` on Slurm: a cluster configured `docker: true` runs them in containers on
its compute nodes (the agent there runs `docker run`); one without it refuses them in the plan,
naming the cluster and the two ways out. The harness's nodes share this machine's Docker
engine (its socket is a file on the shared filesystem); the image is built locally
(tests/conftest.py `busybox_image`), nothing is pulled."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..harness import Server, wait_until, write_config
from .cluster import SlurmCluster, available
from .test_slurm_backend import CLUSTER_FLEET, FLEET, squeue, task

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(available() is not None, reason=str(available()))]


def _server(tmp_path: Path, c: SlurmCluster) -> tuple[Server, Path]:
    srv = Server(
        home=tmp_path / "home",
        extra_env={
            "DSTACK_SERVER_LOCAL_BACKEND": "0",
            "DSTACK_SERVER_INSTANCE_CHECK_SECONDS": "1",
            "DSTACK_SERVER_UNREACHABLE_GRACE": "60",
        },
    )
    srv.home.mkdir()
    srv.server_dir.mkdir(parents=True)
    config = {"projects": [{"name": "main", "backends": [c.backend_config()]}]}
    (srv.server_dir / "config.yml").write_text(yaml.safe_dump(config))
    srv.start()
    proj = tmp_path / "proj"
    proj.mkdir()
    write_config(proj, "fleet.dstack.yml", FLEET)
    r = srv.cli("apply", "-f", "fleet.dstack.yml", "-y", cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    return srv, proj


@pytest.fixture
def docker_server(tmp_path: Path, slurm_docker_cluster: SlurmCluster) -> Iterator[Any]:
    srv, proj = _server(tmp_path, slurm_docker_cluster)
    try:
        yield srv, proj, slurm_docker_cluster
    finally:
        srv.cleanup()


@pytest.fixture
def plain_server(tmp_path: Path, slurm_cluster: SlurmCluster) -> Iterator[Any]:
    srv, proj = _server(tmp_path, slurm_cluster)
    try:
        yield srv, proj, slurm_cluster
    finally:
        srv.cleanup()


def image_task(name: str, image: str, command: str) -> str:
    return task(name, command, f"image: {image}\n")


def test_a_task_with_an_image_runs_in_docker_on_a_node(
    docker_server: Any, busybox_image: str
) -> None:
    srv, proj, c = docker_server
    # /workflow (the job's code, mounted) exists only inside the container, not on the nodes.
    command = "test -d /workflow && echo in-container-at-$PWD"
    write_config(proj, "img.dstack.yml", image_task("in-image", busybox_image, command))
    r = srv.cli("apply", "-f", "img.dstack.yml", "-y", cwd=proj, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out + srv.log_tail()
    assert "in-container-at-/workflow" in out, out
    r = srv.cli("logs", "in-image", cwd=proj)
    assert "in-container-at-/workflow" in r.stdout, r.stdout + r.stderr
    wait_until(lambda: not squeue(c), timeout=30, what="the Slurm job to end")


def test_a_task_with_an_image_is_refused_where_the_cluster_has_no_docker(
    plain_server: Any, busybox_image: str
) -> None:
    srv, proj, c = plain_server
    write_config(proj, "img.dstack.yml", image_task("no-docker", busybox_image, "true"))
    r = srv.cli("apply", "-f", "img.dstack.yml", "-y", cwd=proj, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "No matching instance offers" in out, out
    assert "Slurm cluster hpc runs jobs with the process runtime only" in out, out
    assert "set `docker: true`" in out, out
    assert not squeue(c)  # nothing reached Slurm


def _containers() -> list[str]:
    r = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=dstack.job"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stdout.split()


def test_stop_and_a_scancel_from_outside_end_the_container(
    docker_server: Any, busybox_image: str
) -> None:
    """The container is the Docker engine's child, not the Slurm job's: `dstack stop` (the
    agent stops it) and a `scancel` from outside (SIGTERM to the job's processes, which the
    attached `docker run` passes on to the container) must both end it, and the batch script
    removes the containers of its agent's jobs when the agent ends (none is left, even
    exited)."""
    srv, proj, c = docker_server
    before = set(_containers())
    for name in ("stopped", "cancelled"):
        write_config(proj, f"{name}.dstack.yml", image_task(name, busybox_image, "sleep 600"))
        r = srv.cli("apply", "-f", f"{name}.dstack.yml", "-y", "-d", cwd=proj)
        assert r.returncode == 0, r.stdout + r.stderr
        srv.wait_status(name, "running", timeout=90)
    wait_until(lambda: len(set(_containers()) - before) == 2, timeout=30, what="two containers")
    r = srv.cli("stop", "stopped", "-y", cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr
    srv.wait_status("stopped", "terminated", "stopped", timeout=60)
    job = [j for j in squeue(c) if "RUNNING" in j]
    assert job, squeue(c)
    r = c.ssh("scancel $(squeue -h -o '%i' | tr '\\n' ' ')")
    assert r.returncode == 0, r.stdout + r.stderr
    srv.wait_status("cancelled", "failed", timeout=60)
    wait_until(
        lambda: not set(_containers()) - before, timeout=60, what="the containers to be removed"
    )


def test_a_two_node_task_with_an_image_runs_in_one_allocation(
    docker_server: Any, busybox_image: str
) -> None:
    """The fleet allocation's batch script (one agent per node under `srun`) runs images
    too: each rank in a container, with the allocation's variables."""
    srv, proj, c = docker_server
    write_config(proj, "pair.dstack.yml", CLUSTER_FLEET)
    r = srv.cli("apply", "-f", "pair.dstack.yml", "-y", cwd=proj, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    command = "test -d /workflow && echo rank-$DSTACK_NODE_RANK-of-$DSTACK_NODES_NUM-in-container"
    text = task("ranks", command, f"nodes: 2\nfleets: [pair]\nimage: {busybox_image}\n")
    write_config(proj, "r.dstack.yml", text.replace("cpu: 1..", "cpu: 2.."))
    r = srv.cli("apply", "-f", "r.dstack.yml", "-y", cwd=proj, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    assert "rank-0-of-2-in-container" in r.stdout, r.stdout
    run = srv.wait_status("ranks", "done", timeout=30)
    subs = [j["job_submissions"][-1] for j in run["jobs"]]
    assert len(subs) == 2 and all(s["status"] == "done" for s in subs), subs
    (job,) = squeue(c)
    assert job.startswith("dstackg-"), job
