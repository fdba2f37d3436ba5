"""claim indexes: (status, last_processed_at) on every reconciled table (runs, jobs, instances,
fleets), the range the reconcilers' claim and idle-wait queries scan (reconcilers/base.py)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 08:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("runs", "jobs", "instances", "fleets")


def upgrade() -> None:
    for table in TABLES:
        op.create_index(f"ix_{table}_claim", table, ["status", "last_processed_at"])


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"ix_{table}_claim", table_name=table)
