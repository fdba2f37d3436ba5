"""The Slurm backend: jobs as Slurm batch jobs on a project's clusters, driven over SSH on
each cluster's login node. Built from a project's `config.yml` entry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dstack.models.backends import SlurmBackendConfig
from dstack.server.backends.base import Compute


def create_slurm(
    project: str, config: SlurmBackendConfig, data_dir: Path, decrypt: Callable[[str], str]
) -> Compute:
    """The private keys are read here, at each start: an unreadable `private_key.path` is this
    backend's start error (the server starts without it and says why)."""
    from dstack.server.backends.slurm.compute import SlurmBackend

    return SlurmBackend(project, config)
