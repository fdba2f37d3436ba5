"""A private PostgreSQL cluster for tests: its own data directory, a free loopback port, trust
auth, owned by the `postgres` system user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .harness import free_port, wait_until


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def unavailable() -> str | None:
    if not (_bin("initdb") and _bin("pg_ctl")):
        return "PostgreSQL server binaries not installed (apt-get install postgresql)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` system user to run the cluster as"
    return None


@dataclass
class Cluster:
    data: Path
    port: int

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        _as_postgres([_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"], check=False)


def _as_postgres(argv: list, check: bool = True) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    user = pwd.getpwnam("postgres")

    def demote() -> None:
        if os.getuid() == 0:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    return subprocess.run(
        [str(a) for a in argv],
        preexec_fn=demote,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def start(root: Path) -> Cluster:
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    user = pwd.getpwnam("postgres")
    os.chown(root, user.pw_uid, user.pw_gid)
    _as_postgres([_bin("initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"])
    port = free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    _as_postgres([_bin("pg_ctl"), "-D", data, "-o", opts, "-l", root / "pg.log", "-w", "start"])
    cluster = Cluster(data, port)
    wait_until(lambda: (root / f".s.PGSQL.{port}").exists(), timeout=30, what="postgres socket")
    return cluster


def private_cluster(prefix: str) -> Iterator[Cluster]:
    """Body of a test fixture (`yield from pg.private_cluster("...")`): skips with the reason
    when no cluster can start here, else one cluster, removed afterwards. Not under pytest's
    root-only temp dir: the `postgres` user must reach the data directory."""
    import pytest

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    if os.getuid() != 0:
        pytest.skip("starting a private PostgreSQL cluster as another user needs root")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        cluster = start(root)
        yield cluster
        cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
