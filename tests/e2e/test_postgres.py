"""The same walking skeleton on PostgreSQL (DSTACK_DATABASE_URL): migrations, the claim path
with SKIP LOCKED, and a run from apply to done, surviving a server restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import pg
from .harness import Server, write_config
from .test_runs import task


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg.Cluster]:
    yield from pg.private_cluster("dstack-test-pg-")


def test_runs_on_postgres_and_survive_a_restart(cluster: pg.Cluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    srv = Server(home=home, extra_env={"DSTACK_DATABASE_URL": cluster.url()})
    srv.start()
    try:
        project = tmp_path / "proj"
        write_config(project, "t.dstack.yml", task("on-postgres", "echo from-postgres"))
        r = srv.cli("apply", "-f", "t.dstack.yml", "-y", cwd=project)
        assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
        assert "from-postgres" in r.stdout
        assert not (srv.server_dir / "data" / "sqlite.db").exists()  # state is in Postgres
        srv.stop()
        srv.start()  # migrations are a no-op the second time; the data is still there
        assert srv.run("on-postgres")["status"] == "done"
        write_config(project, "l.dstack.yml", task("pg-detached", "sleep 60"))
        assert srv.cli("apply", "-f", "l.dstack.yml", "-y", "-d", cwd=project).returncode == 0
        srv.wait_status("pg-detached", "running")
        assert srv.cli("stop", "pg-detached", "-y", "-x").returncode == 0
        srv.wait_status("pg-detached", "terminated")
    finally:
        srv.cleanup()
