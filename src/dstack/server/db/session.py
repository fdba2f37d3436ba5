"""Engine and sessions. SQLite gets WAL and a busy timeout so the API and the reconcilers can
write concurrently; Postgres needs nothing special.

Strict mode (`DSTACK_DB_STRICT=1`, set by the tests): opening a session in an asyncio task while
another session of the same task has flushed writes and not yet committed or rolled back raises
`SessionNesting`. On SQLite the first session holds the database's write lock, so a write in
the second one waits on it for the whole busy timeout and then fails ("database is locked"); on
Postgres it can wait forever on a row lock the same task holds. Either way the task waits on
itself, so the pattern is refused at once, where it happens, instead of as a slow deadlock.
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from dstack.server.db.sqlite_driver import one_hop_dbapi
from dstack.server.db.write_gate import WriteGate

STRICT_ENV = "DSTACK_DB_STRICT"
# How long a SQLite write waits for another writer's lock before it fails "database is locked"
# (answered 503 with Retry-After). Short: a lock held longer is a stuck or foreign writer, and a
# request should not hang on it.
BUSY_TIMEOUT_ENV = "DSTACK_DB_BUSY_TIMEOUT"


def busy_timeout_seconds() -> float:
    raw = os.environ.get(BUSY_TIMEOUT_ENV)
    return float(raw) if raw else 5.0


_WRITE_PREFIXES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


BUSY_MARKERS = ("database is locked", "database table is locked", "database is busy")
FULL_MARKERS = ("database or disk is full", "no space left on device", "disk full")


def db_fault(e: BaseException) -> str | None:
    """'busy' (another writer holds the lock past the busy timeout), 'full' (no disk space)
    or None, for an error from the database; judged by the message, since the drivers agree
    on no class (sqlite3 raises OperationalError for both, asyncpg DiskFullError)."""
    orig = getattr(e, "orig", e)
    text = str(orig).lower()
    if any(m in text for m in BUSY_MARKERS):
        return "busy"
    if any(m in text for m in FULL_MARKERS) or type(orig).__name__ == "DiskFullError":
        return "full"
    return None


class SessionNesting(RuntimeError):
    """A task opened a session while one of its own sessions holds uncommitted writes."""


class _TrackedSession(Session):
    """A Session that knows whether its open transaction has written anything.

    `wrote` is set by a flush that had changes or by an INSERT/UPDATE/DELETE statement, and
    cleared when the outermost transaction ends (commit, rollback or close): exactly the span
    during which the database holds this session's write locks."""

    wrote: bool = False
    # Where the session was opened: (file, line, function) of its opener and that one's caller,
    # formatted only when a nesting is refused (`traceback.format_stack` on every session, with
    # its source-line reads, was ~10% of the server's CPU on runs/list under the tests' strict
    # mode).
    opened_at: tuple[tuple[str, int, str], ...] = ()


def _on_flush(session: Session, _ctx: Any) -> None:
    if isinstance(session, _TrackedSession):
        session.wrote = True


def _on_execute(state: ORMExecuteState) -> None:
    session = state.session
    if not isinstance(session, _TrackedSession):
        return
    # text() and other statements are judged by their first word.
    if (
        state.is_insert
        or state.is_update
        or state.is_delete
        or (
            not state.is_select
            and str(state.statement).lstrip().upper().startswith(_WRITE_PREFIXES)
        )
    ):
        session.wrote = True


def _on_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if isinstance(session, _TrackedSession) and transaction.parent is None:
        session.wrote = False


event.listen(_TrackedSession, "after_flush", _on_flush)
event.listen(_TrackedSession, "do_orm_execute", _on_execute)
event.listen(_TrackedSession, "after_transaction_end", _on_transaction_end)


class Database:
    def __init__(self, url: str, strict: bool | None = None) -> None:
        """`url`: a SQLite file's database is created 0600 by the server at start
        (`services/state_dir.py`), not here: a test's throwaway database needs no care."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.strict = os.environ.get(STRICT_ENV) == "1" if strict is None else strict
        if self.is_sqlite:
            path = url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # One thread hop per statement (sqlite_driver.py says why). Pooled connections
            # kept: 8 concurrent API requests plus the reconcilers' passes outnumbered 5, and a
            # connection over the pool size is closed on return, so a busy server opened a new
            # one (a thread, four PRAGMAs) about every hundredth request.
            driver = {"module": one_hop_dbapi()} if url.startswith("sqlite+aiosqlite") else {}
            self.engine: AsyncEngine = create_async_engine(
                url,
                **driver,
                connect_args={"timeout": busy_timeout_seconds()},
                pool_size=20,
                max_overflow=10,
            )
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            WriteGate(busy_timeout_seconds()).attach(self.engine)
        else:
            self.engine = create_async_engine(url, pool_size=20, max_overflow=20)
        self.sessionmaker = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=_TrackedSession
        )
        # The sessions each task has open now (strict mode only).
        self._open: weakref.WeakKeyDictionary[asyncio.Task[Any], list[_TrackedSession]] = (
            weakref.WeakKeyDictionary()
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        if not self.strict:
            async with self.sessionmaker() as s:
                yield s
            return
        task = asyncio.current_task()
        mine = self._open.setdefault(task, []) if task is not None else []
        for other in mine:
            if other.wrote:
                raise SessionNesting(
                    "a new session was opened while this task's session opened at\n"
                    f"{_format_frames(other.opened_at)}holds uncommitted writes (on SQLite: the "
                    "write lock); commit it first, or do the work in that session"
                )
        async with self.sessionmaker() as s:
            sync = s.sync_session
            assert isinstance(sync, _TrackedSession)
            sync.opened_at = _opener(sys._getframe(2))
            mine.append(sync)
            try:
                yield s
            finally:
                mine.remove(sync)

    async def close(self) -> None:
        await self.engine.dispose()


def _opener(frame: FrameType | None) -> tuple[tuple[str, int, str], ...]:
    """`frame` (the code that entered `session()`) and its caller, outermost first."""
    found = []
    while frame is not None and len(found) < 2:
        found.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return tuple(reversed(found))


def _format_frames(frames: tuple[tuple[str, int, str], ...]) -> str:
    return "".join(traceback.StackSummary.from_list([(*f, None) for f in frames]).format())


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for Postgres or an in-memory database."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds() * 1000)}")
    cur.close()
