"""Platform watches, index platforms, kept manifests and the outbox's claim lease.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from watcher.store.migrations import forward_only

revision = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    """Add the columns and tables of the second schema; existing rows keep NULLs."""
    with op.batch_alter_table("image") as image:
        image.add_column(sa.Column("platform", sa.String(length=64), nullable=True))
        image.add_column(
            sa.Column("source_digest", sa.String(length=160), nullable=True)
        )
    with op.batch_alter_table("notification") as notification:
        notification.add_column(
            sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True)
        )

    op.create_table(
        "platform_digest",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("period_id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("media_type", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["period_id"], ["digest_period.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("period_id", "platform", name="one_per_platform"),
    )
    op.create_index("ix_platform_digest_period_id", "platform_digest", ["period_id"])
    op.create_table(
        "manifest",
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("media_type", sa.String(length=255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )


def downgrade() -> None:
    """Refused: migrations only go forward."""
    forward_only(revision)
