"""db/sqlite_hops.py: statements through the one-hop cursor give what aiosqlite's own cursor
gives (rows, row counts, last row ids, RETURNING, errors, transactions), each in one call on
the connection's thread, and an idle rollback makes no call at all."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import aiosqlite.core
import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from dstack.server.db import sqlite_hops
from dstack.server.db.session import Database


class Calls:
    """The calls queued on aiosqlite connections' threads, by function name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        queue = aiosqlite.core.Connection._execute

        async def counted(conn, fn, *args, **kwargs):  # noqa: ANN001, ANN202
            self.seen[getattr(fn, "__name__", repr(fn))] += 1
            return await queue(conn, fn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)


async def _scenario(db: Database, calls: Calls) -> None:
    async with db.session() as s:
        await s.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))
        await s.commit()
    async with db.session() as s:  # a write: rowcount, lastrowid, RETURNING, executemany
        r = await s.execute(text("INSERT INTO t (name) VALUES ('a')"))
        assert r.rowcount == 1 and r.lastrowid == 1
        r = await s.execute(text("INSERT INTO t (name) VALUES ('b') RETURNING id, name"))
        assert r.all() == [(2, "b")]
        await s.execute(text("INSERT INTO t (name) VALUES (:n)"), [{"n": "c"}, {"n": "d"}])
        r = await s.execute(text("UPDATE t SET name = name || '!' WHERE id > 2"))
        assert r.rowcount == 2
        await s.commit()
    async with db.session() as s:  # a write rolled back is rolled back
        await s.execute(text("INSERT INTO t (name) VALUES ('gone')"))
        await s.rollback()
    async with db.session() as s:  # an error is the driver's, and the session goes on
        with pytest.raises(IntegrityError):
            await s.execute(text("INSERT INTO t (name) VALUES ('a')"))
        await s.rollback()
        names = (await s.execute(text("SELECT name FROM t ORDER BY id"))).scalars().all()
        assert names == ["a", "b", "c!", "d!"]
        assert (await s.execute(text("SELECT 1 WHERE 0"))).all() == []
    calls.seen.clear()
    async with db.session() as s:  # read-only: one call per statement, no rollback
        await s.execute(text("SELECT * FROM t"))
        await s.execute(text("SELECT count(*) FROM t"))
    assert dict(calls.seen) == {"_run": 2}
    calls.seen.clear()
    async with db.session() as s:  # a write's rollback still runs
        await s.execute(text("INSERT INTO t (name) VALUES ('x')"))
    assert calls.seen["rollback"] == 1


def test_statements_through_one_hop_cursors(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    calls = Calls(monkeypatch)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")

    async def run() -> None:
        try:
            await _scenario(db, calls)
        finally:
            await db.close()

    asyncio.run(run())


def test_orm_statements_match_aiosqlite_cursors(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The same statements with and without the one-hop cursor give the same answers."""
    from sqlalchemy import Column, Integer, MetaData, String, Table

    meta = MetaData()
    tbl = Table("u", meta, Column("id", Integer, primary_key=True), Column("v", String))

    async def answers(install: bool, name: str) -> list:
        if not install:
            monkeypatch.setattr(sqlite_hops, "install", lambda _conn: False)
        db = Database(f"sqlite+aiosqlite:///{tmp_path / name}")
        try:
            async with db.engine.begin() as c:
                await c.run_sync(meta.create_all)
                await c.execute(insert(tbl), [{"v": str(i)} for i in range(50)])
            async with db.engine.connect() as c:
                rows = (await c.execute(select(tbl).where(tbl.c.id > 10))).all()
                first = (await c.execute(select(tbl.c.v).order_by(tbl.c.id))).first()
                streamed = [r async for r in await c.stream(select(tbl.c.id))]
            return [rows, first, streamed]
        finally:
            await db.close()
            monkeypatch.undo()

    with_hops = asyncio.run(answers(True, "a.sqlite"))
    without = asyncio.run(answers(False, "b.sqlite"))
    assert with_hops == without and len(with_hops[0]) == 40 and len(with_hops[2]) == 50
