"""Digest history and the notification outbox: every query watcher makes.

Comparing a digest with the last one and recording it happen in one transaction,
so the store is where a change is decided. The messages a change owes are written
in that same transaction. Everything returned is a plain dataclass.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, col, select

from watcher.errors import StoreError
from watcher.reference import Digest, Reference
from watcher.store.db import Database
from watcher.store.models import DigestPeriodRow, ImageRow, NotificationRow


class Outcome(enum.StrEnum):
    """What one check found."""

    FIRST_SEEN = "first_seen"
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Change:
    """A tag that now points at another digest (``old_digest`` None: a baseline)."""

    reference: Reference
    old_digest: Digest | None
    new_digest: Digest
    media_type: str
    detected_at: datetime


@dataclass(frozen=True, slots=True)
class OwedMessage:
    """A message a change owes one notification target."""

    target: str
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class Recorded:
    """The outcome of recording one digest."""

    outcome: Outcome
    previous_digest: Digest | None
    change: Change | None
    notifications: int


@dataclass(frozen=True, slots=True)
class Period:
    """One stretch of time during which a tag pointed at one digest."""

    digest: Digest
    media_type: str
    first_seen: datetime
    last_seen: datetime
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class ImageStatus:
    """A watched reference as the store last saw it."""

    reference: str
    digest: Digest | None
    media_type: str | None
    since: datetime | None
    last_check_at: datetime | None
    last_outcome: Outcome | None
    last_error: str | None
    last_error_reason: str | None
    last_change_at: datetime | None


@dataclass(frozen=True, slots=True)
class PendingNotification:
    """An outbox entry still to be delivered."""

    id: int
    target: str
    title: str
    body: str
    attempts: int
    created_at: datetime


MessagesFor = Callable[[Change], Sequence[OwedMessage]]

# Two writers racing to open the same period collide on the unique index; the
# loser reads again and finds the winner's row. One retry settles it.
_RECORD_ATTEMPTS = 2


class Store:
    """Reads and writes history; each method is one transaction.

    Methods are blocking: the service calls them from its single writer thread
    (``watcher.store.AsyncStore``) so that the network work never waits on them.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._sessions = sessionmaker(
            database.engine, class_=Session, expire_on_commit=False
        )

    def record_digest(
        self,
        reference: Reference,
        digest: Digest,
        media_type: str,
        at: datetime,
        messages_for: MessagesFor,
        *,
        notify_first_seen: bool = False,
    ) -> Recorded:
        """Record that ``reference`` resolved to ``digest`` at ``at``.

        An unchanged digest moves ``last_seen``; another digest closes the open
        period, opens a new one and writes the messages ``messages_for`` returns,
        all in one transaction.
        """
        for attempt in range(_RECORD_ATTEMPTS):
            try:
                return self._record_digest(
                    reference, digest, media_type, at, messages_for, notify_first_seen
                )
            except IntegrityError:
                if attempt + 1 == _RECORD_ATTEMPTS:
                    raise
        msg = "unreachable: the last attempt re-raises"
        raise AssertionError(msg)  # pragma: no cover

    def _record_digest(
        self,
        reference: Reference,
        digest: Digest,
        media_type: str,
        at: datetime,
        messages_for: MessagesFor,
        notify_first_seen: bool,
    ) -> Recorded:
        with self._transaction() as session:
            image = _image_for_update(session, reference, at)
            assert image.id is not None  # noqa: S101 - flushed by _image_for_update
            current = _open_period(session, image.id)
            image.last_check_at = at
            image.last_error = image.last_error_reason = None

            if current is not None and current.digest == str(digest):
                current.last_seen = at
                image.last_outcome = Outcome.UNCHANGED
                session.add_all([current, image])
                return Recorded(Outcome.UNCHANGED, digest, None, 0)

            previous = Digest.parse(current.digest) if current else None
            if current is not None:
                current.ended_at = at
                session.add(current)
                session.flush()

            period = DigestPeriodRow(
                image_id=image.id,
                digest=str(digest),
                media_type=media_type,
                first_seen=at,
                last_seen=at,
            )
            session.add(period)
            session.flush()

            change = Change(reference, previous, digest, media_type, at)
            outcome = Outcome.CHANGED if previous else Outcome.FIRST_SEEN
            owed = messages_for(change) if previous or notify_first_seen else ()
            for message in owed:
                session.add(_outbox_row(period, message, at))

            image.last_outcome = outcome
            if previous is not None:
                image.last_change_at = at
            session.add(image)
            return Recorded(outcome, previous, change, len(owed))

    def record_failure(
        self, reference: Reference, at: datetime, reason: str, message: str
    ) -> None:
        """Record that a check of ``reference`` failed; its history is untouched."""
        with self._transaction() as session:
            image = _image_for_update(session, reference, at)
            image.last_check_at = at
            image.last_outcome = Outcome.ERROR
            image.last_error_reason = reason
            image.last_error = message[:2000]
            session.add(image)

    def history(self, reference: Reference) -> list[Period]:
        """The digest periods of ``reference``, oldest first (empty when unknown)."""
        with self._transaction() as session:
            statement = (
                select(DigestPeriodRow)
                .join(ImageRow, col(ImageRow.id) == col(DigestPeriodRow.image_id))
                .where(ImageRow.reference == str(reference))
                .order_by(col(DigestPeriodRow.first_seen), col(DigestPeriodRow.id))
            )
            return [_period(row) for row in session.exec(statement)]

    def statuses(self) -> list[ImageStatus]:
        """Every reference the store knows, with its current digest, by name."""
        with self._transaction() as session:
            statement = (
                select(ImageRow, DigestPeriodRow)
                .outerjoin(
                    DigestPeriodRow,
                    (col(DigestPeriodRow.image_id) == col(ImageRow.id))
                    & col(DigestPeriodRow.ended_at).is_(None),
                )
                .order_by(col(ImageRow.reference))
            )
            return [_status(image, period) for image, period in session.exec(statement)]

    def due_notifications(
        self, now: datetime, limit: int = 100
    ) -> list[PendingNotification]:
        """Pending outbox entries whose next attempt is due, oldest first."""
        with self._transaction() as session:
            statement = (
                select(NotificationRow)
                .where(NotificationRow.status == "pending")
                .where(col(NotificationRow.next_attempt_at) <= now)
                .order_by(col(NotificationRow.id))
                .limit(limit)
            )
            return [_pending(row) for row in session.exec(statement)]

    def count_pending(self) -> int:
        """How many notifications are owed and not yet delivered."""
        with self._transaction() as session:
            statement = select(func.count()).where(NotificationRow.status == "pending")
            return int(session.exec(statement).one())

    def mark_delivered(self, notification_id: int, at: datetime) -> None:
        """Record that a notification was delivered; it is never sent again."""
        with self._transaction() as session:
            row = _notification(session, notification_id)
            row.status = "delivered"
            row.delivered_at = at
            row.attempts += 1
            row.last_error = None
            session.add(row)

    def mark_attempt_failed(
        self, notification_id: int, error: str, retry_at: datetime | None
    ) -> None:
        """Record a failed delivery: retried at ``retry_at``, or failed for good."""
        with self._transaction() as session:
            row = _notification(session, notification_id)
            row.attempts += 1
            row.last_error = error[:2000]
            if retry_at is None:
                row.status = "failed"
            else:
                row.next_attempt_at = retry_at
            session.add(row)

    def close(self) -> None:
        """Close the database connections."""
        self._database.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._sessions)


class _Transaction:
    """A session that commits on success and turns database faults into StoreError."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._session: Session | None = None

    def __enter__(self) -> Session:
        self._session = self._sessions()
        return self._session

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        assert self._session is not None  # noqa: S101 - set by __enter__
        with self._session:
            if exc is None:
                try:
                    self._session.commit()
                except IntegrityError:
                    raise
                except SQLAlchemyError as error:
                    msg = f"write history: {error.__class__.__name__}: {error}"
                    raise StoreError(msg) from error
                return
            self._session.rollback()
        if isinstance(exc, SQLAlchemyError) and not isinstance(exc, IntegrityError):
            msg = f"database: {exc.__class__.__name__}: {exc}"
            raise StoreError(msg) from exc


def _image_for_update(session: Session, reference: Reference, at: datetime) -> ImageRow:
    statement = select(ImageRow).where(ImageRow.reference == str(reference))
    image = session.exec(statement).first()
    if image is None:
        image = ImageRow(
            reference=str(reference),
            registry_name=reference.registry,
            repository=reference.repository,
            tag=reference.tag_or_digest,
            created_at=at,
        )
        session.add(image)
        session.flush()
    return image


def _open_period(session: Session, image_id: int) -> DigestPeriodRow | None:
    statement = (
        select(DigestPeriodRow)
        .where(DigestPeriodRow.image_id == image_id)
        .where(col(DigestPeriodRow.ended_at).is_(None))
    )
    return session.exec(statement).first()


def _notification(session: Session, notification_id: int) -> NotificationRow:
    row = session.get(NotificationRow, notification_id)
    if row is None:
        msg = f"notification {notification_id} is not in the outbox"
        raise StoreError(msg)
    return row


def _outbox_row(
    period: DigestPeriodRow, message: OwedMessage, at: datetime
) -> NotificationRow:
    assert period.id is not None  # noqa: S101 - flushed before this is called
    return NotificationRow(
        period_id=period.id,
        target=message.target,
        title=message.title,
        body=message.body,
        created_at=at,
        next_attempt_at=at,
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _period(row: DigestPeriodRow) -> Period:
    first_seen, last_seen = _utc(row.first_seen), _utc(row.last_seen)
    assert first_seen is not None  # noqa: S101 - NOT NULL
    assert last_seen is not None  # noqa: S101 - NOT NULL
    return Period(
        Digest.parse(row.digest),
        row.media_type,
        first_seen,
        last_seen,
        _utc(row.ended_at),
    )


def _status(image: ImageRow, period: DigestPeriodRow | None) -> ImageStatus:
    return ImageStatus(
        reference=image.reference,
        digest=Digest.parse(period.digest) if period else None,
        media_type=period.media_type if period else None,
        since=_utc(period.first_seen) if period else None,
        last_check_at=_utc(image.last_check_at),
        last_outcome=Outcome(image.last_outcome) if image.last_outcome else None,
        last_error=image.last_error,
        last_error_reason=image.last_error_reason,
        last_change_at=_utc(image.last_change_at),
    )


def _pending(row: NotificationRow) -> PendingNotification:
    assert row.id is not None  # noqa: S101 - read from the database
    created_at = _utc(row.created_at)
    assert created_at is not None  # noqa: S101 - NOT NULL
    return PendingNotification(
        row.id, row.target, row.title, row.body, row.attempts, created_at
    )
