"""Several server replicas on one database: single-instance invariants and cluster leases

- `instances.single_key`: set on an instance of a backend that has one live instance per
  server (`Capabilities.single_instance`, the server's own machine); a partial unique index over
  live rows makes a second one fail at insert, whichever server process placed it. Existing rows
  keep NULL (the job worker's check still sees them).
- `server_leases`: one row per cluster-wide singleton task (the probes, the inventory sweep);
  the replica whose lease has not expired runs it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("single_key", sa.String(length=100), nullable=True))
    op.create_index(
        "ix_instances_single_live",
        "instances",
        ["single_key"],
        unique=True,
        sqlite_where=sa.text("status != 'terminated'"),
        postgresql_where=sa.text("status != 'terminated'"),
    )
    op.create_table(
        "server_leases",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("server_leases")
    op.drop_index("ix_instances_single_live", table_name="instances")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("single_key")
