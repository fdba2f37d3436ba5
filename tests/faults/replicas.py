"""Several real `dstack server` processes on one database, for tests/faults/test_replicas.py.

The replicas share one server directory (HOME): its encryption key, the local backend's agent
home and the job logs are files there (docs/replicas.md). Each replica has its own port and
log file; the CLI reaches a chosen replica through DSTACK_SERVER_URL / DSTACK_TOKEN.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from e2e import pg
from e2e.harness import Server, wait_until

TOKEN = "replicas-admin-token-" + uuid.uuid4().hex


@dataclass
class Replica(Server):
    name: str = "r0"
    database_url: str = ""
    lease_seconds: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.extra_env = {
            "DSTACK_DATABASE_URL": self.database_url,
            "DSTACK_SERVER_ADMIN_TOKEN": TOKEN,
            "DSTACK_SERVER_LEASE_SECONDS": str(self.lease_seconds),
            "DSTACK_SERVER_URL": self.url,
            "DSTACK_TOKEN": TOKEN,
            "DSTACK_PROJECT": "main",
            **self.extra,
        }

    @property
    def token(self) -> str:
        return TOKEN

    @property
    def log_file(self) -> Path:
        return self.home / f"server-{self.name}.log"

    def spawn(self) -> None:
        """Start the process without waiting for it (replicas start together)."""
        log = open(self.log_file, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dstack.cli.main", "server", "--port", str(self.port)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_up(self, timeout: float = 60) -> None:
        wait_until(self._healthy, timeout=timeout, what=f"replica {self.name} on {self.url}")

    def start(self) -> None:
        self.spawn()
        self.wait_up()

    def log_tail(self) -> str:
        try:
            return f"[{self.name}] " + self.log_file.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def start_together(replicas: list[Replica]) -> None:
    for r in replicas:
        r.spawn()
    for r in replicas:
        r.wait_up()


def stop_all(replicas: list[Replica]) -> None:
    """Stop every replica, then the local agent they share, and leftover jobs."""
    for r in replicas:
        with contextlib.suppress(Exception):
            r.stop()
    pid = replicas[0].agent_pid()
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    replicas[0]._kill_leftover_jobs()


class DB:
    """Direct reads of the shared database (what the replicas agree on), from the test. Its
    event loop runs in a thread of its own, so any test thread may query."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.engine = create_async_engine(url)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def rows(self, sql: str, **params: Any) -> list[tuple]:
        async def go() -> list[tuple]:
            async with self.engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]

        return self._call(go())

    def one(self, sql: str, **params: Any) -> Any:
        return self.rows(sql, **params)[0][0]

    def close(self) -> None:
        self._call(self.engine.dispose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def fresh_postgres(cluster: pg.Cluster) -> str:
    name = f"rep_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = create_async_engine(cluster.url(), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()

    asyncio.run(create())
    return cluster.url(name)


def owner_pid(lock_owner: str | None) -> int | None:
    """The server process holding a lease: owners are `<kind>:<pid>-<random>`."""
    if not lock_owner or ":" not in lock_owner:
        return None
    return int(lock_owner.split(":", 1)[1].split("-", 1)[0])
