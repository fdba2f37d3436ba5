"""job_metrics_points: per-job CPU, memory and GPU samples from the agents

`dstack metrics`, the web UI's charts, Prometheus' per-job gauges and `utilization_policy`
read them; old points are deleted after a retention period.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_metrics_points",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("timestamp_ms", sa.BigInteger(), primary_key=True),
        sa.Column("cpu_usage_percent", sa.Float(), nullable=True),
        sa.Column("memory_usage_bytes", sa.BigInteger(), nullable=True),
        sa.Column("memory_working_set_bytes", sa.BigInteger(), nullable=True),
        sa.Column("gpus", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_metrics_points")
