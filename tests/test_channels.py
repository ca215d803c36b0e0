"""Apprise channels beyond webhooks, end to end: e-mail over SMTP and MQTT.

Each test moves a tag on the real registry, checks through `Service.check_once()`
and reads what a real server received: an aiosmtpd server started by the test,
or a subscriber on the Mosquitto broker at 127.0.0.1:1883.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from tests.helpers import load_settings
from tests.real.images import push_image
from tests.real.smtp import RECIPIENT, SENDER
from watcher.check import utc_now
from watcher.service import Service
from watcher.store import Outcome

pytestmark = pytest.mark.anyio


class Clock:
    """Real time at first; `advance()` jumps past the outbox's retry backoff."""

    def __init__(self):
        self.now = utc_now()

    def __call__(self):
        return self.now

    def advance(self, **delta):
        self.now += timedelta(**delta)


async def check_once(settings):
    async with Service(settings) as service:
        return await service.check_once()


def database_text(path):
    """Every row of every table of the SQLite database at `path`, as one string."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        ]
        rows = [
            repr(row)
            for table in tables
            for row in connection.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from sqlite_master
        ]
    return "\n".join(rows)


async def test_change_is_mailed_once_through_a_plain_smtp_server(
    tmp_path, registry, repository_name, smtp_server
):
    first = push_image(registry.url, repository_name, "stable", "oci-index")
    image = f"{registry.host}/{repository_name}:stable"
    settings = load_settings(
        tmp_path, watches=[image], notify=[smtp_server.apprise_url()]
    )

    (baseline,) = await check_once(settings)
    second = push_image(registry.url, repository_name, "stable", "oci-index")
    (changed,) = await check_once(settings)
    (unchanged,) = await check_once(settings)

    assert [baseline.outcome, changed.outcome, unchanged.outcome] == [
        Outcome.FIRST_SEEN,
        Outcome.CHANGED,
        Outcome.UNCHANGED,
    ]
    (mail,) = smtp_server.wait_for(1)
    assert len(smtp_server.attempts) == 1
    assert (mail.sender, mail.recipients) == (SENDER, (RECIPIENT,))
    assert mail.login == smtp_server.user
    assert image in mail.subject
    assert first.digest in mail.body
    assert second.digest in mail.body


async def test_smtp_password_reaches_no_log_and_no_outbox_row(
    tmp_path, registry, repository_name, smtp_server, caplog
):
    """The first send is refused, so the error path's log and row are checked too."""
    push_image(registry.url, repository_name, "stable", "oci-manifest")
    image = f"{registry.host}/{repository_name}:stable"
    settings = load_settings(
        tmp_path, watches=[image], notify=[smtp_server.apprise_url()]
    )
    await check_once(settings)
    second = push_image(registry.url, repository_name, "stable", "oci-manifest")
    smtp_server.fail_next(1)
    clock = Clock()
    caplog.set_level(logging.DEBUG)

    with capture_logs() as logs:
        async with Service(settings, clock=clock) as service:
            await service.check_once()
            rows_after_failure = database_text(tmp_path / "watcher.db")
            clock.advance(hours=1)
            report = await service.courier.deliver_due()

    assert report.sent == 1
    (mail,) = smtp_server.wait_for(1)
    assert second.digest in mail.body
    assert [attempt.status for attempt in smtp_server.attempts] == [451, 250]
    (retry,) = [event for event in logs if event["event"] == "retry.scheduled"]
    assert retry["notifier"] == "mailto"
    password = smtp_server.password
    assert password not in repr(logs)
    # The test's own SMTP server ("mail.log") sees the password by design.
    product = [r.getMessage() for r in caplog.records if not r.name.startswith("mail")]
    assert product
    assert password not in "\n".join(product)
    assert f'Sending email to "{RECIPIENT}" failed' in rows_after_failure
    assert password not in rows_after_failure
    assert password not in database_text(tmp_path / "watcher.db")


async def test_change_is_published_once_on_an_mqtt_topic(
    tmp_path, registry, repository_name, mqtt_subscriber
):
    first = push_image(registry.url, repository_name, "stable", "docker-list")
    image = f"{registry.host}/{repository_name}:stable"
    settings = load_settings(
        tmp_path, watches=[image], notify=[mqtt_subscriber.apprise_url()]
    )

    await check_once(settings)
    second = push_image(registry.url, repository_name, "stable", "docker-list")
    (changed,) = await check_once(settings)
    (unchanged,) = await check_once(settings)

    assert (changed.outcome, unchanged.outcome) == (Outcome.CHANGED, Outcome.UNCHANGED)
    (message,) = mqtt_subscriber.wait_for(1)
    assert message.topic == mqtt_subscriber.topic
    assert image in message.payload
    assert first.digest in message.payload
    assert second.digest in message.payload
    assert len(mqtt_subscriber.messages) == 1
