"""Check records: one row per check, pruned by ``Store.prune_checks``.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from watcher.store.migrations import forward_only

revision = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    """Create the check_record table; earlier checks left no records to copy."""
    op.create_table(
        "check_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error_reason", sa.String(length=32), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["image.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_check_record_checked_at", "check_record", ["checked_at"])
    op.create_index(
        "ix_check_record_image_id_checked_at",
        "check_record",
        ["image_id", "checked_at"],
    )


def downgrade() -> None:
    """Refused: migrations only go forward."""
    forward_only(revision)
