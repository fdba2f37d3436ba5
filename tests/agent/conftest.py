"""Fixtures of the agent tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import AgentProcess


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    process = AgentProcess(tmp_path / "home").start()
    try:
        yield process
    finally:
        process.cleanup_jobs()
        process.kill()
