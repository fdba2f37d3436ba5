"""Servers for the fault tests: real `dstack server` processes on SQLite and, where the fault
concerns the database, on a private PostgreSQL cluster (tests/e2e/pg.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import pg
from e2e.harness import Server


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    yield from pg.private_cluster("dstack-faults-pg-")


def create_database(cluster: pg.Cluster, name: str) -> None:
    psql = pg._bin("psql") or "psql"
    pg._as_postgres(
        [
            psql,
            "-h",
            "127.0.0.1",
            "-p",
            cluster.port,
            "-U",
            "postgres",
            "-c",
            f"CREATE DATABASE {name}",
        ]
    )


def start_server(home: Path, env: dict[str, str] | None = None) -> Server:
    home.mkdir(parents=True, exist_ok=True)
    srv = Server(home=home, extra_env=dict(env or {}))
    srv.start()
    return srv


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """One server per module and database: the same assertions hold on both."""
    env: dict[str, str] = {}
    if request.param == "postgres":
        cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
        db = f"faults_{abs(hash(request.node.nodeid)) % 10**8}"
        create_database(cluster, db)
        env["DSTACK_DATABASE_URL"] = cluster.url(db)
    srv = start_server(tmp_path_factory.mktemp(f"home-{request.param}"), env)
    srv.db = request.param  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("home"))
    try:
        yield srv
    finally:
        srv.cleanup()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def task_spec(name: str | None, command: str = "sleep 30", **conf: object) -> dict:
    return {
        "run_name": name,
        "configuration": {"type": "task", "name": name, "commands": [command], **conf},
    }
