"""Check passes against a real registry and a Docker-Hub-like double."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.helpers import load_settings
from tests.real.images import IMAGE_KINDS, push_image
from watcher.metrics import Metrics
from watcher.reference import Reference
from watcher.service import Service
from watcher.store import Outcome

pytestmark = pytest.mark.anyio

KINDS = IMAGE_KINDS


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


async def check_once(settings, metrics=None):
    async with Service(settings, metrics=metrics) as service:
        return await service.check_once()


async def history(settings, image):
    async with Service(settings) as service:
        return service.store.sync.history(Reference.parse(image))


async def test_each_manifest_kind_resolves_to_the_digest_pushed(
    tmp_path, registry, repository_name
):
    pushed = {
        kind: push_image(registry.url, repository_name, kind, kind) for kind in KINDS
    }
    images = [f"{registry.host}/{repository_name}:{kind}" for kind in KINDS]
    settings = load_settings(tmp_path, watches=images)

    results = await check_once(settings)

    for kind, result in zip(KINDS, results, strict=True):
        assert result.error is None, result.error
        assert str(result.digest) == pushed[kind].digest
        assert result.media_type == pushed[kind].media_type
        assert result.outcome is Outcome.FIRST_SEEN


async def test_moved_tag_is_recorded_and_notified_once(
    tmp_path, registry, repository_name, receiver
):
    first = push_image(registry.url, repository_name, "1", "oci-index")
    image = f"{registry.host}/{repository_name}:1"
    settings = load_settings(tmp_path, watches=[image], notify=[receiver.apprise_url()])
    metrics = Metrics(CollectorRegistry())

    (baseline,) = await check_once(settings, metrics)
    second = push_image(registry.url, repository_name, "1", "oci-index")
    (changed,) = await check_once(settings, metrics)
    (unchanged,) = await check_once(settings, metrics)

    assert baseline.outcome is Outcome.FIRST_SEEN
    assert (changed.outcome, str(changed.previous_digest), str(changed.digest)) == (
        Outcome.CHANGED,
        first.digest,
        second.digest,
    )
    assert unchanged.outcome is Outcome.UNCHANGED

    (message,) = receiver.wait_for(1)
    text = f"{message.body['title']}\n{message.body['message']}"
    assert image in text
    assert first.digest in text
    assert second.digest in text
    assert len(receiver.requests) == 1

    periods = await history(settings, image)
    assert [str(p.digest) for p in periods] == [first.digest, second.digest]
    assert periods[0].ended_at == changed.checked_at


async def test_metrics_count_results_and_change_time(
    tmp_path, registry, repository_name
):
    push_image(registry.url, repository_name, "1", "docker-v2")
    image = f"{registry.host}/{repository_name}:1"
    settings = load_settings(tmp_path, watches=[image])
    metrics = Metrics(CollectorRegistry())

    await check_once(settings, metrics)
    push_image(registry.url, repository_name, "1", "docker-v2")
    (changed,) = await check_once(settings, metrics)

    assert (
        sample(
            metrics, "watcher_checks_total", registry=registry.host, result="first_seen"
        )
        == 1
    )
    assert (
        sample(
            metrics, "watcher_checks_total", registry=registry.host, result="changed"
        )
        == 1
    )
    assert sample(metrics, "watcher_digest_changes_total", registry=registry.host) == 1
    assert (
        sample(metrics, "watcher_image_last_change_timestamp_seconds", image=image)
        == changed.checked_at.timestamp()
    )
    assert sample(metrics, "watcher_image_last_check_failed", image=image) == 0


async def test_hub_pass_costs_no_pull_and_one_token_per_repository(
    tmp_path, registry, hub
):
    repositories = ["team/api", "team/web", "library/alpine"]
    images = []
    for repository in repositories:
        for tag in ("1", "2"):
            push_image(registry.url, repository, tag, "oci-index")
            images.append(
                f"docker.io/{repository}:{tag}".replace("docker.io/library/", "")
            )
    settings = load_settings(
        tmp_path, watches=images, registries={"docker.io": {"endpoint": hub.url}}
    )
    metrics = Metrics(CollectorRegistry())

    results = await check_once(settings, metrics)

    assert [r.error for r in results] == [None] * len(images)
    assert hub.counts["get_manifest"] == 0
    assert hub.counts["head_manifest"] == len(images)
    assert hub.counts["unauthorized"] == 1
    assert sorted(hub.tokens_by_scope.values()) == [1, 1, 1]
    source = hub.behaviour.source
    assert (
        sample(
            metrics,
            "watcher_registry_ratelimit_remaining",
            registry="docker.io",
            source=source,
        )
        == hub.behaviour.remaining
    )
    assert (
        sample(
            metrics,
            "watcher_registry_ratelimit_limit",
            registry="docker.io",
            source=source,
        )
        == hub.behaviour.limit
    )
    assert (
        sample(
            metrics,
            "watcher_registry_ratelimit_window_seconds",
            registry="docker.io",
            source=source,
        )
        == hub.behaviour.window
    )


async def test_failed_checks_are_recorded_and_do_not_stop_the_others(
    tmp_path, registry, hub, repository_name, free_port
):
    good = push_image(registry.url, repository_name, "1", "oci-manifest")
    hub.behaviour.credentials = ("robot", "right-password")
    images = [
        f"{registry.host}/{repository_name}:1",
        f"{registry.host}/{repository_name}:no-such-tag",
        f"127.0.0.1:{free_port}/nothing/listens:here",
        f"docker.io/{repository_name}:1",
    ]
    settings = load_settings(
        tmp_path,
        watches=images,
        registries={
            "docker.io": {"endpoint": hub.url},
            f"127.0.0.1:{free_port}": {"retries": 0},
        },
    )
    metrics = Metrics(CollectorRegistry())

    ok, missing, refused, unauthorized = await check_once(settings, metrics)

    assert (ok.outcome, str(ok.digest)) == (Outcome.FIRST_SEEN, good.digest)
    assert (missing.outcome, missing.reason) == (Outcome.ERROR, "not_found")
    assert (refused.outcome, refused.reason) == (Outcome.ERROR, "connect")
    assert (unauthorized.outcome, unauthorized.reason) == (Outcome.ERROR, "auth")
    assert "no-such-tag" in missing.error
    assert (
        sample(
            metrics,
            "watcher_check_errors_total",
            registry=registry.host,
            reason="not_found",
        )
        == 1
    )
    assert sample(metrics, "watcher_image_last_check_failed", image=images[1]) == 1

    async with Service(settings) as service:
        statuses = {s.reference: s for s in service.store.sync.statuses()}
    assert statuses[images[1]].last_error_reason == "not_found"
    assert statuses[images[3]].last_outcome is Outcome.ERROR
    assert statuses[images[0]].digest is not None


async def test_hundreds_of_watches_in_flight_all_resolve(tmp_path, registry, hub):
    """A pass over 200 tags in 2 repositories, all in flight, pays one 401 in all."""
    pushed = {}
    for repository in ("bulk/one", "bulk/two"):
        pushed[repository] = push_image(
            registry.url, repository, "base", "oci-manifest"
        )
        add_tags(registry.url, pushed[repository], [f"t{n}" for n in range(100)])
    images = [f"docker.io/{r}:t{n}" for r in pushed for n in range(100)]
    settings = load_settings(
        tmp_path,
        watches=images,
        concurrency=200,
        registries={"docker.io": {"endpoint": hub.url, "concurrency": 50}},
    )

    results = await check_once(settings)

    assert [r.error for r in results] == [None] * 200
    for result in results:
        assert str(result.digest) == pushed[result.reference.repository].digest
    assert hub.counts["unauthorized"] == 1
    assert sorted(hub.tokens_by_scope.values()) == [1, 1]


def add_tags(base_url, image, tags):
    """Point more tags at a pushed manifest, as `docker tag` and `docker push` do."""
    with httpx.Client(base_url=base_url) as client:
        for tag in tags:
            put = client.put(
                f"/v2/{image.repository}/manifests/{tag}",
                content=image.manifest,
                headers={"Content-Type": image.media_type},
            )
            put.raise_for_status()


async def test_a_bug_in_one_check_is_recorded_and_the_others_go_on(
    tmp_path, registry, repository_name
):
    push_image(registry.url, repository_name, "1", "docker-v2")
    push_image(registry.url, repository_name, "2", "docker-v2")
    images = [f"{registry.host}/{repository_name}:{tag}" for tag in ("1", "2")]
    settings = load_settings(tmp_path, watches=images)
    metrics = Metrics(CollectorRegistry())

    async with Service(settings, metrics=metrics) as service:
        real = service.client.head_manifest

        async def broken_for_tag_1(reference):
            if reference.tag == "1":
                return object()  # no .descriptor: a bug, not a registry fault
            return await real(reference)

        service.checker._resolver.head_manifest = broken_for_tag_1  # type: ignore[method-assign]  # a planted bug
        crashed, fine = await service.check_once()
        (status,) = [
            s for s in service.store.sync.statuses() if s.reference == images[0]
        ]

    assert (crashed.outcome, crashed.reason) == (Outcome.ERROR, "internal")
    assert crashed.error is not None
    assert "internal error AttributeError" in crashed.error
    assert fine.outcome is Outcome.FIRST_SEEN
    assert status.last_error_reason == "internal"
    assert (
        sample(
            metrics,
            "watcher_check_errors_total",
            registry=registry.host,
            reason="internal",
        )
        == 1
    )


async def test_each_check_is_recorded_with_its_duration_and_pruned_after_retention(
    tmp_path, registry, repository_name
):
    from datetime import timedelta

    push_image(registry.url, repository_name, "1", "docker-v2")
    image = f"{registry.host}/{repository_name}:1"
    settings = load_settings(
        tmp_path, watches=[image, f"{image}-missing"], check_retention="1d"
    )

    async with Service(settings) as service:
        await service.check_once()
        await service.check_once()
        records = service.store.sync.check_records(Reference.parse(image))
        failed = service.store.sync.check_records(Reference.parse(f"{image}-missing"))
        service._clock = lambda: records[0].checked_at + timedelta(days=2)
        pruned = await service.prune_checks()
        left = service.store.sync.check_records(Reference.parse(image))

    assert [r.outcome for r in records] == [Outcome.UNCHANGED, Outcome.FIRST_SEEN]
    assert all(r.duration_ms is not None and r.duration_ms >= 0 for r in records)
    assert [r.error_reason for r in failed] == ["not_found", "not_found"]
    assert (pruned, left) == (4, [])


async def test_a_watch_removed_from_the_config_leaves_no_series(
    tmp_path, registry, repository_name
):
    for tag in ("kept", "dropped"):
        push_image(registry.url, repository_name, tag, "docker-v2")
    kept, dropped = (
        f"{registry.host}/{repository_name}:{tag}" for tag in ("kept", "dropped")
    )
    await check_once(load_settings(tmp_path, watches=[kept, dropped]))

    metrics = Metrics(CollectorRegistry())
    async with Service(load_settings(tmp_path, watches=[kept]), metrics=metrics):
        pass

    name = "watcher_image_last_check_timestamp_seconds"
    assert sample(metrics, name, image=kept) is not None
    assert sample(metrics, name, image=dropped) is None
    assert sample(metrics, "watcher_watches") == 1


async def test_second_pass_records_every_unchanged_tag_in_input_order(
    tmp_path, registry, repository_name
):
    """Fewer workers than watches: every watch is checked once, results in order."""
    pushed = push_image(registry.url, repository_name, "base", "oci-manifest")
    tags = [f"t{n}" for n in range(7)]
    add_tags(registry.url, pushed, tags)
    images = [f"{registry.host}/{repository_name}:{tag}" for tag in tags]
    settings = load_settings(tmp_path, watches=images, concurrency=2)

    async with Service(settings) as service:
        await service.check_once()
        second = await service.check_once()
        records = [
            service.store.sync.check_records(Reference.parse(image)) for image in images
        ]
        statuses = service.store.sync.statuses()

    assert [str(result.reference) for result in second] == images
    assert {result.outcome for result in second} == {Outcome.UNCHANGED}
    assert [[r.outcome for r in rs] for rs in records] == [
        [Outcome.UNCHANGED, Outcome.FIRST_SEEN]
    ] * len(images)
    assert {s.last_outcome for s in statuses} == {Outcome.UNCHANGED}
    (period,) = await history(settings, images[0])
    assert period.last_seen == second[0].checked_at


async def test_a_change_another_process_records_mid_pass_is_not_overwritten(
    tmp_path, registry, repository_name
):
    """The pass read the tag's digest, then a replica recorded a move: compare anew."""
    from datetime import UTC, datetime

    from watcher.reference import Digest
    from watcher.store import open_store

    pushed = push_image(registry.url, repository_name, "1", "oci-manifest")
    image = f"{registry.host}/{repository_name}:1"
    settings = load_settings(tmp_path, watches=[image])
    elsewhere = Digest.parse("sha256:" + "e" * 64)

    async with Service(settings) as service:
        await service.check_once()
        real = service.client.head_manifest

        async def replica_moves_it_first(reference):
            replica = open_store(settings.database_url)
            try:
                replica.record_digest(
                    reference,
                    elsewhere,
                    pushed.media_type,
                    datetime.now(UTC),
                    lambda change: [],
                )
            finally:
                replica.close()
            return await real(reference)

        service.checker._resolver.head_manifest = replica_moves_it_first  # type: ignore[method-assign]
        (result,) = await service.check_once()

    assert (result.outcome, result.previous_digest) == (Outcome.CHANGED, elsewhere)
    periods = await history(settings, image)
    assert [str(p.digest) for p in periods] == [
        pushed.digest,
        str(elsewhere),
        pushed.digest,
    ]
    assert periods[0].last_seen < periods[1].first_seen
