"""Routing changes to notifiers, the messages they get, and `watcher notify`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from tests.helpers import load_settings, write_config
from tests.real.images import push_image
from tests.real.receiver import Receiver
from watcher.cli import app
from watcher.config import NotifierSettings, NotifySettings
from watcher.notify import MessageBuilder, image_link, render, routes_from
from watcher.reference import Digest, Platform, Reference
from watcher.service import Service
from watcher.store import Change, PlatformChange, open_store

OLD = Digest.parse("sha256:" + "a" * 64)
NEW = Digest.parse("sha256:" + "b" * 64)
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
URL = SecretStr("json://127.0.0.1:9/hook")


def change(image="ghcr.io/acme/api:1.4", old=OLD, **kwargs):
    return Change(
        Reference.parse(image),
        old,
        NEW,
        "application/vnd.oci.image.index.v1+json",
        AT,
        **kwargs,
    )


class TestRender:
    def test_default_message_names_image_digests_time_and_page(self):
        title, body = render(change())

        assert title == "ghcr.io/acme/api:1.4 changed"
        assert f"now points at {NEW}" in body
        assert f"previously {OLD}" in body
        assert "2026-12-01 09:30:00 UTC" in body
        assert body.endswith("https://ghcr.io/acme/api")

    def test_changed_platforms_are_listed(self):
        arm = Platform.parse("linux/arm/v7")
        amd = Platform.parse("linux/amd64")
        platforms = (PlatformChange(amd, OLD, NEW), PlatformChange(arm, None, NEW))

        _, body = render(change(platforms=platforms, platforms_known=True))

        assert f"linux/amd64: {OLD} -> {NEW}" in body
        assert f"linux/arm/v7: added, {NEW}" in body

    def test_a_huge_index_makes_a_message_of_bounded_size(self):
        platforms = tuple(
            PlatformChange(Platform.parse(f"linux/arch{n}"), OLD, NEW)
            for n in range(60)
        )

        _, body = render(change(platforms=platforms, platforms_known=True))

        assert body.count(" -> ") == 20
        assert "and 40 more (`watcher history` lists them all)" in body
        assert len(body) < 4000

    def test_templates_use_named_fields(self):
        title, body = render(
            change("python:3.12-slim"),
            "[$registry] $repository:$tag",
            "${old_short} -> ${new_short} at ${time}; see ${link}",
        )

        assert title == "[docker.io] library/python:3.12-slim"
        assert (
            body
            == f"{OLD.short} -> {NEW.short} at 2026-12-01 09:30:00 UTC; see https://hub.docker.com/_/python"
        )

    @pytest.mark.parametrize(
        ("image", "link"),
        [
            pytest.param(
                "python:3", "https://hub.docker.com/_/python", id="hub-official"
            ),
            pytest.param(
                "grafana/grafana",
                "https://hub.docker.com/r/grafana/grafana",
                id="hub-user",
            ),
            pytest.param("ghcr.io/acme/api", "https://ghcr.io/acme/api", id="ghcr"),
            pytest.param(
                "quay.io/prometheus/prometheus",
                "https://quay.io/repository/prometheus/prometheus?tab=tags",
                id="quay",
            ),
            pytest.param("localhost:5000/app", "", id="no-page"),
        ],
    )
    def test_image_page_links(self, image, link):
        assert image_link(Reference.parse(image)) == link


class TestRouting:
    def routes(self):
        return routes_from(
            NotifySettings(urls=[URL]),
            [
                NotifierSettings(name="acme", urls=[URL], images=["ghcr.io/acme/*"]),
                NotifierSettings(
                    name="hub", urls=[URL], registries=["docker.io"], tags=["3*"]
                ),
            ],
        )

    @pytest.mark.parametrize(
        ("image", "notifiers"),
        [
            pytest.param("ghcr.io/acme/api:1", ["default", "acme"], id="image-glob"),
            pytest.param("ghcr.io/other/api:1", ["default"], id="no-match"),
            pytest.param("python:3.12", ["default", "hub"], id="registry-and-tag"),
            pytest.param("python:2.7", ["default"], id="tag-filter-fails"),
        ],
    )
    def test_a_change_goes_to_each_notifier_whose_filters_all_match(
        self, image, notifiers
    ):
        owed = MessageBuilder(self.routes())(change(image))

        assert [
            m.target.split("/")[0] if "/" in m.target else "default" for m in owed
        ] == notifiers

    def test_templates_are_per_notifier(self):
        routes = routes_from(
            NotifySettings(urls=[URL]),
            [
                NotifierSettings(
                    name="terse", urls=[URL], title="moved: $image", body="$new_short"
                )
            ],
        )

        default, terse = MessageBuilder(routes)(change())

        assert default.title == "ghcr.io/acme/api:1.4 changed"
        assert (terse.title, terse.body) == ("moved: ghcr.io/acme/api:1.4", NEW.short)


@pytest.fixture
def second_receiver():
    with Receiver() as running:
        yield running


@pytest.mark.anyio
async def test_each_team_hears_only_about_its_images(
    tmp_path, registry, receiver, second_receiver
):
    for team in ("team-a", "team-b"):
        push_image(registry.url, f"{team}/app", "1", "docker-v2")
    images = [f"{registry.host}/team-a/app:1", f"{registry.host}/team-b/app:1"]
    settings = load_settings(tmp_path, watches=images)
    settings = settings.model_copy(
        update={
            "notifier": [
                NotifierSettings(
                    name="a", urls=[receiver.apprise_url()], images=["*/team-a/*"]
                ),
                NotifierSettings(
                    name="b",
                    urls=[second_receiver.apprise_url()],
                    images=["*/team-b/*"],
                ),
            ]
        }
    )
    async with Service(settings) as service:
        await service.check_once()
    for team in ("team-a", "team-b"):
        push_image(registry.url, f"{team}/app", "1", "docker-v2")

    async with Service(settings) as service:
        await service.check_once()

    (to_a,) = receiver.wait_for(1)
    (to_b,) = second_receiver.wait_for(1)
    assert "team-a/app" in to_a.body["title"]
    assert "team-b/app" in to_b.body["title"]


runner = CliRunner()


def test_notify_test_reports_each_target(tmp_path, receiver):
    path = write_config(
        tmp_path,
        watches=[],
        notify=[receiver.apprise_url(), "json://127.0.0.1:1/closed"],
    )

    result = runner.invoke(app, ["notify", "test", "--config", str(path)])

    assert result.exit_code == 1
    sent, failed = result.stdout.splitlines()[1:]
    assert sent.split()[:3] == ["default", "json", "sent"]
    assert failed.split()[:3] == ["default", "json", "failed"]
    (message,) = receiver.wait_for(1)
    assert message.body["title"] == "watcher test message"


def test_notify_test_to_an_unknown_notifier_exits_2(tmp_path, receiver):
    path = write_config(tmp_path, watches=[], notify=[receiver.apprise_url()])

    result = runner.invoke(
        app, ["notify", "test", "--config", str(path), "--to", "nobody"]
    )

    assert result.exit_code == 2
    assert (
        "no notifier named 'nobody' has URLs; the notifiers are: default"
        in result.stderr
    )


def test_notify_retry_resends_failed_messages(tmp_path, receiver):
    path = write_config(tmp_path, watches=[], notify=[receiver.apprise_url()])
    settings = load_settings(tmp_path, watches=[], notify=[receiver.apprise_url()])
    store = open_store(settings.database_url)
    builder = MessageBuilder(routes_from(settings.notify, []))
    at = datetime.now(UTC)
    image = Reference.parse("ghcr.io/acme/api:1")
    store.record_digest(image, OLD, "x", at, builder)
    store.record_digest(image, NEW, "x", at, builder)
    (due,) = store.due_notifications(at)
    store.mark_attempt_failed(due.id, "receiver was down", None)
    store.close()

    result = runner.invoke(app, ["notify", "retry", "--config", str(path)])

    assert result.exit_code == 0, result.output
    assert "1 failed notification(s) made pending again; 1 sent" in result.stdout
    (message,) = receiver.wait_for(1)
    assert str(NEW) in message.body["message"]
