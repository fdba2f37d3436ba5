"""One thread hop per SQLite statement instead of four, and none for a rollback with nothing
to roll back.

aiosqlite runs each call on the connection's own thread: the caller queues it, the thread runs
it and wakes the event loop. SQLAlchemy's adapter makes four such calls per statement (create a
cursor, execute, fetch all rows, close the cursor) and two rollbacks per session (the
transaction's and the pool's reset on return), so a read-only request with three queries cost
~16 hops: each a wake-up of the loop, a future and a GIL hand-over between two threads that
both want to run. Measured on runs/list (three queries): ~1.3 ms of a ~3 ms page.

Here, installed on each new connection (`install`):

- `cursor()` makes no call; `execute` runs create + execute + fetch all + close as one call on
  the connection's thread, keeping the rows, `description`, `rowcount` and `lastrowid` that
  SQLAlchemy reads next. SQLAlchemy fetches every row at once anyway (no statement here
  streams), so the rows and the statement's effects are the same;
- `rollback()` is skipped when the connection is not in a transaction: sqlite3's own rollback
  does nothing then either (it checks the same flag), so only the hop is saved.

If aiosqlite ever lacks the internals used (its queue of calls and its sqlite3 connection), the
connection keeps aiosqlite's own methods.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Generator, Iterable, Sequence
from typing import Any

Row = tuple[Any, ...]


def install(driver_conn: Any) -> bool:
    """Give one aiosqlite connection the one-hop cursor and the skipped idle rollback.
    False (nothing changed) when its internals are not the ones this relies on."""
    if not (hasattr(driver_conn, "_execute") and hasattr(driver_conn, "_conn")):
        return False
    rollback = driver_conn.rollback

    async def rollback_if_open() -> None:
        if driver_conn.in_transaction:
            await rollback()

    driver_conn.cursor = lambda: _Opening(OneHopCursor(driver_conn))
    driver_conn.rollback = rollback_if_open
    return True


def _run(conn: sqlite3.Connection, sql: str, params: Any, many: bool) -> tuple:
    """On the connection's thread: the whole statement, its rows read and its cursor closed."""
    cur = conn.cursor()
    try:
        if many:
            cur.executemany(sql, params)
        else:
            cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
        return cur.description, cur.rowcount, cur.lastrowid, rows
    finally:
        cur.close()


class OneHopCursor:
    """The part of `aiosqlite.Cursor` that SQLAlchemy's adapter uses."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1
        self._rows: list[Row] = []

    async def _statement(self, sql: str, params: Any, many: bool) -> OneHopCursor:
        found = await self._conn._execute(_run, self._conn._conn, sql, params, many)
        self.description, self.rowcount, self.lastrowid, rows = found
        self._rows = rows
        return self

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> OneHopCursor:
        return await self._statement(sql, [] if parameters is None else parameters, False)

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> OneHopCursor:
        return await self._statement(sql, parameters, True)

    async def fetchone(self) -> Row | None:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> Sequence[Row]:
        n = self.arraysize if size is None else size
        taken, self._rows = self._rows[:n], self._rows[n:]
        return taken

    async def fetchall(self) -> Sequence[Row]:
        taken, self._rows = self._rows, []
        return taken

    async def close(self) -> None:
        self._rows = []

    async def __aenter__(self) -> OneHopCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Row]:
        return self._each()

    async def _each(self) -> AsyncIterator[Row]:
        while self._rows:
            yield self._rows.pop(0)


class _Opening:
    """What `cursor()` returns: awaited, or entered as an async context (aiosqlite allows both
    and SQLAlchemy versions use either), it gives the cursor without a hop."""

    def __init__(self, cursor: OneHopCursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Generator[Any, None, OneHopCursor]:
        return self._cursor.__aenter__().__await__()

    async def __aenter__(self) -> OneHopCursor:
        return self._cursor

    async def __aexit__(self, *_exc: object) -> None:
        await self._cursor.close()
