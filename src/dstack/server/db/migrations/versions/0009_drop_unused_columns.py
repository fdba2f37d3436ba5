"""drop columns no code reads or writes

instances.unreachable_since, instances.last_job_processed_at and jobs.logs_drained have been
in the schema since 0001 but no code ever set or read them (`instances.unreachable` is the
flag the instance reconciler keeps; a job's logs are drained in the pass that finalizes it).
They were always NULL (the timestamps) or false (logs_drained), so dropping them loses nothing;
the downgrade adds them back empty.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

INSTANCE_COLUMNS = ("unreachable_since", "last_job_processed_at")


def _in_place() -> bool:
    """Whether `instances` can lose columns without being rebuilt. Jobs reference instances,
    and the server runs SQLite with `PRAGMA foreign_keys=ON` (which cannot be turned off inside
    the migration's transaction), so rebuilding it (drop, then rename a copy) fails as soon as
    one job points at an instance. SQLite drops a column in place from 3.35 on; before that the
    two nullable, unmapped columns are left where they are."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return True
    version = bind.exec_driver_sql("select sqlite_version()").scalar_one()
    return tuple(int(p) for p in version.split(".")[:2]) >= (3, 35)


def _instance_columns() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("instances")}


def upgrade() -> None:
    if _in_place():
        with op.batch_alter_table("instances", recreate="never") as batch:
            for name in INSTANCE_COLUMNS:
                batch.drop_column(name)
    # Nothing references jobs: on SQLite it is rebuilt without the column.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("logs_drained")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("logs_drained", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    present = _instance_columns()
    with op.batch_alter_table("instances") as batch:
        for name in INSTANCE_COLUMNS:
            if name not in present:
                batch.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
