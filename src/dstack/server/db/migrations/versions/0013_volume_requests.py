"""volumes: one active volume per (project, name); volumes.force_delete

Two `volumes/create` calls with one name at once must not both succeed: like fleets
(ix_fleets_active_name), a partial unique index over the rows not deleted makes the database
refuse the second. `force_delete` is the user's `dstack volume delete --force`, a request the
volume reconciler carries out: a directory volume whose host's agent cannot be reached is
forgotten instead of waited on.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: rebuilding `volumes` would fail on SQLite once an attachment
    # references a volume (foreign keys are on).
    op.add_column(
        "volumes",
        sa.Column("force_delete", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_volumes_active_name",
        "volumes",
        ["project_id", "name"],
        unique=True,
        sqlite_where=sa.text("deleted = 0"),
        postgresql_where=sa.text("deleted = false"),
    )


def downgrade() -> None:
    op.drop_index("ix_volumes_active_name", "volumes")
    with op.batch_alter_table("volumes", recreate="never") as batch:
        batch.drop_column("force_delete")
