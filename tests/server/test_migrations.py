"""The migrations on a real SQLite database, with the server's own connection settings
(`PRAGMA foreign_keys=ON`): from scratch they give exactly the schema tables.py declares, and
0009 (dropping unused columns) keeps the rows of a database that has data, foreign keys
included, and can be undone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from dstack.server.db.migrate import alembic_config, migrate
from dstack.server.db.session import Database
from dstack.server.db.tables import Base

NOW = "2026-12-05 00:00:00"
DROPPED = {
    "instances": {"unreachable_since", "last_job_processed_at"},
    "jobs": {"logs_drained"},
}


def _database(tmp_path: Path) -> Database:
    return Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")


async def _alembic(db: Database, step: Callable[[Config, str], Any], revision: str) -> None:
    def run(conn: Any) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        step(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(run)


async def _columns(db: Database, table: str) -> set[str]:
    async with db.engine.connect() as conn:
        cols = await conn.run_sync(lambda c: inspect(c).get_columns(table))
    return {c["name"] for c in cols}


async def _rows(db: Database, sql: str) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql))).all()]


async def _seed(db: Database) -> None:
    """A user, project, instance, run and a job on that instance, at revision 0008."""
    statements = [
        "insert into users (id, name, global_role, token_hash, active, created_at)"
        f" values ('u', 'u', 'admin', 'h', 1, '{NOW}')",
        "insert into projects (id, name, owner_id, is_public, created_at)"
        f" values ('p', 'p', 'u', 0, '{NOW}')",
        "insert into instances (id, project_id, instance_num, name, backend, region, status,"
        " unreachable, price, total_blocks, created_at, deleted, last_processed_at, version,"
        f" dirty) values ('i', 'p', 0, 'i', 'local', '', 'busy', 0, 0, 1, '{NOW}', 0, '{NOW}',"
        " 1, 0)",
        "insert into runs (id, project_id, user_id, run_name, run_spec, status, submitted_at,"
        " resubmission_attempt, deployment_num, priority, deleted, last_processed_at, version,"
        f" dirty, stop_requested, stop_abort) values ('r', 'p', 'u', 'r', '{{}}', 'running',"
        f" '{NOW}', 0, 0, 0, 0, '{NOW}', 1, 0, 0, 0)",
        "insert into jobs (id, project_id, run_id, run_name, job_num, replica_num, job_name,"
        " submission_num, deployment_num, job_spec, status, instance_id, used_blocks,"
        " submitted_at, logs_drained, ready, last_processed_at, version, dirty) values ('j',"
        f" 'p', 'r', 'r', 0, 0, 'j', 0, 0, '{{}}', 'running', 'i', 1, '{NOW}', 0, 0, '{NOW}',"
        " 1, 0)",
    ]
    async with db.engine.begin() as conn:
        for sql in statements:
            await conn.execute(text(sql))


def test_migrations_from_scratch_match_the_tables(tmp_path: Path) -> None:
    async def go() -> list[Any]:
        db = _database(tmp_path)
        await migrate(db.engine)
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
        await db.close()
        return diff

    assert asyncio.run(go()) == []


def test_0009_drops_unused_columns_and_keeps_the_rows(tmp_path: Path) -> None:
    async def go() -> None:
        db = _database(tmp_path)
        await _alembic(db, command.upgrade, "0008")
        await _seed(db)

        await _alembic(db, command.upgrade, "0009")
        for table, dropped in DROPPED.items():
            assert not dropped & await _columns(db, table)
        assert await _rows(db, "select id, instance_id, run_id from jobs") == [("j", "i", "r")]
        assert await _rows(db, "select id, status from instances") == [("i", "busy")]
        assert await _rows(db, "pragma foreign_key_check") == []
        names = {i["name"] for i in await _indexes(db, "jobs")}
        assert {"ix_jobs_claim", "ix_jobs_run_id"} <= names

        await _alembic(db, command.downgrade, "0008")
        for table, dropped in DROPPED.items():
            assert dropped <= await _columns(db, table)
        assert await _rows(db, "select id, logs_drained from jobs") == [("j", 0)]

        await _alembic(db, command.upgrade, "head")
        assert not DROPPED["jobs"] & await _columns(db, "jobs")
        await db.close()

    asyncio.run(go())


async def _indexes(db: Database, table: str) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        return await conn.run_sync(lambda c: inspect(c).get_indexes(table))


def test_head_read_from_the_files_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    from dstack.server.db.migrate import head_revisions

    assert head_revisions() == set(ScriptDirectory.from_config(alembic_config()).get_heads())


def test_head_is_left_to_alembic_when_a_file_does_not_say_plainly(tmp_path: Path) -> None:
    from dstack.server.db.migrate import head_revisions

    (tmp_path / "0001_a.py").write_text("revision = '0001'\ndown_revision = None\n")
    (tmp_path / "0002_b.py").write_text('revision = "0002"\ndown_revision = "0001"\n')
    assert head_revisions(tmp_path) == {"0002"}
    (tmp_path / "0003_merge.py").write_text('revision = "0003"\ndown_revision = ("0001", "0002")\n')
    assert head_revisions(tmp_path) is None


def test_a_database_at_head_starts_without_alembic(tmp_path: Path, monkeypatch: Any) -> None:
    """The cold-start shortcut: at head, Alembic's upgrade is not run; one revision behind, it
    is, and brings the database to head."""
    calls: list[str] = []
    real_upgrade = command.upgrade

    def counting_upgrade(cfg: Config, revision: str) -> None:
        calls.append(revision)
        real_upgrade(cfg, revision)

    monkeypatch.setattr(command, "upgrade", counting_upgrade)

    async def go() -> list[tuple[Any, ...]]:
        db = _database(tmp_path)
        await migrate(db.engine)  # fresh database: no version table, Alembic runs
        assert calls == ["head"]
        await migrate(db.engine)  # at head: nothing to do
        assert calls == ["head"]
        await _alembic(db, command.downgrade, "-1")
        await migrate(db.engine)  # one behind: Alembic upgrades
        assert calls == ["head", "head"]
        version = await _rows(db, "select version_num from alembic_version")
        await db.close()
        return version

    from dstack.server.db.migrate import head_revisions

    assert {v for (v,) in asyncio.run(go())} == head_revisions()
