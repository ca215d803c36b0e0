"""The service: wires settings into a checker, a courier, a scheduler and metrics.

``check_once`` is one pass over every watch (``watcher check``); ``run`` keeps
checking on schedule until told to stop (``watcher run``). Both record history
and deliver the notifications they owe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from watcher import scheduler
from watcher.check import Checker, CheckResult, Clock, utc_now
from watcher.config import Settings, parse_listen
from watcher.logs import get_logger
from watcher.metrics import Metrics, MetricsServer
from watcher.notify import (
    AppriseNotifier,
    MessageBuilder,
    Notifier,
    routes_from,
    targets_of,
)
from watcher.outbox import Courier
from watcher.registry import RegistryClient, Transport
from watcher.store import AsyncStore, open_store

log = get_logger("watcher.service")

#: How long a stopping service lets running checks finish before cancelling them.
STOP_GRACE_SECONDS = 5.0
OVERDUE_JOB_ID = "overdue"
PRUNE_JOB_ID = "prune-checks"
PRUNE_EVERY_SECONDS = 6 * 3600.0
OVERDUE_EVERY_SECONDS = 30.0
#: A check later than its interval and jitter by more than this is overdue.
OVERDUE_GRACE_SECONDS = 60.0


class Service:
    """Everything one watcher process needs, opened together and closed together."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        transport: Transport | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = AsyncStore(open_store(settings.database_url))
        self.client = RegistryClient(
            settings.registry,
            observer=self.metrics,
            transport=transport,
            docker_config=settings.docker_config,
        )
        self.routes = routes_from(settings.notify, settings.notifier)
        targets = targets_of(self.routes)
        self._delivery_wanted = asyncio.Event()
        self._running: set[asyncio.Task[Any]] = set()
        self._clock = clock
        self._started_at = clock()
        self.courier = Courier(
            store=self.store,
            notifier=notifier or AppriseNotifier(),
            targets=targets,
            metrics=self.metrics,
            clock=clock,
            max_age=timedelta(seconds=settings.notify_max_age),
            lease=timedelta(seconds=settings.notify_lease),
        )
        self.checker = Checker(
            resolver=self.client,
            store=self.store,
            metrics=self.metrics,
            messages_for=MessageBuilder(self.routes),
            concurrency=settings.concurrency,
            notify_first_seen=settings.notify_on_first_seen,
            on_change=self._delivery_wanted.set,
            clock=clock,
        )
        self._seed_metrics()

    async def __aenter__(self) -> Service:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.client.aclose()
        self.store.close()

    async def check_once(
        self, on_result: Callable[[CheckResult], None] = lambda result: None
    ) -> list[CheckResult]:
        """Check every watch once, then deliver what the changes owe."""
        if not self.settings.watch:
            log.warning("config.no_watches", hint="add [[watch]] entries to check tags")
        watches = [(watch.image, watch.platform) for watch in self.settings.watch]
        results = await self.checker.check_all(watches, on_result)
        await self.courier.deliver_due()
        return results

    async def run(
        self, stop: asyncio.Event, *, healthy: Callable[[], bool] | None = None
    ) -> None:
        """Serve metrics and check on schedule until ``stop`` is set."""
        host, port = parse_listen(self.settings.listen)
        server = MetricsServer(
            self.metrics, host, port, healthy=healthy or (lambda: not stop.is_set())
        )
        server.start()
        log.info(
            "service.started",
            listen=f"{host}:{server.port}",
            watches=len(self.settings.watch),
        )

        if not self.settings.watch:
            log.warning("config.no_watches", hint="add [[watch]] entries to check tags")
        jobs = scheduler.build(self._jobs(), start_at=utc_now())
        courier = asyncio.create_task(self._deliver_on_change(stop))
        jobs.start()
        try:
            await stop.wait()
        finally:
            log.info("service.stopping", checks_running=len(self._running))
            jobs.pause()
            if self._running:
                await asyncio.wait(set(self._running), timeout=STOP_GRACE_SECONDS)
            jobs.shutdown(wait=False)
            courier.cancel()
            await _finish_running_tasks(STOP_GRACE_SECONDS)
            server.stop()
            log.info("service.stopped")

    def _jobs(self) -> list[scheduler.Job]:
        jobs = [
            scheduler.Job(
                id=watch.name,
                seconds=self.settings.interval_of(watch),
                jitter=self.settings.jitter_of(watch),
                run=functools.partial(
                    self._tracked, self.checker.check, watch.image, watch.platform
                ),
            )
            for watch in self.settings.watch
        ]
        if self.settings.check_retention is not None:
            jobs.append(
                scheduler.Job(
                    id=PRUNE_JOB_ID,
                    seconds=PRUNE_EVERY_SECONDS,
                    jitter=0,
                    run=self.prune_checks,
                )
            )
        jobs.append(
            scheduler.Job(
                id=OVERDUE_JOB_ID,
                seconds=OVERDUE_EVERY_SECONDS,
                jitter=0,
                run=self._count_overdue,
            )
        )
        jobs.append(
            scheduler.Job(
                id=scheduler.OUTBOX_JOB_ID,
                seconds=self.settings.notify_retry,
                jitter=0,
                run=self.courier.deliver_due,
            )
        )
        return jobs

    async def prune_checks(self) -> int:
        """Delete check records older than ``check_retention``; history stays."""
        assert self.settings.check_retention is not None  # noqa: S101 - scheduled only then
        before = self._clock() - timedelta(seconds=self.settings.check_retention)
        pruned: int = await self.store.call(self.store.sync.prune_checks, before)
        log.info("checks.pruned", count=pruned, before=before.isoformat())
        return pruned

    async def _count_overdue(self) -> int:
        """Set the overdue gauge: watches whose check is late by more than a minute."""
        now = self._clock()
        overdue = 0
        for watch in self.settings.watch:
            last = self.checker.last_checked.get(watch.name, self._started_at)
            allowed = self.settings.interval_of(watch) + self.settings.jitter_of(watch)
            if (now - last).total_seconds() > allowed + OVERDUE_GRACE_SECONDS:
                overdue += 1
        self.metrics.checks_overdue.set(overdue)
        return overdue

    async def _tracked(
        self, function: Callable[..., Awaitable[object]], *args: object
    ) -> object:
        """Run a job, known as running so that a stop can wait for it."""
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - always called from a task
        self._running.add(task)
        try:
            return await function(*args)
        finally:
            self._running.discard(task)

    async def _deliver_on_change(self, stop: asyncio.Event) -> None:
        """Deliver as soon as a change owes messages, not at the next outbox tick."""
        while not stop.is_set():
            await self._delivery_wanted.wait()
            self._delivery_wanted.clear()
            await scheduler.guarded("outbox-on-change", self.courier.deliver_due)

    def _seed_metrics(self) -> None:
        watched = {
            watch.name: self.settings.interval_of(watch)
            for watch in self.settings.watch
        }
        self.metrics.watches_configured(watched)
        self.metrics.notifiers_configured(t.scheme for t in targets_of(self.routes))
        for status in self.store.sync.statuses():
            if status.reference in watched:
                self.metrics.restore_image(
                    status.reference, status.last_check_at, status.last_change_at
                )


async def _finish_running_tasks(grace: float) -> None:
    current = asyncio.current_task()
    running = [task for task in asyncio.all_tasks() if task is not current]
    if not running:
        return
    _, pending = await asyncio.wait(running, timeout=grace)
    for task in pending:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*pending, return_exceptions=True)


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT, so the service ends cleanly."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
