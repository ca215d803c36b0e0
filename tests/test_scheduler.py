"""The scheduler wiring: one job per watch, never overlapping, bugs contained."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from tests.helpers import load_settings
from watcher import scheduler
from watcher.service import Service

pytestmark = pytest.mark.anyio


async def test_each_watch_gets_a_job_at_its_interval_plus_the_outbox(tmp_path):
    settings = load_settings(
        tmp_path,
        watches=["alpine:3", {"image": "ghcr.io/acme/api:1", "interval": "15m"}],
        interval="2h",
        notify_retry="45s",
    )
    start = datetime(2026, 12, 1, tzinfo=UTC)

    async with Service(settings) as service:
        jobs = scheduler.build(service._jobs(), start_at=start)

    assert scheduler.describe(jobs) == [
        {"id": "docker.io/library/alpine:3", "seconds": 7200.0},
        {"id": "ghcr.io/acme/api:1", "seconds": 900.0},
        {"id": "prune-checks", "seconds": 21600.0},
        {"id": "overdue", "seconds": 30.0},
        {"id": "outbox", "seconds": 45.0},
    ]
    for job in jobs.get_jobs():
        assert job.max_instances == 1
        assert job.next_run_time == start
    assert jobs.get_job("ghcr.io/acme/api:1").trigger.jitter == 90.0


async def test_a_crashing_job_is_logged_and_contained():
    async def broken():
        msg = "bug in a check"
        raise ZeroDivisionError(msg)

    with capture_logs() as logs:
        await scheduler.guarded("docker.io/library/alpine:3", broken)

    (event,) = logs
    assert event["event"] == "job.crashed"
    assert event["job_id"] == "docker.io/library/alpine:3"
    assert event["log_level"] == "error"


async def test_watches_late_by_more_than_a_minute_count_as_overdue(tmp_path):
    settings = load_settings(
        tmp_path,
        watches=[
            {"image": "alpine:3", "interval": "10m"},
            {"image": "alpine:edge", "interval": "10m"},
            {"image": "busybox", "interval": "1h"},
        ],
        jitter="1s",
    )
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    async with Service(settings, clock=lambda: now) as service:
        checked = service.checker.last_checked
        checked["docker.io/library/alpine:3"] = now - timedelta(minutes=11, seconds=2)
        checked["docker.io/library/alpine:edge"] = now - timedelta(
            minutes=10, seconds=30
        )
        checked["docker.io/library/busybox:latest"] = now - timedelta(minutes=59)
        overdue = await service._count_overdue()
        gauge = service.metrics.registry.get_sample_value("watcher_checks_overdue")

    assert (overdue, gauge) == (1, 1)
