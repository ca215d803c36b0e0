"""One check: resolve a tag to a digest, compare it with the history, record it.

Reaches I/O only through the resolver, store and metrics it is handed. A failed
check is recorded for its watch and returned as a result; it never raises a
``WatcherError`` and never stops the checks beside it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from watcher.errors import RegistryError, StoreError
from watcher.logs import get_logger
from watcher.manifests import PlatformManifest, is_index, platforms_of
from watcher.metrics import Metrics
from watcher.reference import Digest, Platform, Reference, watch_name
from watcher.registry import Descriptor, HeadResult, Manifest
from watcher.store import (
    AsyncStore,
    Current,
    FirstSeen,
    MessagesFor,
    Outcome,
    Recorded,
    Unchanged,
)

log = get_logger("watcher.check")

#: Failures that say the registry itself is out of reach, not that one tag is bad.
UNREACHABLE_REASONS = frozenset({"dns", "connect", "tls", "timeout"})

#: When the check running in this task began, for the check record's duration.
_started: contextvars.ContextVar[float] = contextvars.ContextVar("check_started")


def _elapsed_ms() -> int | None:
    started = _started.get(None)
    return None if started is None else int((time.monotonic() - started) * 1000)


class Resolver(Protocol):
    """What a check needs of the registry client."""

    async def head_manifest(self, reference: Reference) -> HeadResult: ...

    async def get_manifest(self, reference: Reference) -> Manifest: ...


class _CheckFailed(Exception):
    """A check cannot go on; ``reason`` is one of ``errors.ERROR_REASONS``."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one check found: a digest and how it compares, or an error."""

    reference: Reference
    outcome: Outcome
    checked_at: datetime
    digest: Digest | None = None
    media_type: str | None = None
    previous_digest: Digest | None = None
    error: str | None = None
    reason: str | None = None
    platform: Platform | None = None

    @property
    def changed(self) -> bool:
        """True when the tag moved to a new digest since the last check."""
        return self.outcome is Outcome.CHANGED

    @property
    def name(self) -> str:
        """The watch's name: the reference, and its platform if any."""
        return watch_name(self.reference, self.platform)

    def to_json(self) -> dict[str, Any]:
        """The result as ``watcher check --json`` prints it."""
        return {
            "image": self.name,
            "platform": str(self.platform) if self.platform else None,
            "digest": _text(self.digest),
            "previous_digest": _text(self.previous_digest),
            "changed": self.changed,
            "outcome": self.outcome.value,
            "media_type": self.media_type,
            "checked_at": self.checked_at.isoformat(),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class _Observation:
    """What a check will record: the digest, and what was read to find it."""

    digest: Digest
    media_type: str
    source_digest: Digest | None = None
    platforms: list[PlatformManifest] | None = None
    previous_platforms: Sequence[PlatformManifest] | None = None


class _Unread:
    """A watch's current digest not read yet: the check reads it itself."""


_UNREAD = _Unread()


def _text(digest: Digest | None) -> str | None:
    return str(digest) if digest is not None else None


class Checker:
    """Runs checks: at most ``concurrency`` at once, each recorded as it ends."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        store: AsyncStore,
        metrics: Metrics,
        messages_for: MessagesFor,
        concurrency: int,
        notify_first_seen: bool = False,
        on_change: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
    ) -> None:
        self._resolver = resolver
        self._store = store
        self._metrics = metrics
        self._messages_for = messages_for
        self._notify_first_seen = notify_first_seen
        self._on_change = on_change
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._workers = concurrency
        self._unreachable: set[str] = set()
        # One lock per index digest: concurrent checks of tags that moved to the
        # same index fetch it once, and the others read it from the store.
        self._fetching: dict[Digest, asyncio.Lock] = {}
        #: When each watch was last checked, by name; the service counts overdue ones.
        self.last_checked: dict[str, datetime] = {}

    async def check(
        self, reference: Reference, platform: Platform | None = None
    ) -> CheckResult:
        """Check a watch once and record what was found.

        With ``platform``, the watch follows that platform's manifest inside the
        tag's index rather than the tag's own digest.
        """
        return await self._checked(reference, platform, _UNREAD)

    async def _checked(
        self,
        reference: Reference,
        platform: Platform | None,
        current: Current | _Unread | None,
    ) -> CheckResult:
        name = watch_name(reference, platform)
        async with self._slots:
            self._metrics.checks_in_flight.inc()
            started = time.monotonic()
            _started.set(started)
            with structlog.contextvars.bound_contextvars(reference=name):
                try:
                    result = await self._isolated(reference, platform, current)
                finally:
                    self._metrics.checks_in_flight.dec()

                self._metrics.check_done(
                    registry=reference.registry,
                    image=name,
                    result=result.outcome.value,
                    seconds=time.monotonic() - started,
                    at=result.checked_at,
                    reason=result.reason,
                )
                self._log_result(result)
                self.last_checked[name] = result.checked_at
        return result

    async def _isolated(
        self,
        reference: Reference,
        platform: Platform | None,
        current: Current | _Unread | None,
    ) -> CheckResult:
        """The check, with a bug in it recorded for this watch alone.

        Besides the scheduler's job wrapper, this is the one place that catches
        every exception: `watcher check` runs no scheduler, and a bug met by one
        watch must neither stop the pass nor go unrecorded.
        """
        try:
            return await self._check(reference, platform, current)
        except Exception as exc:
            log.exception("check.crashed")
            message = (
                f"check {watch_name(reference, platform)}: internal error "
                f"{type(exc).__name__}: {exc}; please report it"
            )
            return await self._record_failure(reference, platform, "internal", message)

    async def check_all(
        self,
        watches: Iterable[tuple[Reference, Platform | None]],
        on_result: Callable[[CheckResult], None] = lambda result: None,
    ) -> list[CheckResult]:
        """Check every watch concurrently; results come back in input order.

        What the store holds for every watch is read first, in a few queries;
        then ``concurrency`` workers take the watches in turn, so memory does not
        grow with their number. ``on_result`` is called as each check ends, for
        progress displays.
        """
        todo = list(watches)
        known = await self._currents(todo)
        results: list[CheckResult | None] = [None] * len(todo)
        queue = iter(enumerate(todo))

        async def worker() -> None:
            for index, (reference, platform) in queue:
                current = (
                    _UNREAD
                    if known is None
                    else known.get(watch_name(reference, platform))
                )
                result = await self._checked(reference, platform, current)
                results[index] = result
                on_result(result)

        await asyncio.gather(*(worker() for _ in range(min(self._workers, len(todo)))))
        return [result for result in results if result is not None]

    async def _currents(
        self, watches: Sequence[tuple[Reference, Platform | None]]
    ) -> dict[str, Current] | None:
        """What the store holds for ``watches``; None (logged) if it cannot say."""
        names = [watch_name(reference, platform) for reference, platform in watches]
        try:
            known: dict[str, Current] = await self._store.call(
                self._store.sync.currents, names
            )
        except StoreError as exc:
            # Each check then reads its own, and records its own failure.
            log.warning("store.unread", error_msg=str(exc))
            return None
        return known

    async def _check(
        self,
        reference: Reference,
        platform: Platform | None,
        current: Current | _Unread | None,
    ) -> CheckResult:
        try:
            head = await self._resolver.head_manifest(reference)
            if isinstance(current, _Unread):
                current = await self._store.call(
                    self._store.sync.current, reference, platform
                )
            observed = await self._observe(
                reference, platform, head.descriptor, current
            )
            return await self._record(reference, platform, observed, current)
        except (RegistryError, _CheckFailed) as exc:
            return await self._record_failure(reference, platform, exc.reason, str(exc))
        except StoreError as exc:
            log.error(
                "check.not_recorded", error=type(exc).__name__, error_msg=str(exc)
            )
            return CheckResult(
                reference,
                Outcome.ERROR,
                self._clock(),
                error=str(exc),
                reason="store",
                platform=platform,
            )

    async def _observe(
        self,
        reference: Reference,
        platform: Platform | None,
        descriptor: Descriptor,
        current: Current | None,
    ) -> _Observation:
        """What to record for a HEAD's descriptor, reading an index only when needed."""
        if platform is not None:
            return await self._observe_platform(
                reference, platform, descriptor, current
            )

        digest, media_type = descriptor.digest, descriptor.media_type
        if (
            current is not None
            and current.platforms_wanted
            and current.digest == digest
        ):
            # The tag moved here when its platforms could not be read (pull
            # reserve, registry down): they are read now, once they can be.
            await self._read_late(reference, current.digest)
        # A first sight records the index digest alone: reading every index on
        # a cold start would cost a pull per tag on registries that meter pulls.
        if current is None or current.digest == digest or not is_index(media_type):
            return _Observation(digest, media_type)

        platforms = await self._platforms_or_none(reference, digest)
        previous: Sequence[PlatformManifest] | None = current.platforms
        if platforms is not None and not previous and is_index(current.media_type):
            previous = await self._platforms_or_none(reference, current.digest)
        return _Observation(digest, media_type, None, platforms, previous)

    async def _read_late(self, reference: Reference, digest: Digest) -> None:
        """Read the platforms a change could not read then, and add them to history."""
        platforms = await self._platforms_or_none(reference, digest)
        if platforms is None:
            return
        await self._store.call(
            self._store.sync.add_platforms, reference, digest, platforms
        )
        log.info("platforms.read_late", digest=str(digest), platforms=len(platforms))

    async def _observe_platform(
        self,
        reference: Reference,
        platform: Platform,
        descriptor: Descriptor,
        current: Current | None,
    ) -> _Observation:
        index_digest = descriptor.digest
        if not is_index(descriptor.media_type):
            message = (
                f"{reference} is a single {descriptor.media_type} manifest, not an "
                f'index; remove platform = "{platform}" from its watch'
            )
            raise _CheckFailed(message, reason="unsupported")

        if current is not None and current.source_digest == index_digest:
            # The index has not moved, so neither has any platform in it.
            return _Observation(current.digest, current.media_type, index_digest)

        entries = await self._platforms(reference, index_digest)
        chosen = next((e for e in entries if e.platform == platform), None)
        if chosen is None:
            listed = ", ".join(str(entry.platform) for entry in entries) or "none"
            message = (
                f"{reference} ({index_digest}) has no {platform}; it lists {listed}"
            )
            raise _CheckFailed(message, reason="not_found")
        return _Observation(chosen.digest, chosen.media_type, index_digest)

    async def _platforms_or_none(
        self, reference: Reference, digest: Digest
    ) -> list[PlatformManifest] | None:
        """The platforms of an index, or None (logged) when it cannot be read now."""
        try:
            return await self._platforms(reference, digest)
        except (RegistryError, _CheckFailed) as exc:
            log.warning("platforms.unread", digest=str(digest), error_msg=str(exc))
            return None

    async def _platforms(
        self, reference: Reference, digest: Digest
    ) -> list[PlatformManifest]:
        """The platforms of the index ``digest``, fetched at most once ever."""
        lock = self._fetching.setdefault(digest, asyncio.Lock())
        async with lock:
            body = await self._fetch_once(reference, digest)
        self._fetching.pop(digest, None)
        try:
            return platforms_of(body)
        except ValueError as exc:
            message = f"index {digest} of {reference}: {exc}"
            raise _CheckFailed(message, reason="protocol") from exc

    async def _fetch_once(self, reference: Reference, digest: Digest) -> bytes:
        body: bytes | None = await self._store.call(self._store.sync.manifest, digest)
        if body is None:
            by_digest = Reference(
                reference.registry, reference.repository, None, digest
            )
            manifest = await self._resolver.get_manifest(by_digest)
            body = manifest.body
            await self._store.call(
                self._store.sync.save_manifest,
                digest,
                manifest.descriptor.media_type,
                body,
                self._clock(),
            )
        return body

    async def _record(
        self,
        reference: Reference,
        platform: Platform | None,
        observed: _Observation,
        current: Current | None,
    ) -> CheckResult:
        checked_at = self._clock()
        fast = await self._record_plain(
            reference, platform, observed, current, checked_at
        )
        if fast is not None:
            return fast

        recorded: Recorded = await self._store.call(
            self._store.sync.record_digest,
            reference,
            observed.digest,
            observed.media_type,
            checked_at,
            self._messages_for,
            notify_first_seen=self._notify_first_seen,
            platform=platform,
            source_digest=observed.source_digest,
            platforms=observed.platforms,
            previous_platforms=observed.previous_platforms,
            duration_ms=_elapsed_ms(),
        )
        if recorded.notifications:
            self._on_change()
        return CheckResult(
            reference,
            recorded.outcome,
            checked_at,
            digest=observed.digest,
            media_type=observed.media_type,
            previous_digest=recorded.previous_digest,
            platform=platform,
        )

    async def _record_plain(
        self,
        reference: Reference,
        platform: Platform | None,
        observed: _Observation,
        current: Current | None,
        checked_at: datetime,
    ) -> CheckResult | None:
        """Record the common cases in a batch: an unchanged digest, a silent first sight.

        None when the check needs ``record_digest``: a change, platforms to
        store, a message owed, or another process wrote this watch since
        ``current`` was read.
        """
        if observed.platforms is not None or observed.previous_platforms is not None:
            return None

        if current is not None and current.digest == observed.digest:
            unchanged = Unchanged(
                current, checked_at, observed.source_digest, _elapsed_ms()
            )
            outcome, previous = Outcome.UNCHANGED, observed.digest
            written = await self._store.record_unchanged(unchanged)
        elif current is None and not self._notify_first_seen:
            first = FirstSeen(
                reference,
                platform,
                observed.digest,
                observed.media_type,
                checked_at,
                observed.source_digest,
                _elapsed_ms(),
            )
            outcome, previous = Outcome.FIRST_SEEN, None
            written = await self._store.record_first_seen(first)
        else:
            return None

        if not written:
            return None
        return CheckResult(
            reference,
            outcome,
            checked_at,
            digest=observed.digest,
            media_type=observed.media_type,
            previous_digest=previous,
            platform=platform,
        )

    async def _record_failure(
        self,
        reference: Reference,
        platform: Platform | None,
        reason: str,
        message: str,
    ) -> CheckResult:
        checked_at = self._clock()
        try:
            await self._store.call(
                self._store.sync.record_failure,
                reference,
                checked_at,
                reason,
                message,
                platform,
                duration_ms=_elapsed_ms(),
            )
        except StoreError as exc:
            log.error(
                "check.not_recorded", error=type(exc).__name__, error_msg=str(exc)
            )
        return CheckResult(
            reference,
            Outcome.ERROR,
            checked_at,
            error=message,
            reason=reason,
            platform=platform,
        )

    def _log_result(self, result: CheckResult) -> None:
        """Log the result; an unreachable registry is logged once, not once per tag."""
        registry = result.reference.registry
        if result.reason in UNREACHABLE_REASONS:
            if registry not in self._unreachable:
                self._unreachable.add(registry)
                log.error(
                    "registry.unreachable",
                    registry=registry,
                    reason=result.reason,
                    error_msg=result.error,
                )
            log.debug("check.failed", reason=result.reason, error_msg=result.error)
            return

        if result.outcome is not Outcome.ERROR and registry in self._unreachable:
            self._unreachable.discard(registry)
            log.info("registry.reachable", registry=registry)
        _log_outcome(result)


def _log_outcome(result: CheckResult) -> None:
    if result.outcome is Outcome.ERROR:
        log.error("check.failed", reason=result.reason, error_msg=result.error)
    elif result.outcome is Outcome.CHANGED:
        log.info(
            "digest.changed",
            old_digest=_text(result.previous_digest),
            new_digest=_text(result.digest),
            media_type=result.media_type,
        )
    elif result.outcome is Outcome.FIRST_SEEN:
        log.info("digest.first_seen", digest=_text(result.digest))
    else:
        log.debug("check.completed", digest=_text(result.digest))
