"""The Slurm cluster fixture: a fresh cluster per test (start takes about a second, so no
test inherits another's jobs, drained nodes or killed daemons)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import SlurmCluster, available


@pytest.fixture
def slurm_cluster(tmp_path: Path) -> Iterator[SlurmCluster]:
    reason = available()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path / "slurm")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm_docker_cluster(tmp_path: Path) -> Iterator[SlurmCluster]:
    """A cluster whose login user may use this machine's Docker engine (its config entry says
    `docker: true`)."""
    reason = available()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path / "slurm", docker=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
