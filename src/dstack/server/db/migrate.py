"""Runs Alembic migrations on start, so a new server version upgrades the database in place.

Most starts find the database already at the head revision. Loading Alembic, its templates
and every migration script costs a few hundred milliseconds of a cold start, so the stored
revision is first compared with the head read from the version files' text; Alembic runs only
when they differ, or when either cannot be read plainly (a fresh database, a merge revision).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default; env.py keeps it

# `revision = "0019"` / `down_revision = "0018"` / `down_revision = None`, either quote style.
_ASSIGNMENT = re.compile(
    r"^(revision|down_revision)\s*=\s*(?:None|(['\"])([\w-]+)\2)\s*(?:#.*)?$", re.M
)


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revisions(versions_dir: Path = MIGRATIONS_DIR / "versions") -> set[str] | None:
    """The revisions that no other one revises, from the files' text; None when a file does
    not say plainly (a tuple of parents, no `revision` line): Alembic then decides."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions_dir.glob("*.py"):
        found = {m.group(1): m.group(3) for m in _ASSIGNMENT.finditer(path.read_text())}
        if not found.get("revision") or "down_revision" not in found:
            return None
        revisions.add(found["revision"])
        if found["down_revision"]:
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads or None


def stored_revisions(sync_conn: Any) -> set[str] | None:
    """What the database says it is at; None when it has no version table yet."""
    if not inspect(sync_conn).has_table(VERSION_TABLE):
        return None
    rows = sync_conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    return {r[0] for r in rows}


async def migrate(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def _upgrade(sync_conn) -> None:  # type: ignore[no-untyped-def]
    heads = head_revisions()
    if heads is not None and stored_revisions(sync_conn) == heads:
        return
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")
