"""users.deleted, projects.deleted: deleted users and projects stay as rows

Runs, volumes, events and projects point at the user who made them, and finished runs and
events at their project; deleting the row would break that history. A deleted row is renamed
(its name is free for a new user or project) and is never matched again.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (no batch copy): SQLite cannot drop `users`, which others point at.
    for table in ("users", "projects"):
        op.add_column(
            table, sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    for table in ("users", "projects"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("deleted")
