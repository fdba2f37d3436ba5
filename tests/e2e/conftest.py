from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Server
from .services_util import service_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    srv = Server(home=home)
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A small working directory to apply from (the CLI uploads it as the job's code)."""
    d = tmp_path / "proj"
    d.mkdir()
    (d / "data.txt").write_text("payload-from-the-working-dir\n")
    return d


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per service test module (tests/e2e/ssh overrides it with its own)."""
    server = service_server(tmp_path_factory.mktemp("svc-home"))
    try:
        yield server
    finally:
        server.cleanup()
