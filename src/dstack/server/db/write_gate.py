"""One writer at a time inside this process, for SQLite.

SQLite lets one connection write at a time. Without this gate, the API and the reconcilers
(several pooled connections, each on its own aiosqlite thread) race for that lock, and a loser
sleeps in SQLite's busy handler: 1, 2, 5, 10 ... 100 ms naps regardless of when the lock is
freed. With a few writers that is most of the time a submission or a pass takes (measured: the
database "spent" 168 s in 16 s of wall time on 100 jobs, nearly all of it napping). Here a
writer queues on an asyncio lock instead, taken just before a transaction's first write and
handed to the next writer the moment the transaction ends, with no nap. Readers never take it
(WAL lets them read beside the writer).

Python's sqlite3 driver opens a transaction implicitly at the first INSERT/UPDATE/DELETE, and
reads before it run outside any transaction, so "first write statement" is exactly when the
database's write lock would have been requested. Other processes on the same file (replicas)
still meet SQLite's own lock and busy handler.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_only

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_HELD = "dstack_write_gate"
_AFTER_END = "dstack_write_gate_after_end"


class WriteGate:
    def __init__(self, timeout: float) -> None:
        """`timeout`: how long a writer waits for the gate before failing as SQLite would
        ("database is locked", which the API answers 503 with Retry-After)."""
        self.timeout = timeout
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, engine: AsyncEngine) -> None:
        sync = engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._before_execute)
        event.listen(sync, "commit", self._release_conn)
        event.listen(sync, "rollback", self._release_conn)
        event.listen(sync.pool, "checkin", self._release_record)
        event.listen(sync.pool, "invalidate", self._release_record_exc)
        event.listen(sync.pool, "close", self._release_record)

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            # A new event loop (tests run several): a lock is bound to the loop it waits on.
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def _acquire(self, statement: str) -> asyncio.Lock:
        lock = self._get_lock()
        try:
            await asyncio.wait_for(lock.acquire(), self.timeout)
        except TimeoutError:
            raise OperationalError(
                statement, None, sqlite3.OperationalError("database is locked")
            ) from None
        return lock

    def _before_execute(  # noqa: PLR0913 - SQLAlchemy's event signature
        self, conn: Connection, _cursor: Any, statement: str, _params: Any, _ctx: Any, _many: bool
    ) -> None:
        info = conn.info
        if info.get(_HELD) is not None:
            return
        if not statement.lstrip()[:7].upper().startswith(_WRITES):
            return
        info[_HELD] = await_only(self._acquire(statement))
        driver = conn.connection.dbapi_connection
        if hasattr(driver, "on_end"):
            # SQLAlchemy's commit/rollback events fire before the COMMIT runs: released then,
            # the next writer's first statement would meet SQLite's lock still held and nap in
            # the busy handler. The driver (sqlite_driver.py) calls back once it has run.
            info[_AFTER_END] = True
            driver.on_end = functools.partial(self._release_info, info)

    @staticmethod
    def _release_info(info: dict[Any, Any]) -> None:
        info.pop(_AFTER_END, None)
        lock = info.pop(_HELD, None)
        if lock is not None and lock.locked():
            lock.release()

    def _release_conn(self, conn: Connection) -> None:
        try:
            info = conn.info
        except Exception:  # noqa: BLE001 - an invalidated connection: its check-in releases
            return
        if not info.get(_AFTER_END):
            self._release_info(info)

    def _release_record(self, _dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        self._release_info(record.info)

    def _release_record_exc(self, _dbapi_conn: Any, record: ConnectionPoolEntry, _exc: Any) -> None:
        self._release_info(record.info)
