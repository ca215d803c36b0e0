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

from sqlalchemy import ColumnElement, and_, delete, func, or_, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, col, select

from watcher.errors import StoreError
from watcher.manifests import PlatformManifest, is_index
from watcher.reference import Digest, Platform, Reference, watch_name
from watcher.store.db import Database
from watcher.store.models import (
    CheckRecordRow,
    DigestPeriodRow,
    ImageRow,
    ManifestRow,
    NotificationRow,
    PlatformDigestRow,
)


class Outcome(enum.StrEnum):
    """What one check found."""

    FIRST_SEEN = "first_seen"
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class PlatformChange:
    """How one platform's manifest differs between two index digests."""

    platform: Platform
    old_digest: Digest | None
    new_digest: Digest | None


@dataclass(frozen=True, slots=True)
class Change:
    """A tag that now points at another digest (``old_digest`` None: a baseline).

    ``platforms`` lists, for an index whose platforms were read, every platform
    whose manifest differs from the previous period's; it is empty when nothing
    is known of the platforms, and ``platforms_known`` says which.
    """

    reference: Reference
    old_digest: Digest | None
    new_digest: Digest
    media_type: str
    detected_at: datetime
    platform: Platform | None = None
    platforms: tuple[PlatformChange, ...] = ()
    platforms_known: bool = False

    @property
    def name(self) -> str:
        """The watch's name: the reference, and its platform if any."""
        return watch_name(self.reference, self.platform)


@dataclass(frozen=True, slots=True)
class Current:
    """What the store holds as a watch's current digest.

    ``platforms`` is empty when the index's platforms were never read;
    ``platforms_wanted`` says they should have been: the tag moved to this index
    (a first sight reads none, on purpose) and the read could not be made.
    """

    digest: Digest
    media_type: str
    source_digest: Digest | None
    platforms: tuple[PlatformManifest, ...]
    platforms_wanted: bool = False


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
    """One stretch of time during which a tag pointed at one digest.

    ``platforms`` holds the index's platform manifests when they were read.
    """

    digest: Digest
    media_type: str
    first_seen: datetime
    last_seen: datetime
    ended_at: datetime | None
    platforms: tuple[PlatformManifest, ...] = ()


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
class CheckRecord:
    """One check of a watch, as recorded; ``error_reason`` is set for errors only.

    ``duration_ms`` is None when the caller did not time the check.
    """

    checked_at: datetime
    outcome: Outcome
    error_reason: str | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class PendingNotification:
    """An outbox entry still to be delivered."""

    id: int
    target: str
    title: str
    body: str
    attempts: int
    created_at: datetime


#: The sizes of the outbox's title and body columns.
MAX_TITLE_CHARS = 500
MAX_BODY_CHARS = 8000

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
        platform: Platform | None = None,
        source_digest: Digest | None = None,
        platforms: Sequence[PlatformManifest] | None = None,
        previous_platforms: Sequence[PlatformManifest] | None = None,
        duration_ms: int | None = None,
    ) -> Recorded:
        """Record that a watch resolved to ``digest`` at ``at``.

        An unchanged digest moves ``last_seen``; another digest closes the open
        period, opens a new one and writes the messages ``messages_for`` returns,
        all in one transaction.

        Args:
            platform: the platform a watch follows; ``digest`` is then that
                platform's manifest, read from the index ``source_digest``.
            platforms: the platform manifests of ``digest`` when it is an index
                that was read; stored with the new period and compared with the
                previous one's.
            previous_platforms: the platforms of the previous digest, read now
                because its period never had them; stored with that period.
            duration_ms: how long the check took, kept in its check record.
        """
        observed = _Observed(
            reference,
            digest,
            media_type,
            at,
            platform,
            source_digest,
            platforms,
            previous_platforms,
            duration_ms,
        )
        for attempt in range(_RECORD_ATTEMPTS):
            try:
                return self._record_digest(observed, messages_for, notify_first_seen)
            except IntegrityError:
                if attempt + 1 == _RECORD_ATTEMPTS:
                    raise
        msg = "unreachable: the last attempt re-raises"
        raise AssertionError(msg)  # pragma: no cover

    def _record_digest(
        self, seen: _Observed, messages_for: MessagesFor, notify_first_seen: bool
    ) -> Recorded:
        with self._transaction() as session:
            image = _image_for_update(session, seen.reference, seen.platform, seen.at)
            assert image.id is not None  # noqa: S101 - flushed by _image_for_update
            current = _open_period(session, image.id)
            image.last_check_at = seen.at
            image.last_error = image.last_error_reason = None
            image.source_digest = _text(seen.source_digest)

            if current is not None and current.digest == str(seen.digest):
                current.last_seen = seen.at
                image.last_outcome = Outcome.UNCHANGED
                session.add_all(
                    [current, image, _check_row(image, seen, Outcome.UNCHANGED)]
                )
                return Recorded(Outcome.UNCHANGED, seen.digest, None, 0)

            previous = Digest.parse(current.digest) if current else None
            before = _platforms(session, current.id) if current else ()
            if current is not None and not before and seen.previous_platforms:
                before = _save_platforms(session, current, seen.previous_platforms)
            if current is not None:
                current.ended_at = seen.at
                session.add(current)
                session.flush()

            period = _open(session, image.id, seen)
            change = Change(
                seen.reference,
                previous,
                seen.digest,
                seen.media_type,
                seen.at,
                platform=seen.platform,
                platforms=_platform_changes(before, seen.platforms),
                platforms_known=bool(before) and seen.platforms is not None,
            )
            outcome = Outcome.CHANGED if previous else Outcome.FIRST_SEEN
            owed = messages_for(change) if previous or notify_first_seen else ()
            for message in owed:
                session.add(_outbox_row(period, message, seen.at))

            image.last_outcome = outcome
            if previous is not None:
                image.last_change_at = seen.at
            session.add_all([image, _check_row(image, seen, outcome)])
            return Recorded(outcome, previous, change, len(owed))

    def current(
        self, reference: Reference, platform: Platform | None = None
    ) -> Current | None:
        """The digest a watch points at now, as last recorded, or None."""
        with self._transaction() as session:
            statement = (
                select(ImageRow, DigestPeriodRow)
                .join(
                    DigestPeriodRow, col(DigestPeriodRow.image_id) == col(ImageRow.id)
                )
                .where(ImageRow.reference == watch_name(reference, platform))
                .where(col(DigestPeriodRow.ended_at).is_(None))
            )
            row = session.exec(statement).first()
            if row is None:
                return None
            image, period = row
            source = Digest.parse(image.source_digest) if image.source_digest else None
            platforms = _platforms(session, period.id)
            moved_here = session.exec(
                select(func.count())
                .select_from(DigestPeriodRow)
                .where(DigestPeriodRow.image_id == image.id)
                .where(col(DigestPeriodRow.ended_at).is_not(None))
            ).one()
            wanted = is_index(period.media_type) and not platforms and moved_here > 0
            return Current(
                Digest.parse(period.digest),
                period.media_type,
                source,
                platforms,
                wanted,
            )

    def add_platforms(
        self,
        reference: Reference,
        digest: Digest,
        platforms: Sequence[PlatformManifest],
    ) -> bool:
        """Give the open period of ``reference`` at ``digest`` platforms read late.

        Returns False (and changes nothing) when the tag has moved on since, or
        the period has its platforms already.
        """
        with self._transaction() as session:
            statement = (
                select(DigestPeriodRow)
                .join(ImageRow, col(ImageRow.id) == col(DigestPeriodRow.image_id))
                .where(ImageRow.reference == watch_name(reference))
                .where(col(DigestPeriodRow.ended_at).is_(None))
                .where(DigestPeriodRow.digest == str(digest))
            )
            period = session.exec(statement).first()
            if period is None or _platforms(session, period.id):
                return False
            _save_platforms(session, period, platforms)
            return True

    def manifest(self, digest: Digest) -> bytes | None:
        """The body of a manifest fetched before, by its digest, or None."""
        with self._transaction() as session:
            row = session.get(ManifestRow, str(digest))
            return bytes(row.body) if row is not None else None

    def save_manifest(
        self, digest: Digest, media_type: str, body: bytes, at: datetime
    ) -> None:
        """Keep a fetched manifest; content is addressed by digest, so once is enough."""
        try:
            with self._transaction() as session:
                if session.get(ManifestRow, str(digest)) is None:
                    session.add(
                        ManifestRow(
                            digest=str(digest),
                            media_type=media_type,
                            body=body,
                            fetched_at=at,
                        )
                    )
        except IntegrityError:
            return  # another writer saved the same bytes first

    def record_failure(
        self,
        reference: Reference,
        at: datetime,
        reason: str,
        message: str,
        platform: Platform | None = None,
        *,
        duration_ms: int | None = None,
    ) -> None:
        """Record that a check of a watch failed; its digest history is untouched.

        ``reason`` (a short closed-set word) goes into the check record too;
        ``message`` is kept only as the watch's latest error.
        """
        with self._transaction() as session:
            image = _image_for_update(session, reference, platform, at)
            assert image.id is not None  # noqa: S101 - flushed by _image_for_update
            image.last_check_at = at
            image.last_outcome = Outcome.ERROR
            image.last_error_reason = reason
            image.last_error = message[:2000]
            record = CheckRecordRow(
                image_id=image.id,
                checked_at=at,
                outcome=Outcome.ERROR,
                error_reason=reason,
                duration_ms=duration_ms,
            )
            session.add_all([image, record])

    def check_records(
        self, reference: Reference, platform: Platform | None = None, limit: int = 100
    ) -> list[CheckRecord]:
        """The latest ``limit`` check records of a watch, newest first."""
        with self._transaction() as session:
            statement = (
                select(CheckRecordRow)
                .join(ImageRow, col(ImageRow.id) == col(CheckRecordRow.image_id))
                .where(ImageRow.reference == watch_name(reference, platform))
                .order_by(col(CheckRecordRow.checked_at).desc())
                .order_by(col(CheckRecordRow.id).desc())
                .limit(limit)
            )
            return [_check_record(row) for row in session.exec(statement)]

    def prune_checks(self, before: datetime) -> int:
        """Delete the check records of checks made before ``before``; return how many.

        Only check records go: digest periods, platforms, manifests and the
        outbox are never pruned here, whatever their age.
        """
        # SQLite compares the stored UTC text, so the cutoff must be UTC too.
        cutoff = before.astimezone(UTC) if before.tzinfo else before
        with self._transaction() as session:
            statement = delete(CheckRecordRow).where(
                col(CheckRecordRow.checked_at) < cutoff
            )
            result = session.execute(statement)
            return int(result.rowcount)  # type: ignore[attr-defined]  # CursorResult

    def history(
        self, reference: Reference, platform: Platform | None = None
    ) -> list[Period]:
        """The digest periods of a watch, oldest first (empty when unknown)."""
        with self._transaction() as session:
            statement = (
                select(DigestPeriodRow)
                .join(ImageRow, col(ImageRow.id) == col(DigestPeriodRow.image_id))
                .where(ImageRow.reference == watch_name(reference, platform))
                .order_by(col(DigestPeriodRow.first_seen), col(DigestPeriodRow.id))
            )
            rows = list(session.exec(statement))
            return [_period(row, _platforms(session, row.id)) for row in rows]

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
        """Pending outbox entries due now and claimed by no one, oldest first."""
        with self._transaction() as session:
            statement = (
                select(NotificationRow)
                .where(_claimable(now))
                .order_by(col(NotificationRow.id))
                .limit(limit)
            )
            return [_pending(row) for row in session.exec(statement)]

    def claim(self, notification_id: int, now: datetime, until: datetime) -> bool:
        """Claim one due entry until ``until``; False when another holds or sent it.

        A conditional update: of two deliverers (two processes, or two replicas
        on one PostgreSQL) racing for one message, exactly one wins.
        """
        with self._transaction() as session:
            statement = (
                update(NotificationRow)
                .where(col(NotificationRow.id) == notification_id)
                .where(_claimable(now))
                .values(claimed_until=until)
            )
            return bool(session.execute(statement).rowcount == 1)  # type: ignore[attr-defined]  # CursorResult

    def retry_failed(self, now: datetime) -> int:
        """Make every failed notification pending again, due now; returns how many."""
        with self._transaction() as session:
            statement = (
                update(NotificationRow)
                .where(col(NotificationRow.status) == "failed")
                .values(status="pending", next_attempt_at=now, claimed_until=None)
            )
            return int(session.execute(statement).rowcount)  # type: ignore[attr-defined]  # CursorResult

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
            row.claimed_until = None
            session.add(row)

    def mark_attempt_failed(
        self, notification_id: int, error: str, retry_at: datetime | None
    ) -> None:
        """Record a failed delivery: retried at ``retry_at``, or failed for good."""
        with self._transaction() as session:
            row = _notification(session, notification_id)
            row.attempts += 1
            row.last_error = error[:2000]
            row.claimed_until = None
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
                    msg = f"write history: {_fault(error)}"
                    raise StoreError(msg) from error
                return
            self._session.rollback()
        if isinstance(exc, SQLAlchemyError) and not isinstance(exc, IntegrityError):
            msg = f"database: {_fault(exc)}"
            raise StoreError(msg) from exc


@dataclass(frozen=True, slots=True)
class _Observed:
    """What one check saw, as ``record_digest`` was given it."""

    reference: Reference
    digest: Digest
    media_type: str
    at: datetime
    platform: Platform | None
    source_digest: Digest | None
    platforms: Sequence[PlatformManifest] | None
    previous_platforms: Sequence[PlatformManifest] | None
    duration_ms: int | None


def _image_for_update(
    session: Session, reference: Reference, platform: Platform | None, at: datetime
) -> ImageRow:
    name = watch_name(reference, platform)
    image = session.exec(select(ImageRow).where(ImageRow.reference == name)).first()
    if image is None:
        image = ImageRow(
            reference=name,
            registry_name=reference.registry,
            repository=reference.repository,
            tag=reference.tag_or_digest,
            platform=str(platform) if platform else None,
            created_at=at,
        )
        session.add(image)
        session.flush()
    return image


def _check_row(image: ImageRow, seen: _Observed, outcome: Outcome) -> CheckRecordRow:
    assert image.id is not None  # noqa: S101 - flushed by _image_for_update
    return CheckRecordRow(
        image_id=image.id,
        checked_at=seen.at,
        outcome=outcome,
        duration_ms=seen.duration_ms,
    )


def _open_period(session: Session, image_id: int) -> DigestPeriodRow | None:
    statement = (
        select(DigestPeriodRow)
        .where(DigestPeriodRow.image_id == image_id)
        .where(col(DigestPeriodRow.ended_at).is_(None))
    )
    return session.exec(statement).first()


def _open(session: Session, image_id: int, seen: _Observed) -> DigestPeriodRow:
    period = DigestPeriodRow(
        image_id=image_id,
        digest=str(seen.digest),
        media_type=seen.media_type,
        first_seen=seen.at,
        last_seen=seen.at,
    )
    session.add(period)
    session.flush()
    _save_platforms(session, period, seen.platforms or ())
    return period


def _save_platforms(
    session: Session, period: DigestPeriodRow, entries: Sequence[PlatformManifest]
) -> tuple[PlatformManifest, ...]:
    assert period.id is not None  # noqa: S101 - periods are flushed first
    for entry in entries:
        session.add(
            PlatformDigestRow(
                period_id=period.id,
                platform=str(entry.platform),
                digest=str(entry.digest),
                media_type=entry.media_type,
            )
        )
    return tuple(sorted(entries))


def _platforms(session: Session, period_id: int | None) -> tuple[PlatformManifest, ...]:
    statement = (
        select(PlatformDigestRow)
        .where(PlatformDigestRow.period_id == period_id)
        .order_by(col(PlatformDigestRow.platform))
    )
    return tuple(
        PlatformManifest(
            Platform.parse(row.platform), Digest.parse(row.digest), row.media_type
        )
        for row in session.exec(statement)
    )


def _platform_changes(
    before: Sequence[PlatformManifest], after: Sequence[PlatformManifest] | None
) -> tuple[PlatformChange, ...]:
    """Platforms added, removed or rebuilt between two indexes, by platform."""
    if after is None:
        return ()
    old = {entry.platform: entry.digest for entry in before}
    new = {entry.platform: entry.digest for entry in after}
    return tuple(
        PlatformChange(platform, old.get(platform), new.get(platform))
        for platform in sorted(old.keys() | new.keys())
        if old.get(platform) != new.get(platform)
    )


def _text(digest: Digest | None) -> str | None:
    return str(digest) if digest is not None else None


def _claimable(now: datetime) -> ColumnElement[bool]:
    """A pending entry, due, and claimed by no deliverer that is still alive."""
    return and_(
        col(NotificationRow.status) == "pending",
        col(NotificationRow.next_attempt_at) <= now,
        or_(
            col(NotificationRow.claimed_until).is_(None),
            col(NotificationRow.claimed_until) <= now,
        ),
    )


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
        # The columns are bounded (PostgreSQL enforces it); messages are built
        # to fit, and a template that runs long is cut rather than lost.
        title=_fit(message.title, MAX_TITLE_CHARS),
        body=_fit(message.body, MAX_BODY_CHARS),
        created_at=at,
        next_attempt_at=at,
    )


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fault(exc: SQLAlchemyError) -> str:
    """A database fault in one line: its class and the driver's first line."""
    cause = getattr(exc, "orig", None) or exc
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first}"


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _period(row: DigestPeriodRow, platforms: tuple[PlatformManifest, ...]) -> Period:
    first_seen, last_seen = _utc(row.first_seen), _utc(row.last_seen)
    assert first_seen is not None  # noqa: S101 - NOT NULL
    assert last_seen is not None  # noqa: S101 - NOT NULL
    return Period(
        Digest.parse(row.digest),
        row.media_type,
        first_seen,
        last_seen,
        _utc(row.ended_at),
        platforms,
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


def _check_record(row: CheckRecordRow) -> CheckRecord:
    checked_at = _utc(row.checked_at)
    assert checked_at is not None  # noqa: S101 - NOT NULL
    return CheckRecord(
        checked_at, Outcome(row.outcome), row.error_reason, row.duration_ms
    )


def _pending(row: NotificationRow) -> PendingNotification:
    assert row.id is not None  # noqa: S101 - read from the database
    created_at = _utc(row.created_at)
    assert created_at is not None  # noqa: S101 - NOT NULL
    return PendingNotification(
        row.id, row.target, row.title, row.body, row.attempts, created_at
    )
