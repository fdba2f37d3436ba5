"""secrets: a project's named values, used as `${{ secrets.NAME }}` in runs

One row per (project, name); `value` is encrypted with the server's box (`enc:<type>:<key
name>:<ciphertext>`). A new table, so the upgrade touches no existing row.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_secrets_project_name", "secrets", ["project_id", "name"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_secrets_project_name", table_name="secrets")
    op.drop_table("secrets")
