"""The SQLite driver (db/sqlite_driver.py) answers as the stock aiosqlite adapter does, in one
thread hop per statement, and the write gate hands over only once a COMMIT has run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError

from dstack.server.db.session import Database
from dstack.server.db.sqlite_driver import OneHopConnection


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", strict=False)
    yield database
    asyncio.run(database.close())


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions run on aiosqlite's threads, in order."""
    seen: list[str] = []
    original = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kw: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kw)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return seen


async def _schema(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))


def test_statements_answer_as_the_stock_adapter(db: Database) -> None:
    async def go() -> None:
        await _schema(db)
        async with db.engine.begin() as conn:
            res = await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
            assert res.rowcount == 1 and res.lastrowid == 1
            res = await conn.execute(
                text("INSERT INTO t (name) VALUES (:n)"), [{"n": "b"}, {"n": "c"}]
            )
            assert res.rowcount == 2
            res = await conn.execute(
                text("UPDATE t SET name = name || '!' WHERE id > 1 RETURNING id")
            )
            assert sorted(r[0] for r in res) == [2, 3]
            assert res.rowcount == 2
            rows = (await conn.execute(text("SELECT id, name FROM t ORDER BY id"))).all()
            assert [tuple(r) for r in rows] == [(1, "a"), (2, "b!"), (3, "c!")]
            res = await conn.execute(text("SELECT id FROM t ORDER BY id"))
            assert res.fetchone()[0] == 1 and [r[0] for r in res.fetchmany(5)] == [2, 3]
            assert (await conn.execute(text("SELECT 1 WHERE 0"))).first() is None
        async with db.engine.connect() as conn:
            with pytest.raises(IntegrityError):
                await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
            await conn.rollback()
            # The failed statement left the connection usable.
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 3

    asyncio.run(go())


def test_one_hop_per_statement_and_none_to_end_a_read(db: Database, hops: list[str]) -> None:
    async def go() -> None:
        await _schema(db)
        async with db.session() as s:
            await s.execute(text("SELECT 1"))  # connects: not counted below
        hops.clear()
        async with db.session() as s:
            assert (await s.execute(text("SELECT count(*) FROM t"))).scalar() == 0
            await s.commit()  # nothing to commit: no hop
        assert hops == ["_run"]
        hops.clear()
        async with db.session() as s:
            await s.execute(text("INSERT INTO t (name) VALUES ('x')"))
            await s.commit()
        assert hops == ["_run", "commit"]
        hops.clear()
        async with db.session() as s:
            await s.execute(text("INSERT INTO t (name) VALUES ('y')"))
        # Closed without a commit: rolled back, and the row is not there.
        assert hops == ["_run", "rollback"]
        async with db.session() as s:
            names = (await s.execute(text("SELECT name FROM t"))).scalars().all()
        assert names == ["x"]

    asyncio.run(go())


def test_the_gate_hands_over_once_the_commit_has_run(db: Database) -> None:
    """With SQLite's own busy wait off, a writer that started while the previous one's COMMIT
    was still running would fail "database is locked" at once."""

    @event.listens_for(db.engine.sync_engine, "connect")
    def no_busy_wait(dbapi_conn: Any, _record: Any) -> None:
        assert isinstance(dbapi_conn, OneHopConnection)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=0")
        cur.close()

    async def writer(i: int) -> None:
        for j in range(15):
            async with db.session() as s:
                await s.execute(text("INSERT INTO t (name) VALUES (:n)"), {"n": f"{i}-{j}"})
                await asyncio.sleep(0)
                await s.execute(text("UPDATE t SET name = name WHERE name = :n"), {"n": "x"})
                await s.commit()

    async def go() -> None:
        await _schema(db)
        await asyncio.gather(*(writer(i) for i in range(6)))
        async with db.session() as s:
            assert (await s.execute(text("SELECT count(*) FROM t"))).scalar() == 90

    asyncio.run(go())


# An UPDATE that keeps SQLite busy for a while (a recursive count), to be cancelled midway.
_SLOW_WRITE = (
    "UPDATE t SET name = (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
    "WHERE i < 2000000) SELECT 'slow' || max(i) FROM c) WHERE id = 1"
)


@pytest.mark.parametrize("pause", [0.0, 1.5])
def test_a_cancelled_write_is_never_committed_by_the_next_user(db: Database, pause: float) -> None:
    """A task cancelled while its statement runs on the connection's thread (a timeout, a
    shutdown) leaves the statement running there; the connection goes back to the pool. Its
    write must be rolled back, not committed by whichever session takes the connection next,
    and must not keep SQLite's write lock."""

    async def go() -> None:
        await _schema(db)
        async with db.engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (name) VALUES ('one'), ('two')"))

        async def slow() -> None:
            async with db.session() as s:
                await s.execute(text(_SLOW_WRITE))
                await s.commit()

        task = asyncio.create_task(slow())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(pause)
        for _ in range(3):  # each pooled connection in turn
            async with db.session() as s:
                await asyncio.wait_for(
                    s.execute(text("UPDATE t SET name = name || '.' WHERE id = 2")), 10
                )
                await s.commit()
        async with db.session() as s:
            names = (await s.execute(text("SELECT name FROM t ORDER BY id"))).scalars().all()
        assert names == ["one", "two..."]

    asyncio.run(go())
