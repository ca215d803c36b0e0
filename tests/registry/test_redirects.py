"""Redirects: followed for manifests and tokens, never carrying Authorization away."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.fakes.registry import (
    REALM,
    FakeRegistry,
    Manifest,
    basic,
    client_for,
    digest_of,
)
from watcher.errors import ProtocolViolation, RegistryError
from watcher.reference import Digest, Reference
from watcher.registry import HeadResult

pytestmark = pytest.mark.anyio

API = Reference.parse("ghcr.io/acme/api:stable")
MANIFEST_URL = "https://ghcr.io/v2/acme/api/manifests/stable"
STORAGE_URL = "https://storage.test/v2/acme/api/manifests/stable"


async def head(fake: FakeRegistry, **settings: Any) -> HeadResult:
    async with client_for(fake, **settings) as client:
        return await client.head_manifest(API)


async def head_error(fake: FakeRegistry, **settings: Any) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        await head(fake, **settings)

    return caught.value


class TestRedirects:
    @pytest.mark.parametrize("status", [301, 302, 307, 308])
    async def test_relative_redirect_on_the_same_host_keeps_authorization(
        self, status: int
    ) -> None:
        fake = FakeRegistry(auth="basic", credentials=("alice", "s3cret"))
        fake.redirect_status = status
        fake.redirects[MANIFEST_URL] = "/v2/acme/api/manifests/moved?sig=1"
        fake.add("acme/api:moved")

        result = await head(fake, username="alice", password="s3cret")

        assert result.descriptor.digest == Digest.parse(digest_of("acme/api:moved"))
        moved = fake.heads[-1]
        assert str(moved.url) == "https://ghcr.io/v2/acme/api/manifests/moved?sig=1"
        assert moved.method == "HEAD"
        assert moved.headers["authorization"] == basic("alice", "s3cret")

    async def test_redirect_to_another_host_drops_authorization(self) -> None:
        """Object storage gets the signed URL, never the registry's credential."""
        fake = FakeRegistry(auth="bearer", open_hosts={"storage.test"})
        fake.redirects[MANIFEST_URL] = STORAGE_URL + "?X-Amz-Signature=abc"
        fake.add("acme/api:stable")

        result = await head(fake)

        (seen,) = fake.on_host("storage.test")
        assert "authorization" not in seen.headers
        assert seen.headers["accept"].startswith("application/vnd.oci.image.index")
        assert seen.url.params["X-Amz-Signature"] == "abc"
        redirected = [r for r in fake.on_host("ghcr.io") if r.method == "HEAD"][-1]
        assert redirected.headers["authorization"] == "Bearer tok-1"
        assert result.descriptor.digest == Digest.parse(digest_of("acme/api:stable"))

    async def test_authorization_stays_dropped_when_a_redirect_comes_back(
        self,
    ) -> None:
        fake = FakeRegistry(auth="none", open_hosts={"storage.test"})
        fake.redirects[MANIFEST_URL] = STORAGE_URL
        fake.redirects[STORAGE_URL] = "https://ghcr.io/v2/acme/api/manifests/back"
        fake.add("acme/api:back")
        fake.auth = "basic"
        fake.credentials = ("alice", "s3cret")

        with pytest.raises(RegistryError):
            await head(fake, username="alice", password="s3cret")

        back = [r for r in fake.requests if r.url.path.endswith("/back")]
        assert back
        assert all("authorization" not in request.headers for request in back)

    async def test_get_fallback_follows_redirects_too(self) -> None:
        fake = FakeRegistry(head_status=405, open_hosts={"storage.test"})
        fake.redirects[MANIFEST_URL] = STORAGE_URL
        fake.add("acme/api:stable", Manifest.of(b'{"schemaVersion": 2}'))

        result = await head(fake)

        assert result.method == "GET"
        assert [r.method for r in fake.on_host("storage.test")] == ["HEAD", "GET"]

    async def test_token_request_redirected_to_another_host_loses_the_credential(
        self,
    ) -> None:
        fake = FakeRegistry(auth="bearer")
        fake.redirects[REALM] = (
            "https://tokens.elsewhere.test/token?scope=repository:acme/api:pull"
        )
        fake.add("acme/api:stable")

        await head(fake, username="alice", password="s3cret")

        first, second = fake.token_requests
        assert first.headers["authorization"] == basic("alice", "s3cret")
        assert second.url.host == "tokens.elsewhere.test"
        assert second.url.params["scope"] == "repository:acme/api:pull"
        assert "authorization" not in second.headers

    async def test_five_redirects_are_followed(self) -> None:
        fake = FakeRegistry(open_hosts={"storage.test"})
        fake.add("acme/api:stable")
        hops = [f"https://ghcr.io/hop/{number}" for number in range(1, 5)]
        chain = [MANIFEST_URL, *hops, STORAGE_URL]
        fake.redirects.update(itertools.pairwise(chain))

        result = await head(fake)

        assert result.descriptor.digest == Digest.parse(digest_of("acme/api:stable"))
        assert [str(request.url) for request in fake.requests] == chain

    async def test_more_than_five_redirects_is_a_protocol_violation(self) -> None:
        fake = FakeRegistry()
        fake.add("acme/api:stable")
        hops = [f"https://ghcr.io/hop/{number}" for number in range(1, 6)]
        chain = [MANIFEST_URL, *hops, STORAGE_URL]
        fake.redirects.update(itertools.pairwise(chain))

        error = await head_error(fake)

        assert isinstance(error, ProtocolViolation)
        assert "more than 5 redirects" in str(error)
        assert [str(request.url) for request in fake.requests] == chain[:-1]

    @pytest.mark.parametrize(
        ("location", "text"),
        [
            pytest.param(None, "redirect without a Location header", id="none"),
            pytest.param("ftp://ghcr.io/x", "is not an http(s) URL", id="ftp"),
            pytest.param(
                "http://storage.test/x?sig=planted",
                "would leave HTTPS for plain HTTP",
                id="https-downgrade",
            ),
        ],
    )
    async def test_unfollowable_redirect_is_a_protocol_violation(
        self, location: str | None, text: str
    ) -> None:
        fake = FakeRegistry()
        fake.faults.append((307, {"Location": location} if location else {}))

        error = await head_error(fake)

        assert isinstance(error, ProtocolViolation)
        assert text in str(error)
        assert "planted" not in str(error)
        assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("url", "base", "same"),
    [
        ("https://reg.test/v2/a/manifests/1", "https://reg.test", True),
        ("https://REG.test:443/v2/", "https://reg.test", True),
        ("http://reg.test:80/v2/", "http://reg.test", True),
        # A prefix of the authority is not the authority.
        ("https://reg.test:50/v2/", "https://reg.test:5000", False),
        ("https://reg.test:5000/v2/", "https://reg.test:50", False),
        ("https://reg.test.evil.example/v2/", "https://reg.test", False),
        ("https://reg.test@evil.example/v2/", "https://reg.test", False),
        ("http://reg.test/v2/", "https://reg.test", False),
    ],
)
def test_authorization_goes_only_to_the_registrys_own_origin(url, base, same):
    """Who gets the registry's Authorization header: scheme, host and port must match."""
    from watcher.registry.client import _same_origin

    assert _same_origin(url, base) is same
