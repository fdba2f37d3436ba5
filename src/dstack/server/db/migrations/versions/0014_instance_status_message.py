"""instances.status_message: why a provisioning host is not up yet, as its backend says

A Slurm job waits in the cluster's queue for `Resources` or `Priority`; the backend reports
that while it provisions, and `dstack ps` shows it with the job instead of a bare
`provisioning`.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("status_message", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("status_message")
