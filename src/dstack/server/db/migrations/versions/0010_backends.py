"""backends: a project's cloud backends from the server's config.yml

One row per (project, backend type), written at start from `~/.dstack/server/config.yml`:
`config` is the backend's configuration without its credentials (JSON), `auth` the credentials
encrypted with the server's key. A new table, so the upgrade touches no existing row.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backends",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=50), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("auth", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_backends_project_type", "backends", ["project_id", "type"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_backends_project_type", table_name="backends")
    op.drop_table("backends")
