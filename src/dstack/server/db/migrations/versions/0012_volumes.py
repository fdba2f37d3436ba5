"""volumes: network volumes (backend, cloud id, provisioning data) and directory volumes (a
fleet, the instance holding the directory); volume_attachments; jobs.volumes

A volume row so far held only a name and a status. A network volume now records where it
lives in its backend; a directory volume records its fleet and, once a run used it, the
instance whose disk holds it. Deletion is asked for (`to_be_deleted`) and carried out by the
volume reconciler, with a backoff (`attempts`, `next_attempt_at`) when the backend keeps
failing. Attachments say which instance a volume is attached to for which job.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("volumes") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("backend", sa.String(30), nullable=True))
        batch.add_column(sa.Column("region", sa.String(60), nullable=True))
        batch.add_column(sa.Column("availability_zone", sa.String(60), nullable=True))
        batch.add_column(sa.Column("size_gb", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("external_id", sa.String(200), nullable=True))
        batch.add_column(
            sa.Column("external", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("provisioning_data", sa.Text(), nullable=True))
        batch.add_column(sa.Column("fleet_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("instance_id", sa.String(36), nullable=True))
        batch.create_foreign_key("fk_volumes_fleet_id", "fleets", ["fleet_id"], ["id"])
        batch.create_foreign_key("fk_volumes_instance_id", "instances", ["instance_id"], ["id"])
        batch.add_column(
            sa.Column("to_be_deleted", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_volumes_claim", "volumes", ["status", "last_processed_at"])
    op.create_table(
        "volume_attachments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("volume_id", sa.String(36), sa.ForeignKey("volumes.id"), nullable=False),
        sa.Column("instance_id", sa.String(36), sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("device", sa.Text(), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attached_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detach_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detached_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_volume_attachments_volume_id", "volume_attachments", ["volume_id"])
    op.create_index("ix_volume_attachments_instance_id", "volume_attachments", ["instance_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("volumes", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("volumes")
    op.drop_table("volume_attachments")
    op.drop_index("ix_volumes_claim", "volumes")
    with op.batch_alter_table("volumes") as batch:
        for col in (
            "next_attempt_at", "attempts", "last_used_at", "to_be_deleted", "instance_id",
            "fleet_id", "provisioning_data", "external", "external_id", "size_gb",
            "availability_zone", "region", "backend", "deleted_at",
        ):  # fmt: skip
            batch.drop_column(col)
