"""jobs.inactivity_secs: seconds the job's SSH server has had no connection (dev environments'
inactivity_duration is judged on it; the API shows it on each job submission)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 01:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("inactivity_secs", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("inactivity_secs")
