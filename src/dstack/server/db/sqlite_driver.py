"""SQLAlchemy's aiosqlite adapter with one thread hop per statement instead of four.

aiosqlite runs each sqlite3 call on the connection's own thread: the event loop queues the
call, the thread wakes, runs it, and wakes the loop back through its self-pipe. SQLAlchemy's
adapter makes four such calls per statement (open a cursor, execute, fetch the rows, close the
cursor), and one more for the commit or rollback of every session, even one that only read and
so has no transaction to end. On a busy server each hop costs the loop tens of microseconds
(two thread switches and a GIL handover): measured, ~60 hops a submitted run, a sixth of the
server's CPU for it. Here one call does the whole statement (the rows are fetched eagerly, as
the stock adapter does too), and a commit or rollback with no transaction open is skipped,
exactly as sqlite3 itself would skip it, without the hop.

The connection also calls back the write gate (`on_end`) once its COMMIT or ROLLBACK has run:
SQLAlchemy's own events fire before it, and a writer let in then meets SQLite's lock.

Server-side cursors, connecting, closing and errors are the stock adapter's. The adapter's
internals are pinned by the SQLAlchemy version (2.1) this was written against; the tests of
the database layer run through it.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

_Outcome = tuple[Any, list[Any] | None, int, int | None]


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """On the connection's thread: the statement, start to end, in one call."""
    cur = conn.cursor()
    try:
        if many:
            cur.executemany(operation, parameters)
        elif parameters is None:
            cur.execute(operation)
        else:
            cur.execute(operation, parameters)
        description = cur.description
        rows = cur.fetchall() if description else None
        # Read after the fetch: with RETURNING, sqlite3 counts rows as they are stepped.
        return description, rows, cur.rowcount, cur.lastrowid
    finally:
        cur.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose sqlite3 cursor lives only inside `_run`."""

    __slots__ = ("_description", "_rowcount", "_lastrowid", "_arraysize")
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:  # type: ignore[override]
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    def close(self) -> None:
        self._rows.clear()

    async def _hop(self, operation: Any, parameters: Any, many: bool) -> None:
        async with self._adapt_connection._execute_mutex:
            outcome = await self._connection._execute(
                _run, self._connection._conn, operation, parameters, many
            )
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = deque(rows) if rows else deque()

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._hop(operation, parameters, False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._hop(operation, seq_of_parameters, True)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("on_end",)
    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: aiosqlite.Connection) -> None:
        super().__init__(dbapi, connection)
        # Called once the transaction's COMMIT or ROLLBACK has run (write_gate.py: the next
        # writer must not start while this one still holds SQLite's lock).
        self.on_end: Callable[[], None] | None = None

    def _ended(self) -> None:
        callback, self.on_end = self.on_end, None
        if callback is not None:
            callback()

    def _in_transaction(self) -> bool:
        # A plain read of sqlite3_get_autocommit: nothing runs on this connection meanwhile
        # (SQLAlchemy awaits each call), so reading it from the loop's thread is safe.
        conn: sqlite3.Connection | None = self._connection._connection
        return conn is not None and conn.in_transaction

    def rollback(self) -> None:
        try:
            if self._in_transaction():
                super().rollback()
        finally:
            self._ended()

    def commit(self) -> None:
        try:
            if self._in_transaction():
                super().commit()
        finally:
            self._ended()


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        stock = super().connect(*arg, **kw)
        return OneHopConnection(self, stock._connection)


def one_hop_dbapi() -> OneHopDBAPI:
    """The `module` argument of `create_async_engine` for a `sqlite+aiosqlite` URL."""
    return OneHopDBAPI(aiosqlite, sqlite3)
