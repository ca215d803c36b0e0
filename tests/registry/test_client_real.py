"""The real RegistryClient over real HTTP: Debian's docker-registry, and the hub double.

The registry is the session's ``registry`` fixture (tests/fixtures.py); each test
pushes to its own ``repository_name``. The hub double stands before it with bearer
tokens and rate-limit headers, as Docker Hub does.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from tests.fakes.hub import HubDouble
from tests.real.images import IMAGE_KINDS, ImageKind, push_image
from tests.real.registry import RegistryServer
from watcher.config import RegistrySettings
from watcher.errors import AuthError, NotFound
from watcher.reference import Digest, Reference
from watcher.registry import RateLimit, RegistryClient

pytestmark = pytest.mark.anyio


def reference_at(url: str, repository: str, tag: str) -> Reference:
    return Reference.parse(f"{urlsplit(url).netloc}/{repository}:{tag}")


def client(username: str | None = None, password: str | None = None) -> RegistryClient:
    settings = RegistrySettings.model_validate(
        {"username": username, "password": password}
    )
    return RegistryClient(lambda name: settings)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
async def test_head_resolves_each_manifest_kind_on_a_real_registry(
    registry: RegistryServer, repository_name: str, kind: ImageKind
) -> None:
    pushed = push_image(registry.url, repository_name, "1.0", kind)

    async with client() as watcher_client:
        result = await watcher_client.head_manifest(
            reference_at(registry.url, repository_name, "1.0")
        )

    assert result.descriptor.digest == Digest.parse(pushed.digest)
    assert result.descriptor.media_type == pushed.media_type
    assert result.descriptor.size == len(pushed.manifest)


async def test_head_by_digest_on_a_real_registry_returns_that_digest(
    registry: RegistryServer, repository_name: str
) -> None:
    pushed = push_image(registry.url, repository_name, "1.0", "oci-index")
    host = urlsplit(registry.url).netloc

    async with client() as watcher_client:
        result = await watcher_client.head_manifest(
            Reference.parse(f"{host}/{repository_name}@{pushed.digest}")
        )

    assert str(result.descriptor.digest) == pushed.digest


async def test_missing_tag_on_a_real_registry_is_not_found(
    registry: RegistryServer, repository_name: str
) -> None:
    push_image(registry.url, repository_name, "1.0", "docker-v2")

    async with client() as watcher_client:
        with pytest.raises(NotFound):
            await watcher_client.head_manifest(
                reference_at(registry.url, repository_name, "2.0")
            )


async def test_basic_auth_registry_takes_configured_credentials(
    basic_auth_registry: RegistryServer, repository_name: str
) -> None:
    credential = basic_auth_registry.credential
    assert credential is not None
    pushed = push_image(
        basic_auth_registry.url,
        repository_name,
        "1.0",
        "docker-list",
        auth=credential.as_auth(),
    )
    reference = reference_at(basic_auth_registry.url, repository_name, "1.0")

    async with client(credential.username, credential.password) as watcher_client:
        result = await watcher_client.head_manifest(reference)

    async with client() as anonymous:
        with pytest.raises(AuthError, match="registry requires credentials"):
            await anonymous.head_manifest(reference)

    assert str(result.descriptor.digest) == pushed.digest


async def test_hub_double_gives_a_token_and_a_rate_limit(
    registry: RegistryServer, hub: HubDouble, repository_name: str
) -> None:
    pushed = push_image(registry.url, repository_name, "1.0", "oci-index")

    async with client() as watcher_client:
        result = await watcher_client.head_manifest(
            reference_at(hub.url, repository_name, "1.0")
        )

    assert str(result.descriptor.digest) == pushed.digest
    assert result.rate_limit == RateLimit(100, 100, 21600, "127.0.0.1")
    assert hub.counts["get_manifest"] == 0


async def test_burst_of_heads_through_the_hub_pays_one_401_and_one_token(
    registry: RegistryServer, hub: HubDouble, repository_name: str
) -> None:
    tags = [f"1.{minor}" for minor in range(20)]
    for tag in tags:
        push_image(registry.url, repository_name, tag, "docker-v2", seed=1)

    async with client() as watcher_client:
        await asyncio.gather(
            *(
                watcher_client.head_manifest(
                    reference_at(hub.url, repository_name, tag)
                )
                for tag in tags
            )
        )

    counts = hub.counts
    assert (counts["unauthorized"], counts["token"]) == (1, 1)
    assert counts["head_manifest"] == len(tags)


async def test_expired_hub_token_is_replaced_once(
    registry: RegistryServer, hub: HubDouble, repository_name: str
) -> None:
    push_image(registry.url, repository_name, "1.0", "docker-v2")
    reference = reference_at(hub.url, repository_name, "1.0")

    async with client() as watcher_client:
        await watcher_client.head_manifest(reference)
        hub.expire_tokens()
        await watcher_client.head_manifest(reference)

    assert hub.counts["token"] == 2
    assert hub.counts["unauthorized"] == 2


@pytest.mark.parametrize("kind", IMAGE_KINDS)
async def test_get_manifest_returns_the_bytes_pushed_to_a_real_registry(
    registry: RegistryServer, repository_name: str, kind: ImageKind
) -> None:
    pushed = push_image(registry.url, repository_name, "1.0", kind)
    host = urlsplit(registry.url).netloc

    async with client() as watcher_client:
        by_tag = await watcher_client.get_manifest(
            reference_at(registry.url, repository_name, "1.0")
        )
        by_digest = await watcher_client.get_manifest(
            Reference.parse(f"{host}/{repository_name}@{pushed.digest}")
        )

    for manifest in (by_tag, by_digest):
        assert manifest.body == pushed.manifest
        assert str(manifest.descriptor.digest) == pushed.digest
        assert manifest.descriptor.media_type == pushed.media_type


async def test_list_tags_lists_every_tag_of_a_real_registry(
    registry: RegistryServer, repository_name: str
) -> None:
    """Debian's distribution 2.8 ignores ``n=`` and never pages: the fake pages."""
    tags = [f"1.{minor}" for minor in range(5)]
    for tag in tags:
        push_image(registry.url, repository_name, tag, "docker-v2", seed=1)

    async with client() as watcher_client:
        listed = await watcher_client.list_tags(
            reference_at(registry.url, repository_name, "1.0"), page_size=2
        )

    assert sorted(listed) == tags


async def test_list_tags_of_an_unknown_repository_on_a_real_registry_is_not_found(
    registry: RegistryServer, repository_name: str
) -> None:
    async with client() as watcher_client:
        with pytest.raises(NotFound) as caught:
            await watcher_client.list_tags(
                reference_at(registry.url, repository_name, "1.0")
            )

    assert caught.value.codes == ("NAME_UNKNOWN",)


@pytest.mark.anyio
async def test_heads_reuse_one_connection(registry, repository_name) -> None:
    """Each check must not pay a new TCP (and, on real registries, TLS) handshake."""
    push_image(registry.url, repository_name, "1", "oci-manifest")
    reference = Reference.parse(f"{registry.host}/{repository_name}:1")
    client = RegistryClient(lambda name: RegistrySettings(concurrency=4))

    async with client:
        for _ in range(5):
            await client.head_manifest(reference)
        transport = client._registries[registry.host].http._transport
        # Our transport's internals, to count the connections it keeps open.
        idle = transport._idle.values()  # type: ignore[attr-defined]
        connections = sum(len(stack) for stack in idle)

    assert connections == 1
