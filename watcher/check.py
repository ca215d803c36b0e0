"""One check: resolve a tag to a digest, compare it with the history, record it.

Reaches I/O only through the resolver, store and metrics it is handed. A failed
check is recorded for its watch and returned as a result; it never raises a
``WatcherError`` and never stops the checks beside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from watcher.errors import RegistryError, StoreError
from watcher.logs import get_logger
from watcher.metrics import Metrics
from watcher.reference import Digest, Reference
from watcher.store import AsyncStore, MessagesFor, Outcome, Recorded

log = get_logger("watcher.check")

#: Failures that say the registry itself is out of reach, not that one tag is bad.
UNREACHABLE_REASONS = frozenset({"dns", "connect", "tls", "timeout"})


class Resolver(Protocol):
    """What a check needs of the registry client."""

    async def head_manifest(self, reference: Reference) -> Any: ...


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

    @property
    def changed(self) -> bool:
        """True when the tag moved to a new digest since the last check."""
        return self.outcome is Outcome.CHANGED

    def to_json(self) -> dict[str, Any]:
        """The result as ``watcher check --json`` prints it."""
        return {
            "image": str(self.reference),
            "digest": _text(self.digest),
            "previous_digest": _text(self.previous_digest),
            "changed": self.changed,
            "outcome": self.outcome.value,
            "media_type": self.media_type,
            "checked_at": self.checked_at.isoformat(),
            "error": self.error,
        }


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
        self._unreachable: set[str] = set()

    async def check(self, reference: Reference) -> CheckResult:
        """Check ``reference`` once and record what was found."""
        async with self._slots:
            self._metrics.checks_in_flight.inc()
            started = time.monotonic()
            with structlog.contextvars.bound_contextvars(reference=str(reference)):
                try:
                    result = await self._check(reference)
                finally:
                    self._metrics.checks_in_flight.dec()

                self._metrics.check_done(
                    registry=reference.registry,
                    image=str(reference),
                    result=result.outcome.value,
                    seconds=time.monotonic() - started,
                    at=result.checked_at,
                    reason=result.reason,
                )
                self._log_result(result)
        return result

    async def check_all(self, references: Iterable[Reference]) -> list[CheckResult]:
        """Check every reference concurrently; results come back in input order."""
        return list(await asyncio.gather(*(self.check(ref) for ref in references)))

    async def _check(self, reference: Reference) -> CheckResult:
        try:
            head = await self._resolver.head_manifest(reference)
        except RegistryError as exc:
            return await self._record_failure(reference, exc.reason, str(exc))

        descriptor = head.descriptor
        checked_at = self._clock()
        try:
            recorded: Recorded = await self._store.call(
                self._store.sync.record_digest,
                reference,
                descriptor.digest,
                descriptor.media_type,
                checked_at,
                self._messages_for,
                notify_first_seen=self._notify_first_seen,
            )
        except StoreError as exc:
            log.error(
                "check.not_recorded", error=type(exc).__name__, error_msg=str(exc)
            )
            return CheckResult(
                reference, Outcome.ERROR, checked_at, error=str(exc), reason="store"
            )

        if recorded.notifications:
            self._on_change()
        return CheckResult(
            reference,
            recorded.outcome,
            checked_at,
            digest=descriptor.digest,
            media_type=descriptor.media_type,
            previous_digest=recorded.previous_digest,
        )

    async def _record_failure(
        self, reference: Reference, reason: str, message: str
    ) -> CheckResult:
        checked_at = self._clock()
        try:
            await self._store.call(
                self._store.sync.record_failure, reference, checked_at, reason, message
            )
        except StoreError as exc:
            log.error(
                "check.not_recorded", error=type(exc).__name__, error_msg=str(exc)
            )
        return CheckResult(
            reference, Outcome.ERROR, checked_at, error=message, reason=reason
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
        log.warning("check.failed", reason=result.reason, error_msg=result.error)
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
