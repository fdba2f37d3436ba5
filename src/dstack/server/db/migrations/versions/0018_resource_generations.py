"""runs/fleets/volumes.generation: a counter of the user's changes to each resource's spec

`version` counts every write (reconcilers included) and guards leases; `generation` counts only
what a user applied, as Kubernetes' metadata.generation does. A plan carries the resource as it
was (`current_resource`, with its generation); an apply whose plan saw an older generation than
the row now holds is refused (409) instead of silently overwriting a change someone else made.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TABLES = ("runs", "fleets", "volumes")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("generation", sa.Integer(), nullable=False, server_default="1")
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("generation")
