"""services: replica readiness on jobs, request stats for autoscaling

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("probe_streaks", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("ready", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("unhealthy_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "service_stats",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("writer", sa.String(length=36), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "bucket", "writer"),
    )


def downgrade() -> None:
    op.drop_table("service_stats")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("unhealthy_at")
        batch.drop_column("ready")
        batch.drop_column("probe_streaks")
