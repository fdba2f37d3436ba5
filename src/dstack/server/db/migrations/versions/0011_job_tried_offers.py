"""jobs.tried_offers: the offers a job submission tried one after another

A job whose new instance fails before it starts (no capacity, or the backend's error) goes
back to `submitted` and is placed on the next offer; the failed ones are kept here (a JSON
list of {backend, region, instance_type, spot, price, message}) so placement skips them and
`dstack ps -v` shows them. NULL: nothing tried yet.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tried_offers", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("tried_offers")
