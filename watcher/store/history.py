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
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Result,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    update,
)
from sqlalchemy import select as core_select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, SQLModel, col, select

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
    #: Where it is stored, so that ``Store.record_unchanged`` needs no lookup.
    image_id: int | None = None
    period_id: int | None = None


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A check that found the digest ``current`` holds, to record in a batch."""

    current: Current
    at: datetime
    #: For a platform watch, the index the digest was read from (it may move
    #: while the platform's manifest stays the same).
    source_digest: Digest | None = None
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class FirstSeen:
    """A check of a watch the store has never seen, to record in a batch.

    Only for a first sight that owes no message: one with messages takes
    ``record_digest``, which writes them in the same transaction.
    """

    reference: Reference
    platform: Platform | None
    digest: Digest
    media_type: str
    at: datetime
    source_digest: Digest | None = None
    duration_ms: int | None = None

    @property
    def name(self) -> str:
        return watch_name(self.reference, self.platform)


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
#: PostgreSQL's deadlock_detected and serialization_failure: the transaction was
#: rolled back and may simply be run again.
_TRANSIENT_STATES = frozenset({"40P01", "40001"})
_TRANSIENT_ATTEMPTS = 3
_T = TypeVar("_T")
# Names per IN (...) list: well under SQLite's and PostgreSQL's parameter limits.
_NAMES_PER_QUERY = 500


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
                return _retried(
                    lambda: self._record_digest(
                        observed, messages_for, notify_first_seen
                    )
                )
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

    def record_unchanged(self, batch: Sequence[Unchanged]) -> list[bool]:
        """Record many checks that found their current digest, in one transaction.

        The fast path of ``record_digest``: plain statements by primary key, no
        lookup. An entry whose period is no longer open with that digest (another
        process recorded a change since ``current`` was read) is left out and
        answered False: record it with ``record_digest``.

        Rows are updated in key order, so two processes writing batches that
        overlap wait for each other instead of deadlocking; a transaction the
        database aborts anyway (deadlock, serialization) is run again.
        """
        ordered = sorted(
            range(len(batch)), key=lambda i: batch[i].current.period_id or 0
        )
        applied = _retried(lambda: self._record_unchanged([batch[i] for i in ordered]))
        answers = [False] * len(batch)
        for position, index in enumerate(ordered):
            answers[index] = applied[position]
        return answers

    def _record_unchanged(self, batch: Sequence[Unchanged]) -> list[bool]:
        seen = [
            {
                "period": item.current.period_id,
                "seen_digest": str(item.current.digest),
                "at": item.at,
            }
            for item in batch
        ]
        with self._transaction() as session:
            connection = session.connection()
            applied = [True] * len(batch)
            # All at once; only if some period was closed meanwhile, one by one
            # to find which (setting last_seen again changes nothing).
            sane = connection.dialect.supports_sane_multi_rowcount
            if not sane or _rowcount(connection.execute(_SEEN_AGAIN, seen)) != len(
                seen
            ):
                applied = [
                    _rowcount(connection.execute(_SEEN_AGAIN, values)) == 1
                    for values in seen
                ]
            done = [item for item, ok in zip(batch, applied, strict=True) if ok]
            if done:
                connection.execute(
                    update(ImageRow).where(col(ImageRow.id) == bindparam("image_id")),
                    [_unchanged_image(item) for item in done],
                )
                connection.execute(
                    insert(_table(CheckRecordRow)),
                    [
                        _check_values(
                            item.current.image_id,
                            item.at,
                            Outcome.UNCHANGED,
                            item.duration_ms,
                        )
                        for item in done
                    ],
                )
        return applied

    def record_first_seen(self, batch: Sequence[FirstSeen]) -> list[bool]:
        """Record many first sights (no message owed) in one transaction.

        The fast path of ``record_digest`` for a cold start. A watch that has a
        row already (a failed check, or another process got there first) is left
        out and answered False: record it with ``record_digest``. A transaction
        the database aborts (deadlock, serialization) is run again.
        """
        return _retried(lambda: self._record_first_seen(batch))

    def _record_first_seen(self, batch: Sequence[FirstSeen]) -> list[bool]:
        images, periods = _table(ImageRow), _table(DigestPeriodRow)
        names = [item.name for item in batch]
        try:
            with self._transaction() as session:
                connection = session.connection()
                taken = set(_image_ids(connection, names))
                new = {item.name: item for item in batch if item.name not in taken}
                if new:
                    connection.execute(
                        insert(images), [_first_image(item) for item in new.values()]
                    )
                    ids = _image_ids(connection, list(new))
                    connection.execute(
                        insert(periods),
                        [_first_period(ids[name], item) for name, item in new.items()],
                    )
                    connection.execute(
                        insert(_table(CheckRecordRow)),
                        [
                            _check_values(
                                ids[name], item.at, Outcome.FIRST_SEEN, item.duration_ms
                            )
                            for name, item in new.items()
                        ],
                    )
        except IntegrityError:
            # Another process inserted one of these watches after the lookup.
            return [False] * len(batch)
        return [name in new for name in names]

    def current(
        self, reference: Reference, platform: Platform | None = None
    ) -> Current | None:
        """The digest a watch points at now, as last recorded, or None."""
        name = watch_name(reference, platform)
        return self.currents([name]).get(name)

    def currents(self, names: Sequence[str]) -> dict[str, Current]:
        """``current`` for many watches by name, in a few queries; absent: never seen."""
        found: dict[str, Current] = {}
        with self._transaction() as session:
            connection = session.connection()
            wanted = list(dict.fromkeys(names))
            for start in range(0, len(wanted), _NAMES_PER_QUERY):
                chunk = wanted[start : start + _NAMES_PER_QUERY]
                found.update(_currents(connection, chunk))
        return found

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
            return _rowcount(session.execute(statement))

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
            return _rowcount(session.execute(statement)) == 1

    def retry_failed(self, now: datetime) -> int:
        """Make every failed notification pending again, due now; returns how many."""
        with self._transaction() as session:
            statement = (
                update(NotificationRow)
                .where(col(NotificationRow.status) == "failed")
                .values(status="pending", next_attempt_at=now, claimed_until=None)
            )
            return _rowcount(session.execute(statement))

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


def _currents(connection: Connection, names: Sequence[str]) -> dict[str, Current]:
    images, periods = _table(ImageRow), _table(DigestPeriodRow)
    image, period = images.c, periods.c
    rows = connection.execute(
        core_select(
            image.id,
            image.reference,
            image.source_digest,
            period.id.label("period_id"),
            period.digest,
            period.media_type,
        )
        .join_from(images, periods)
        .where(image.reference.in_(names))
        .where(period.ended_at.is_(None))
    ).all()
    if not rows:
        return {}

    platforms: dict[int, list[PlatformManifest]] = {}
    entries = _table(PlatformDigestRow).c
    for period_id, platform, digest, media_type in connection.execute(
        core_select(
            entries.period_id, entries.platform, entries.digest, entries.media_type
        ).where(entries.period_id.in_([row.period_id for row in rows]))
    ):
        platforms.setdefault(period_id, []).append(
            PlatformManifest(Platform.parse(platform), Digest.parse(digest), media_type)
        )
    # A tag that moved to its current digest, rather than being first seen on it.
    moved = set(
        connection.execute(
            core_select(period.image_id)
            .where(period.image_id.in_([row.id for row in rows]))
            .where(period.ended_at.is_not(None))
            .distinct()
        ).scalars()
    )
    found = {}
    for row in rows:
        read = tuple(sorted(platforms.get(row.period_id, ())))
        found[row.reference] = Current(
            Digest.parse(row.digest),
            row.media_type,
            Digest.parse(row.source_digest) if row.source_digest else None,
            read,
            platforms_wanted=is_index(row.media_type) and not read and row.id in moved,
            image_id=row.id,
            period_id=row.period_id,
        )
    return found


def _retried(write: Callable[[], _T]) -> _T:
    """``write()``, run again when the database aborted its transaction to break a
    deadlock or a serialization conflict with another process; it rolled back."""
    for attempt in range(1, _TRANSIENT_ATTEMPTS + 1):
        try:
            return write()
        except StoreError as exc:
            cause = getattr(exc.__cause__, "orig", None)
            if getattr(cause, "sqlstate", None) not in _TRANSIENT_STATES:
                raise
            if attempt == _TRANSIENT_ATTEMPTS:
                raise
    msg = "unreachable: the last attempt returns or raises"
    raise AssertionError(msg)  # pragma: no cover


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE touched (its result is a CursorResult)."""
    return int(cast("CursorResult[Any]", result).rowcount)


def _table(model: type[SQLModel]) -> Table:
    """The Core table of a row class, for statements that need no ORM."""
    return model.metadata.tables[str(model.__tablename__)]


#: Move an open period's last_seen, if it is still open on that digest.
_SEEN_AGAIN = (
    update(_table(DigestPeriodRow))
    .where(_table(DigestPeriodRow).c.id == bindparam("period"))
    .where(_table(DigestPeriodRow).c.digest == bindparam("seen_digest"))
    .where(_table(DigestPeriodRow).c.ended_at.is_(None))
    .values(last_seen=bindparam("at"))
)


def _unchanged_image(item: Unchanged) -> dict[str, object]:
    return {
        "image_id": item.current.image_id,
        "last_check_at": item.at,
        "last_error": None,
        "last_error_reason": None,
        "source_digest": _text(item.source_digest),
        "last_outcome": Outcome.UNCHANGED.value,
    }


def _check_values(
    image_id: int | None, at: datetime, outcome: Outcome, duration_ms: int | None
) -> dict[str, object]:
    return {
        "image_id": image_id,
        "checked_at": at,
        "outcome": outcome.value,
        "duration_ms": duration_ms,
    }


def _image_ids(connection: Connection, names: Sequence[str]) -> dict[str, int]:
    image = _table(ImageRow).c
    found: dict[str, int] = {}
    for start in range(0, len(names), _NAMES_PER_QUERY):
        chunk = names[start : start + _NAMES_PER_QUERY]
        rows = connection.execute(
            core_select(image.reference, image.id).where(image.reference.in_(chunk))
        )
        found.update({row.reference: row.id for row in rows})
    return found


def _first_image(item: FirstSeen) -> dict[str, object]:
    return {
        "reference": item.name,
        "registry_name": item.reference.registry,
        "repository": item.reference.repository,
        "tag": item.reference.tag_or_digest,
        "platform": str(item.platform) if item.platform else None,
        "source_digest": _text(item.source_digest),
        "created_at": item.at,
        "last_check_at": item.at,
        "last_outcome": Outcome.FIRST_SEEN.value,
    }


def _first_period(image_id: int, item: FirstSeen) -> dict[str, object]:
    return {
        "image_id": image_id,
        "digest": str(item.digest),
        "media_type": item.media_type,
        "first_seen": item.at,
        "last_seen": item.at,
    }


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
