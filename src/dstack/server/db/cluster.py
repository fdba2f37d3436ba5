"""What several server processes on one database must agree on (docs/replicas.md).

- `startup_lock`: migrations and the first-start bootstrap run one server at a time. Two
  servers starting together on a fresh Postgres both ran Alembic and the second died creating a
  table that the first had just created; on one SQLite file both bootstrapped. On Postgres a
  session-level `pg_advisory_lock` on a connection of its own (released when that connection
  ends, so a killed server never leaves it held); on SQLite an exclusive `flock` on a file
  beside the database (SQLite lives on one machine, and Alembic runs on its own connection, so
  a lock outside the database is the one that also covers the migration).
- `ClusterLease`: a task that one replica runs for all (the probes, the inventory sweep),
  claimed like a reconciler's row: a row in `server_leases` with an owner and an expiry; a
  crashed holder's lease runs out and another replica takes the task over.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from sqlalchemy import or_, text, update
from sqlalchemy.exc import IntegrityError

from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.session import Database, sqlite_file

log = logging.getLogger(__name__)

# Any constant both servers agree on: "dstack" in ASCII, as a bigint.
STARTUP_LOCK_KEY = 0x647374_61636B


@asynccontextmanager
async def startup_lock(db: Database) -> AsyncIterator[None]:
    """Hold the cluster-wide startup lock for the body (waiting for it as long as it takes:
    the holder is migrating or bootstrapping and will finish)."""
    if not db.is_sqlite:
        async with db.engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": STARTUP_LOCK_KEY})
            await conn.commit()
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": STARTUP_LOCK_KEY})
                await conn.commit()
        return
    path = sqlite_file(db.url)
    if path is None:  # in memory: one process by definition
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.startup-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


async def take_lease(db: Database, name: str, owner: str, until: datetime, now: datetime) -> bool:
    """Take or extend the lease `name` until `until` if it is free, expired or ours. One
    conditional UPDATE (or the INSERT of the first row), so two replicas never both win."""
    lease = t.ServerLease
    async with db.session() as s:
        res = await s.execute(
            update(lease)
            .where(
                lease.name == name,
                or_(lease.owner == owner, lease.expires_at.is_(None), lease.expires_at < now),
            )
            .values(owner=owner, expires_at=until)
        )
        if res.rowcount == 1:
            await s.commit()
            return True
        if await s.get(lease, name) is not None:
            await s.rollback()
            return False
        s.add(lease(name=name, owner=owner, expires_at=until))
        try:
            await s.commit()
        except IntegrityError:  # another replica inserted it first
            await s.rollback()
            return False
        return True


async def drop_lease(db: Database, name: str, owner: str) -> None:
    """Give the lease back (a clean stop): another replica takes the task over at once."""
    lease = t.ServerLease
    async with db.session() as s:
        await s.execute(
            update(lease)
            .where(lease.name == name, lease.owner == owner)
            .values(owner=None, expires_at=None)
        )
        await s.commit()


class ClusterLease:
    """Whether this replica runs the singleton task `name` now.

    `held()` is cheap to call often (every probe tick): the holder writes the database only
    when a third of its lease is used up, a non-holder looks again every third of a lease. So
    a holder that dies is replaced within about one lease period and a third. A holder that
    cannot reach the database stops believing it holds the lease before the lease it wrote
    expires, so two replicas never run the task at once (clocks agreeing)."""

    def __init__(
        self,
        db: Database,
        name: str,
        owner: str,
        seconds: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.name = name
        self.owner = owner
        self.seconds = seconds
        self.clock = clock
        self._until: datetime | None = None  # the expiry we wrote, while we hold it
        self._next_try: datetime | None = None  # a non-holder's next look

    async def held(self) -> bool:
        now = self.clock()
        period = timedelta(seconds=self.seconds)
        if self._until is not None and now < self._until - period * 2 / 3:
            return True
        if self._until is None and self._next_try is not None and now < self._next_try:
            return False
        until = now + period
        try:
            won = await take_lease(self.db, self.name, self.owner, until, now)
        except Exception:  # noqa: BLE001 - the database is down: we hold nothing we can prove
            log.warning("cluster lease %s: the database did not answer", self.name, exc_info=True)
            won = False
        if won:
            if self._until is None:
                log.info("cluster lease %s taken by %s", self.name, self.owner)
            self._until = until
            return True
        self._until = None
        self._next_try = now + period / 3
        return False

    async def release(self) -> None:
        if self._until is not None:
            self._until = None
            await drop_lease(self.db, self.name, self.owner)
