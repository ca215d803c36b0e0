"""Multi-platform tags: which platforms changed, and watches of one platform."""

from __future__ import annotations

import pytest

from tests.helpers import load_settings
from tests.real.images import push_image
from watcher.reference import Platform, Reference
from watcher.service import Service
from watcher.store import Outcome

pytestmark = pytest.mark.anyio

PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7")


def hub_settings(tmp_path, hub, watches, **kwargs):
    return load_settings(
        tmp_path,
        watches=watches,
        registries={"docker.io": {"endpoint": hub.url}},
        **kwargs,
    )


async def check(settings):
    async with Service(settings) as service:
        return await service.check_once()


async def history(settings, image, platform=None):
    async with Service(settings) as service:
        return service.store.sync.history(Reference.parse(image), platform)


async def test_first_sight_of_an_index_costs_no_pull(tmp_path, registry, hub):
    push_image(registry.url, "team/app", "1", "oci-index", platforms=PLATFORMS)
    settings = hub_settings(tmp_path, hub, ["team/app:1"])

    (result,) = await check(settings)

    assert result.outcome is Outcome.FIRST_SEEN
    assert hub.counts["get_manifest"] == 0


async def test_changed_index_records_each_platform_and_says_which_changed(
    tmp_path, registry, hub, receiver
):
    first = push_image(registry.url, "team/web", "1", "oci-index", platforms=PLATFORMS)
    settings = hub_settings(
        tmp_path, hub, ["team/web:1"], notify=[receiver.apprise_url()]
    )
    await check(settings)
    second = push_image(
        registry.url,
        "team/web",
        "1",
        "oci-index",
        platforms=("linux/amd64", "linux/arm64"),
    )

    (result,) = await check(settings)

    assert result.outcome is Outcome.CHANGED
    old, new = await history(settings, "team/web:1")
    assert {
        str(e.platform): str(e.digest) for e in new.platforms
    } == second.platform_digests
    assert {
        str(e.platform): str(e.digest) for e in old.platforms
    } == first.platform_digests
    (message,) = receiver.wait_for(1)
    body = message.body["message"]
    assert "platforms changed:" in body
    for platform in ("linux/amd64", "linux/arm64"):
        assert (
            f"{platform}: {first.platform_digests[platform]} -> {second.platform_digests[platform]}"
            in body
        )
    assert (
        f"linux/arm/v7: removed (was {first.platform_digests['linux/arm/v7']})" in body
    )
    assert "unknown/unknown" not in body
    assert hub.counts["get_manifest"] == 2


async def test_index_is_fetched_once_however_many_tags_move_to_it(
    tmp_path, registry, hub
):
    tags = ["a", "b", "c", "d"]
    for tag in tags:
        push_image(registry.url, "team/api", tag, "docker-list", seed="old")
    settings = hub_settings(tmp_path, hub, [f"team/api:{tag}" for tag in tags])
    await check(settings)
    for tag in tags:
        push_image(registry.url, "team/api", tag, "docker-list", seed="new")

    results = await check(settings)
    await check(settings)

    assert [r.outcome for r in results] == [Outcome.CHANGED] * 4
    assert hub.counts["get_manifest"] == 2


async def test_platform_watch_follows_that_platforms_manifest(tmp_path, registry, hub):
    first = push_image(registry.url, "team/db", "1", "oci-index", platforms=PLATFORMS)
    watch = {"image": "team/db:1", "platform": "linux/arm/v7"}
    settings = hub_settings(tmp_path, hub, [watch])

    (seen,) = await check(settings)
    (again,) = await check(settings)
    gets_while_unchanged = hub.counts["get_manifest"]
    second = push_image(registry.url, "team/db", "1", "oci-index", platforms=PLATFORMS)
    (moved,) = await check(settings)

    assert (seen.outcome, str(seen.digest)) == (
        Outcome.FIRST_SEEN,
        first.platform_digests["linux/arm/v7"],
    )
    assert again.outcome is Outcome.UNCHANGED
    assert gets_while_unchanged == 1
    assert (moved.outcome, str(moved.digest)) == (
        Outcome.CHANGED,
        second.platform_digests["linux/arm/v7"],
    )
    assert moved.name == "docker.io/team/db:1 linux/arm/v7"
    periods = await history(settings, "team/db:1", Platform.parse("linux/arm/v7"))
    assert len(periods) == 2


async def test_platform_missing_from_the_index_is_an_error_naming_what_is_there(
    tmp_path, registry, hub
):
    push_image(
        registry.url, "team/cache", "1", "docker-list", platforms=("linux/amd64",)
    )
    settings = hub_settings(
        tmp_path, hub, [{"image": "team/cache:1", "platform": "linux/s390x"}]
    )

    (result,) = await check(settings)

    assert (result.outcome, result.reason) == (Outcome.ERROR, "not_found")
    assert "has no linux/s390x; it lists linux/amd64" in result.error


async def test_platform_watch_of_a_single_manifest_says_to_remove_the_platform(
    tmp_path, registry, hub
):
    push_image(registry.url, "team/tool", "1", "docker-v2")
    settings = hub_settings(
        tmp_path, hub, [{"image": "team/tool:1", "platform": "linux/amd64"}]
    )

    (result,) = await check(settings)

    assert (result.outcome, result.reason) == (Outcome.ERROR, "unsupported")
    assert 'remove platform = "linux/amd64"' in result.error


async def test_reserve_holds_back_pulls_until_the_budget_allows(
    tmp_path, registry, hub
):
    """At or below the reserve no manifest GET is made; the platforms come later."""
    push_image(registry.url, "team/svc", "1", "oci-index", platforms=PLATFORMS)
    image = Reference.parse("team/svc:1")
    settings = load_settings(
        tmp_path,
        watches=["team/svc:1"],
        registries={"docker.io": {"endpoint": hub.url, "reserve": 20}},
    )
    hub.behaviour.remaining = 15

    async with Service(settings) as service:
        await service.check_once()
        moved_to = push_image(
            registry.url, "team/svc", "1", "oci-index", platforms=PLATFORMS
        )
        (moved,) = await service.check_once()
        gets_at_reserve = hub.counts["get_manifest"]
        deferred = service.metrics.registry.get_sample_value(
            "watcher_registry_pulls_deferred_total", {"registry": "docker.io"}
        )

    hub.behaviour.remaining = 100
    # A new process, as after a restart or in the next `watcher check`.
    async with Service(settings) as service:
        (later,) = await service.check_once()
        (after,) = await service.check_once()
        periods = service.store.sync.history(image)

    assert moved.outcome is Outcome.CHANGED
    assert gets_at_reserve == 0
    assert deferred == 1
    assert (later.outcome, after.outcome) == (Outcome.UNCHANGED, Outcome.UNCHANGED)
    assert hub.counts["get_manifest"] == 1
    assert {str(e.platform): str(e.digest) for e in periods[-1].platforms} == (
        moved_to.platform_digests
    )
