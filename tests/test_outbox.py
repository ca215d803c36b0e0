"""The outbox: what a change owes is delivered once, retried, or failed visibly.

Every test runs on SQLite and on PostgreSQL (the ``database_url`` fixture).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from tests.helpers import load_settings
from watcher.config import NotifySettings
from watcher.metrics import Metrics
from watcher.notify import MessageBuilder, routes_from
from watcher.reference import Digest, Reference
from watcher.service import Service

pytestmark = pytest.mark.anyio

IMAGE = Reference.parse("ghcr.io/acme/api:stable")
OLD = Digest.parse("sha256:" + "1" * 64)
NEW = Digest.parse("sha256:" + "2" * 64)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def __call__(self):
        return self.now

    def advance(self, **delta):
        self.now += timedelta(**delta)


@pytest.fixture
def clock():
    return Clock()


def record_change(service, urls, clock):
    builder = MessageBuilder(routes_from(NotifySettings(urls=urls), []))
    store = service.store.sync
    store.record_digest(
        IMAGE, OLD, "application/vnd.oci.image.index.v1+json", clock(), builder
    )
    store.record_digest(
        IMAGE, NEW, "application/vnd.oci.image.index.v1+json", clock(), builder
    )


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0


async def test_receiver_failing_twice_gets_the_message_once(
    tmp_path, receiver, clock, database_url
):
    settings = load_settings(
        tmp_path, watches=[], notify=[receiver.apprise_url()], database_url=database_url
    )
    metrics = Metrics(CollectorRegistry())
    receiver.fail_next(2)

    async with Service(settings, metrics=metrics, clock=clock) as service:
        record_change(service, settings.notify.urls, clock)
        reports = []
        for _ in range(6):
            reports.append(await service.courier.deliver_due())
            clock.advance(hours=1)

    assert [r.retrying for r in reports[:2]] == [1, 1]
    assert sum(r.sent for r in reports) == 1
    (message,) = receiver.wait_for(1)
    assert len(receiver.requests) == 3
    assert str(NEW) in message.body["message"]
    assert (
        sample(metrics, "watcher_notifications_total", notifier="json", outcome="retry")
        == 2
    )
    assert (
        sample(metrics, "watcher_notifications_total", notifier="json", outcome="sent")
        == 1
    )
    assert sample(metrics, "watcher_notifications_pending") == 0


async def test_retry_waits_for_its_backoff(tmp_path, receiver, clock, database_url):
    settings = load_settings(
        tmp_path, watches=[], notify=[receiver.apprise_url()], database_url=database_url
    )
    receiver.fail_next(1)

    async with Service(settings, clock=clock) as service:
        record_change(service, settings.notify.urls, clock)
        await service.courier.deliver_due()
        clock.advance(seconds=10)
        too_early = await service.courier.deliver_due()
        clock.advance(seconds=60)
        later = await service.courier.deliver_due()

    assert (too_early.sent, too_early.retrying) == (0, 0)
    assert later.sent == 1


async def test_receiver_down_past_the_retry_age_marks_the_message_failed(
    tmp_path, receiver, clock, database_url
):
    settings = load_settings(
        tmp_path, watches=[], notify=[receiver.apprise_url()], database_url=database_url
    )
    metrics = Metrics(CollectorRegistry())
    receiver.fail_next(1000)

    with capture_logs() as logs:
        async with Service(settings, metrics=metrics, clock=clock) as service:
            record_change(service, settings.notify.urls, clock)
            failed = 0
            for _ in range(40):
                failed += (await service.courier.deliver_due()).failed
                clock.advance(hours=1)
            pending = service.store.sync.count_pending()

    assert failed == 1
    assert pending == 0
    assert (
        sample(
            metrics, "watcher_notifications_total", notifier="json", outcome="failed"
        )
        == 1
    )
    assert receiver.messages == []
    (event,) = [e for e in logs if e["event"] == "notify.failed"]
    assert event["log_level"] == "error"
    assert "HTTP 500" in event["error_msg"] or "500" in event["error_msg"]


async def test_message_for_a_removed_target_fails_with_the_reason(
    tmp_path, receiver, clock, database_url
):
    old_settings = load_settings(
        tmp_path,
        watches=[],
        notify=[receiver.apprise_url("/old")],
        database_url=database_url,
    )
    async with Service(old_settings, clock=clock) as service:
        record_change(service, old_settings.notify.urls, clock)

    settings = load_settings(
        tmp_path,
        watches=[],
        notify=[receiver.apprise_url("/new")],
        database_url=database_url,
    )
    with capture_logs() as logs:
        async with Service(settings, clock=clock) as service:
            report = await service.courier.deliver_due()

    assert report.failed == 1
    assert receiver.requests == []
    (event,) = [e for e in logs if e["event"] == "notify.failed"]
    assert "no longer in the configuration" in event["error_msg"]


async def test_two_deliverers_on_one_database_send_a_message_once(
    tmp_path, receiver, clock, database_url
):
    """Two processes (here two services with their own connections) share an outbox."""
    import asyncio

    settings = load_settings(
        tmp_path, watches=[], notify=[receiver.apprise_url()], database_url=database_url
    )

    async with (
        Service(settings, clock=clock) as first,
        Service(settings, clock=clock) as second,
    ):
        record_change(first, settings.notify.urls, clock)
        reports = await asyncio.gather(
            first.courier.deliver_due(), second.courier.deliver_due()
        )

    assert sum(report.sent for report in reports) == 1
    receiver.wait_for(1)
    assert len(receiver.requests) == 1


class SlowNotifier:
    """Records sends, each taking 50 s; during its second, another deliverer runs."""

    def __init__(self, clock, sent, during_second_send=None):
        self.clock, self.sent, self.during = clock, sent, during_second_send
        self.sends = 0

    async def send(self, target, title, body):
        self.sends += 1
        self.clock.advance(seconds=50)
        if self.sends == 2 and self.during is not None:
            await self.during()
        self.sent.append((target.key, body))


async def test_a_batch_outlasting_one_lease_lets_no_message_go_twice(
    tmp_path, receiver, clock
):
    """Replica A sends two messages of 50 s each under a 60 s lease; B runs meanwhile."""
    urls = [receiver.apprise_url("/one"), receiver.apprise_url("/two")]
    settings = load_settings(tmp_path, watches=[], notify=urls, notify_lease="1m")
    sent: list[tuple[str, str]] = []

    async with Service(
        settings, clock=clock, notifier=SlowNotifier(clock, sent)
    ) as replica_b:
        slow_a = SlowNotifier(clock, sent, replica_b.courier.deliver_due)
        async with Service(settings, clock=clock, notifier=slow_a) as replica_a:
            record_change(replica_a, settings.notify.urls, clock)
            await replica_a.courier.deliver_due()
            pending = replica_a.store.sync.count_pending()

    assert len(sent) == 2
    assert len({key for key, _ in sent}) == 2
    assert pending == 0
