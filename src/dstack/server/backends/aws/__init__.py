"""The AWS backend (EC2), built from a project's `config.yml` entry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dstack.models.backends import AWSBackendConfig
from dstack.server.backends.base import Compute


def create_aws(
    project: str, config: AWSBackendConfig, data_dir: Path, decrypt: Callable[[str], str]
) -> Compute:
    from dstack.server.backends.aws.compute import AWSBackend

    return AWSBackend(project, config, data_dir, decrypt)
