"""runs/list: an index for its page query and a change tag on runs and jobs

- `ix_runs_list` on runs (project_id, deleted, submitted_at, id): a page of a project's runs
  in submission order is an index range read, not a scan of every run and a sort.
- `runs.change_tag`, `jobs.change_tag`: a random 63-bit value the server writes with every
  insert and update of the row (tables.py `new_change_tag`); the runs/list cache
  (services/runs_page.py) keeps a run's serialized JSON only while its run and job rows carry
  the tags it was built from. Existing rows get 0; the cache is per server process, so it
  starts empty and the first write of a row gives it a random tag.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

TAGGED = ("runs", "jobs")


def upgrade() -> None:
    for table in TAGGED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("change_tag", sa.BigInteger(), nullable=False, server_default="0")
            )
    op.create_index("ix_runs_list", "runs", ["project_id", "deleted", "submitted_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_list", table_name="runs")
    for table in TAGGED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("change_tag")
