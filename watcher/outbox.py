"""Delivering the outbox: send what changes owe, mark it, retry what failed.

A message is marked delivered only after the notifier returned, so a crash
between the two sends it again on restart: delivery is at least once, and the
outbox's unique (period, target) rule keeps the intent exactly once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from watcher.check import Clock, utc_now
from watcher.errors import NotifyError, StoreError
from watcher.logs import get_logger
from watcher.metrics import Metrics
from watcher.notify import Notifier, Target
from watcher.store import AsyncStore, PendingNotification

log = get_logger("watcher.outbox")

DEFAULT_FIRST_RETRY = timedelta(seconds=30)
DEFAULT_LONGEST_RETRY = timedelta(hours=1)
#: A message still undelivered after this long is marked failed and logged.
DEFAULT_MAX_AGE = timedelta(hours=24)
#: How long a claimed message is this process's to send: longer than any send
#: takes, short enough that a crashed process's messages go out soon after.
DEFAULT_LEASE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one delivery pass did."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0


class Courier:
    """Sends due outbox messages, one pass at a time; passes never overlap."""

    def __init__(
        self,
        *,
        store: AsyncStore,
        notifier: Notifier,
        targets: Sequence[Target],
        metrics: Metrics,
        clock: Clock = utc_now,
        first_retry: timedelta = DEFAULT_FIRST_RETRY,
        longest_retry: timedelta = DEFAULT_LONGEST_RETRY,
        max_age: timedelta = DEFAULT_MAX_AGE,
        lease: timedelta = DEFAULT_LEASE,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._targets = {target.key: target for target in targets}
        self._metrics = metrics
        self._clock = clock
        self._first_retry = first_retry
        self._longest_retry = longest_retry
        self._max_age = max_age
        self._lease = lease
        self._lock = asyncio.Lock()

    async def deliver_due(self) -> DeliveryReport:
        """Send every message whose time has come and record each outcome."""
        async with self._lock:
            due = await self._store.call(
                self._store.sync.due_notifications, self._clock()
            )
            outcomes = [await self._claim_and_deliver(message) for message in due]
            pending = await self._store.call(self._store.sync.count_pending)
        self._metrics.notifications_pending.set(pending)
        return DeliveryReport(
            sent=outcomes.count("sent"),
            retrying=outcomes.count("retry"),
            failed=outcomes.count("failed"),
        )

    async def _claim_and_deliver(self, message: PendingNotification) -> str:
        """Claim the message just before sending it, so a lease covers one send."""
        now = self._clock()
        claimed = await self._store.call(
            self._store.sync.claim, message.id, now, now + self._lease
        )
        if not claimed:
            return "taken"  # another deliverer has it, or sent it already
        return await self._deliver(message)

    async def _deliver(self, message: PendingNotification) -> str:
        target = self._targets.get(message.target)
        if target is None:
            error = "the target is no longer in the configuration"
            return await self._failed(message, "unknown", error, give_up=True)

        try:
            await self._notifier.send(target, message.title, message.body)
        except NotifyError as exc:
            age = self._clock() - message.created_at
            return await self._failed(
                message, target.scheme, str(exc), give_up=age >= self._max_age
            )

        try:
            await self._store.call(
                self._store.sync.mark_delivered, message.id, self._clock()
            )
        except StoreError as exc:
            # Sent but not marked: it goes out once more after the store recovers.
            log.error("notify.unmarked", notifier=target.scheme, error_msg=str(exc))
        self._metrics.notification_attempted(target.scheme, "sent")
        log.info(
            "notify.sent",
            notifier=target.scheme,
            target=target.key,
            notification_id=message.id,
        )
        return "sent"

    async def _failed(
        self, message: PendingNotification, scheme: str, error: str, *, give_up: bool
    ) -> str:
        retry_at = None
        if not give_up:
            # The last try falls due when the message reaches its maximum age.
            backoff = self._clock() + self._backoff(message.attempts)
            retry_at = min(backoff, message.created_at + self._max_age)
        await self._store.call(
            self._store.sync.mark_attempt_failed, message.id, error, retry_at
        )
        outcome = "failed" if give_up else "retry"
        self._metrics.notification_attempted(scheme, outcome)
        if give_up:
            log.error(
                "notify.failed",
                notifier=scheme,
                target=message.target,
                notification_id=message.id,
                error_msg=error,
            )
        else:
            log.warning(
                "retry.scheduled",
                notifier=scheme,
                target=message.target,
                notification_id=message.id,
                attempt=message.attempts + 1,
                retry_at=retry_at.isoformat() if retry_at else None,
                error_msg=error,
            )
        return outcome

    def _backoff(self, attempts: int) -> timedelta:
        """Exponential backoff, capped at the longest retry, with up to half as jitter."""
        ceiling: timedelta = min(self._first_retry * 2**attempts, self._longest_retry)
        return ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
