"""SQLModel tables. Rows never leave ``watcher.store``: queries return dataclasses.

Times are stored as UTC. SQLite keeps no zone, so ``history.py`` marks every
time it reads as UTC again. A change here needs a migration in ``migrations/``
that brings existing databases to the same schema; a test compares the two.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, Index, LargeBinary, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def _utc_column(*, nullable: bool) -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=nullable)


class ImageRow(SQLModel, table=True):
    """A watched reference and the outcome of its latest check."""

    __tablename__ = "image"

    id: int | None = Field(default=None, primary_key=True)
    #: The watch's name: the normalised reference, and its platform if any.
    reference: str = Field(unique=True, max_length=400)
    # "registry" is reserved by SQLAlchemy's declarative base.
    registry_name: str = Field(max_length=255)
    repository: str = Field(max_length=255)
    tag: str = Field(max_length=128)
    #: The one platform this watch follows inside the tag's index, if any.
    platform: str | None = Field(default=None, max_length=64)
    #: For a platform watch, the index digest its current digest was read from.
    source_digest: str | None = Field(default=None, max_length=160)
    created_at: datetime = Field(sa_column=_utc_column(nullable=False))
    last_check_at: datetime | None = Field(
        default=None, sa_column=_utc_column(nullable=True)
    )
    last_outcome: str | None = Field(default=None, max_length=16)
    last_error_reason: str | None = Field(default=None, max_length=32)
    last_error: str | None = Field(default=None, max_length=2000)
    last_change_at: datetime | None = Field(
        default=None, sa_column=_utc_column(nullable=True)
    )


class DigestPeriodRow(SQLModel, table=True):
    """One stretch of time during which a tag pointed at one digest.

    ``ended_at`` is set when a check saw another digest; the period without it is
    the current one, and a partial unique index keeps it the only one.
    """

    __tablename__ = "digest_period"
    __table_args__ = (
        Index(
            "one_open_period_per_image",
            "image_id",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    image_id: int = Field(foreign_key="image.id", index=True)
    digest: str = Field(max_length=160)
    media_type: str = Field(max_length=255)
    first_seen: datetime = Field(sa_column=_utc_column(nullable=False))
    last_seen: datetime = Field(sa_column=_utc_column(nullable=False))
    ended_at: datetime | None = Field(
        default=None, sa_column=_utc_column(nullable=True)
    )


class NotificationRow(SQLModel, table=True):
    """A message owed to one target for one new digest period: the outbox.

    Written in the transaction that records the change, so a crash can lose
    neither; the unique constraint makes a second message for the same period
    and target impossible.
    """

    __tablename__ = "notification"
    __table_args__ = (UniqueConstraint("period_id", "target", name="one_per_target"),)

    id: int | None = Field(default=None, primary_key=True)
    period_id: int = Field(foreign_key="digest_period.id", index=True)
    target: str = Field(max_length=64)
    title: str = Field(max_length=500)
    body: str = Field(max_length=8000)
    status: str = Field(default="pending", max_length=16, index=True)
    attempts: int = 0
    created_at: datetime = Field(sa_column=_utc_column(nullable=False))
    next_attempt_at: datetime = Field(sa_column=_utc_column(nullable=False))
    #: A deliverer that claimed the message holds it until then; past that time
    #: (the deliverer died) another may claim it.
    claimed_until: datetime | None = Field(
        default=None, sa_column=_utc_column(nullable=True)
    )
    delivered_at: datetime | None = Field(
        default=None, sa_column=_utc_column(nullable=True)
    )
    last_error: str | None = Field(default=None, max_length=2000)


class PlatformDigestRow(SQLModel, table=True):
    """One platform's manifest digest inside the index of a digest period."""

    __tablename__ = "platform_digest"
    __table_args__ = (
        UniqueConstraint("period_id", "platform", name="one_per_platform"),
    )

    id: int | None = Field(default=None, primary_key=True)
    period_id: int = Field(foreign_key="digest_period.id", index=True)
    platform: str = Field(max_length=64)
    digest: str = Field(max_length=160)
    media_type: str = Field(max_length=255)


class ManifestRow(SQLModel, table=True):
    """A manifest fetched once and kept by digest: content never changes."""

    __tablename__ = "manifest"

    digest: str = Field(primary_key=True, max_length=160)
    media_type: str = Field(max_length=255)
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    fetched_at: datetime = Field(sa_column=_utc_column(nullable=False))


class CheckRecordRow(SQLModel, table=True):
    """One check of a watch: when, what it found and how long it took.

    Unlike digest periods these grow with every check; ``Store.prune_checks``
    keeps them bounded.
    """

    __tablename__ = "check_record"
    __table_args__ = (
        Index("ix_check_record_image_id_checked_at", "image_id", "checked_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    image_id: int = Field(foreign_key="image.id")
    checked_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )
    outcome: str = Field(max_length=16)
    error_reason: str | None = Field(default=None, max_length=32)
    duration_ms: int | None = None
