"""Requests instead of writes across reconcilers: a parent asks, the child's reconciler acts.

jobs.stop_requested / stop_abort / stop_reason: the run reconciler (a user's stop, a run that
ends, a replica scaled down) records a stop request on the job; the job reconciler turns it
into `terminating` with `stop_reason`, so only the job reconciler writes a job's status.

runs.replacement_spec / replacement_user_id: `runs/apply` with `force` against an active run
that cannot be updated in place records the new spec on that run (and asks it to stop); the
run reconciler submits it as a new run of the same name in the transaction that finishes the
old one. Being rows, both requests survive a server restart.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("stop_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("stop_abort", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("stop_reason", sa.String(60), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("replacement_spec", sa.Text(), nullable=True))
        batch.add_column(sa.Column("replacement_user_id", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("replacement_user_id")
        batch.drop_column("replacement_spec")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("stop_reason")
        batch.drop_column("stop_abort")
        batch.drop_column("stop_requested")
