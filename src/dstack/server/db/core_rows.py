"""New rows written with Core INSERTs instead of the ORM's unit of work.

A run submission inserts a run, its jobs and an event, and nothing reads them back in that
session. Added to the session, the three objects cost a flush (change tracking, the unit of
work's ordering, identity-map bookkeeping, defaults fetched back onto each object) on the
path whose throughput is an open figure (docs/performance.md, "runs/apply").

The row written is the same: every column the object has a value for, the column's Python
default otherwise (`change_tag`, `version`, ... evaluated here, once), NULL for the rest, as
the ORM would. The object gets those values too, so a caller that builds its answer from it
reads what was stored; it stays transient (outside the session). `row_values` may be called
first, to have an object's defaults on it before other rows copy them (a job takes its run's
`deployment_num`).
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.db.tables import Base


def row_values(obj: Base) -> dict[str, Any]:
    """The values of every column of `obj`'s row, defaults filled in on `obj` as well."""
    loaded = obj.__dict__
    values: dict[str, Any] = {}
    for col in obj.__table__.columns:
        key = col.key  # the attribute's name: every mapped_column here keeps it
        default = col.default
        # An attribute set to None gets the column's default, as the ORM's flush does.
        if key in loaded and (loaded[key] is not None or default is None):
            values[key] = loaded[key]
            continue
        if default is not None:
            value = default.arg(None) if default.is_callable else default.arg
        elif col.server_default is None:
            value = None
        else:
            continue  # the database's default, as the ORM would leave it (none of ours)
        setattr(obj, key, value)
        values[key] = value
    return values


async def insert_rows(s: AsyncSession, rows: list[Base]) -> None:
    """INSERT `rows` in their order (parents before the rows that refer to them), one
    statement per run of rows of the same table."""
    for table, group in groupby(rows, key=lambda r: r.__table__):
        await s.execute(insert(table), [row_values(r) for r in group])
