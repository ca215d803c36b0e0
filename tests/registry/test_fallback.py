"""GET when HEAD cannot resolve a tag, and GET for manifests the caller wants whole."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fakes.registry import (
    FakeRegistry,
    Manifest,
    RecordingObserver,
    client_for,
    digest_of,
)
from watcher.errors import (
    NotFound,
    ProtocolViolation,
    RegistryError,
    UnsupportedManifest,
)
from watcher.reference import Digest, Reference
from watcher.registry import (
    MANIFEST_ACCEPT,
    MAX_MANIFEST_BYTES,
    HeadResult,
    RateLimit,
)
from watcher.registry.media_types import (
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    OCI_INDEX,
)

pytestmark = pytest.mark.anyio

API = Reference.parse("ghcr.io/acme/api:stable")
CHUNK = 64 * 1024
INDEX = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})


def sha256(body: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(body).hexdigest())


async def heads(fake: FakeRegistry, count: int, **settings: Any) -> list[HeadResult]:
    """``count`` checks of API, one after the other, through one client."""
    async with client_for(fake, **settings) as client:
        return [await client.head_manifest(API) for _ in range(count)]


def events(logs: Iterable[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [log for log in logs if log["event"] == name]


def quirky(quirk: str) -> FakeRegistry:
    """A registry whose HEAD has ``quirk``, serving API with an index body."""
    fake = FakeRegistry()
    fake.add("acme/api:stable", Manifest.of(INDEX.encode()))
    if quirk == "no_digest":
        fake.head_omit.add("Docker-Content-Digest")
    else:
        fake.head_status = int(quirk)

    return fake


class TestHeadFallback:
    @pytest.mark.parametrize("quirk", ["no_digest", "405", "404"])
    async def test_unusable_head_is_answered_by_the_hash_of_the_get_body(
        self, quirk: str, observer: RecordingObserver
    ) -> None:
        fake = quirky(quirk)

        (result,) = await heads(fake, 1, observer=observer)

        assert result.method == "GET"
        assert result.descriptor.digest == sha256(INDEX.encode())
        assert result.descriptor.media_type == OCI_INDEX
        assert result.descriptor.size == len(INDEX)
        assert [request.method for request in fake.requests] == ["HEAD", "GET"]
        assert fake.gets[0].headers["accept"] == MANIFEST_ACCEPT
        assert observer.fallbacks == [("ghcr.io", quirk)]
        assert observer.fetched == ["ghcr.io"]

    @pytest.mark.parametrize("quirk", ["no_digest", "405", "404"])
    async def test_later_checks_go_straight_to_get(
        self, quirk: str, observer: RecordingObserver
    ) -> None:
        """HEAD is remembered as unusable: no more requests wasted on it."""
        fake = quirky(quirk)

        results = await heads(fake, 3, observer=observer)

        assert [result.method for result in results] == ["GET"] * 3
        assert [request.method for request in fake.requests] == ["HEAD"] + ["GET"] * 3
        assert observer.fallbacks == [("ghcr.io", quirk)] * 3
        assert observer.fetched == ["ghcr.io"] * 3

    async def test_fallback_is_logged_once_per_registry_with_its_cost(self) -> None:
        fake = quirky("405")
        fake.add("acme/web:stable", Manifest.of(b"{}", DOCKER_MANIFEST))

        with capture_logs() as logs:
            async with client_for(fake) as client:
                await client.head_manifest(API)
                await client.head_manifest(API)
                await client.head_manifest(Reference.parse("ghcr.io/acme/web:stable"))

        (warning,) = events(logs, "manifest.head_fallback_get")
        assert warning["log_level"] == "warning"
        assert (warning["registry"], warning["reason"]) == ("ghcr.io", "405")
        assert "registries that meter pulls count every such GET" in warning["detail"]

    async def test_rate_limit_of_the_get_reaches_the_result_and_the_observer(
        self, observer: RecordingObserver
    ) -> None:
        fake = quirky("405")
        fake.get_headers.update(
            {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "96;w=21600"}
        )

        (result,) = await heads(fake, 1, observer=observer)

        expected = RateLimit(100, 96, 21600, None)
        assert result.rate_limit == expected
        assert observer.rate_limits == [("ghcr.io", expected)]

    async def test_head_that_works_is_used_and_counts_no_get(
        self, fake_registry: FakeRegistry, observer: RecordingObserver
    ) -> None:
        fake_registry.add("acme/api:stable")

        results = await heads(fake_registry, 2, observer=observer)

        assert [result.method for result in results] == ["HEAD", "HEAD"]
        assert fake_registry.gets == []
        assert (observer.fallbacks, observer.fetched) == ([], [])

    async def test_head_404_confirmed_by_get_404_keeps_head_in_use(
        self, observer: RecordingObserver
    ) -> None:
        """A missing tag says nothing against HEAD: the next check HEADs again."""
        fake = FakeRegistry()
        fake.add("acme/api:other")

        async with client_for(fake, observer=observer) as client:
            with pytest.raises(NotFound):
                await client.head_manifest(API)
            fake.add("acme/api:stable")
            result = await client.head_manifest(API)

        assert result.method == "HEAD"
        assert [request.method for request in fake.requests] == ["HEAD", "GET", "HEAD"]
        assert observer.fallbacks == []

    async def test_fallback_by_digest_checks_the_body_against_the_digest(
        self,
    ) -> None:
        body = INDEX.encode()
        wanted = sha256(body)
        fake = FakeRegistry(head_status=405)
        fake.add(f"acme/api@{wanted}", Manifest.of(body))

        async with client_for(fake) as client:
            result = await client.head_manifest(
                Reference.parse(f"ghcr.io/acme/api@{wanted}")
            )
            other = Reference.parse(f"ghcr.io/acme/api@{digest_of('other')}")
            fake.add(f"acme/api@{other.digest}", Manifest.of(body))
            with pytest.raises(ProtocolViolation, match="not the one asked for"):
                await client.head_manifest(other)

        assert result.descriptor.digest == wanted

    async def test_fallback_through_bearer_auth_reuses_the_token(self) -> None:
        fake = quirky("no_digest")
        fake.auth = "bearer"

        (result,) = await heads(fake, 1)

        assert result.method == "GET"
        assert len(fake.token_requests) == 1
        assert fake.gets[0].headers["authorization"] == "Bearer tok-1"

    async def test_head_refused_before_auth_still_gets_its_token_on_get(self) -> None:
        """A registry that answers HEAD 405 unauthenticated asks for a token on GET."""
        fake = FakeRegistry(auth="bearer")
        fake.add("acme/api:stable", Manifest.of(INDEX.encode()))
        fake.faults.append(405)

        (result,) = await heads(fake, 1)

        assert result.descriptor.digest == sha256(INDEX.encode())
        assert [
            (request.method, status)
            for request, status in fake.answers
            if "/v2/" in request.url.path
        ] == [("HEAD", 405), ("GET", 401), ("GET", 200)]


class TestDigestMismatch:
    async def test_body_hash_wins_over_a_lying_digest_header(self) -> None:
        fake = quirky("no_digest")
        fake.get_headers["Docker-Content-Digest"] = digest_of("a lie")

        with capture_logs() as logs:
            results = await heads(fake, 2)

        assert {result.descriptor.digest for result in results} == {
            sha256(INDEX.encode())
        }
        (warning,) = events(logs, "manifest.digest_mismatch")
        assert warning["log_level"] == "warning"
        assert warning["registry"] == "ghcr.io"
        assert warning["digest"] == str(sha256(INDEX.encode()))
        assert warning["header_digest"] == digest_of("a lie")

    @pytest.mark.parametrize(
        "header",
        [
            pytest.param(None, id="no-header"),
            pytest.param(str(sha256(INDEX.encode())), id="matching"),
            pytest.param(
                "sha512:" + hashlib.sha512(INDEX.encode()).hexdigest(),
                id="matching-sha512",
            ),
        ],
    )
    async def test_agreeing_or_absent_header_logs_no_mismatch(
        self, header: str | None
    ) -> None:
        fake = quirky("no_digest")
        if header is None:
            fake.omit.add("Docker-Content-Digest")
        else:
            fake.get_headers["Docker-Content-Digest"] = header

        with capture_logs() as logs:
            (result,) = await heads(fake, 1)

        assert result.descriptor.digest == sha256(INDEX.encode())
        assert events(logs, "manifest.digest_mismatch") == []


class TestRefusedBodies:
    @pytest.mark.parametrize(
        ("content_type", "body"),
        [
            pytest.param(DOCKER_SCHEMA1, b"{}", id="schema1"),
            pytest.param(DOCKER_SCHEMA1_SIGNED, b"{}", id="schema1-signed"),
            pytest.param(
                "application/json",
                b'{"schemaVersion": 1, "name": "acme/api", "fsLayers": []}',
                id="schema1-served-as-json",
            ),
        ],
    )
    async def test_schema1_on_get_is_unsupported(
        self, content_type: str, body: bytes
    ) -> None:
        fake = FakeRegistry(head_status=405)
        fake.add("acme/api:stable", Manifest.of(body, content_type))

        with pytest.raises(UnsupportedManifest) as caught:
            await heads(fake, 1)

        assert "ignored the Accept header and served schema1" in str(caught.value)
        assert caught.value.method == "GET"

    async def test_json_content_type_takes_the_media_type_the_body_declares(
        self,
    ) -> None:
        fake = FakeRegistry(head_status=405)
        fake.add("acme/api:stable", Manifest.of(INDEX.encode(), "application/json"))

        (result,) = await heads(fake, 1)

        assert result.descriptor.media_type == OCI_INDEX

    async def test_body_declared_past_4_mib_is_refused_unread(self) -> None:
        fake = FakeRegistry(head_status=405, chunk_size=CHUNK)
        fake.add("acme/api:stable", Manifest.of(b" " * (2 * MAX_MANIFEST_BYTES)))

        with pytest.raises(ProtocolViolation) as caught:
            await heads(fake, 1)

        assert "larger than 4 MiB" in str(caught.value)
        assert caught.value.method == "GET"
        assert fake.bytes_streamed == 0

    async def test_body_streamed_past_4_mib_is_dropped_at_the_cap(self) -> None:
        """Without Content-Length, reading stops one chunk past the cap."""
        fake = FakeRegistry(head_status=405, chunk_size=CHUNK)
        fake.add("acme/api:stable", Manifest.of(b" " * (2 * MAX_MANIFEST_BYTES)))
        fake.omit.add("Content-Length")

        with pytest.raises(ProtocolViolation, match="larger than 4 MiB"):
            await heads(fake, 1)

        assert MAX_MANIFEST_BYTES < fake.bytes_streamed <= MAX_MANIFEST_BYTES + CHUNK

    async def test_body_of_exactly_4_mib_is_read(self) -> None:
        body = b" " * MAX_MANIFEST_BYTES
        fake = FakeRegistry(head_status=405)
        fake.add("acme/api:stable", Manifest.of(body))

        (result,) = await heads(fake, 1)

        assert result.descriptor.digest == sha256(body)


class TestGetManifest:
    async def test_get_manifest_returns_the_exact_bytes_and_their_digest(
        self, observer: RecordingObserver
    ) -> None:
        body = INDEX.encode() + b"\n"
        fake = FakeRegistry(auth="bearer")
        fake.add("acme/api:stable", Manifest.of(body))

        async with client_for(fake, observer=observer) as client:
            manifest = await client.get_manifest(API)

        assert manifest.body == body
        assert manifest.descriptor.digest == sha256(body)
        assert manifest.descriptor.media_type == OCI_INDEX
        assert manifest.descriptor.size == len(body)
        assert fake.heads == []
        assert fake.gets[-1].headers["accept"] == MANIFEST_ACCEPT
        assert observer.fetched == ["ghcr.io", "ghcr.io"]
        assert observer.fallbacks == []
        assert "body" not in repr(manifest)

    async def test_get_manifest_by_digest_refuses_a_body_of_another_digest(
        self,
    ) -> None:
        wanted = digest_of("wanted")
        fake = FakeRegistry()
        fake.add(f"acme/api@{wanted}", Manifest.of(b'{"tampered": true}'))

        async with client_for(fake) as client:
            with pytest.raises(ProtocolViolation) as caught:
                await client.get_manifest(
                    Reference("ghcr.io", "acme/api", None, Digest.parse(wanted))
                )

        assert "not the one asked for" in str(caught.value)
        assert str(caught.value).startswith(f"GET manifest ghcr.io/acme/api@{wanted}")

    async def test_get_manifest_by_digest_returns_it(self) -> None:
        body = INDEX.encode()
        wanted = sha256(body)
        fake = FakeRegistry()
        fake.add(f"acme/api@{wanted}", Manifest.of(body))

        async with client_for(fake) as client:
            manifest = await client.get_manifest(
                Reference("ghcr.io", "acme/api", None, wanted)
            )

        assert (manifest.descriptor.digest, manifest.body) == (wanted, body)

    async def test_get_manifest_of_a_missing_tag_is_not_found(self) -> None:
        fake = FakeRegistry()

        async with client_for(fake) as client:
            with pytest.raises(NotFound) as caught:
                await client.get_manifest(API)

        assert caught.value.codes == ("MANIFEST_UNKNOWN",)
        assert [request.method for request in fake.requests] == ["GET"]

    async def test_get_manifest_is_capped(self) -> None:
        fake = FakeRegistry()
        fake.add("acme/api:stable", Manifest.of(b" " * (MAX_MANIFEST_BYTES + 1)))

        async with client_for(fake) as client:
            with pytest.raises(RegistryError, match="larger than 4 MiB"):
                await client.get_manifest(API)


async def test_a_confirmed_404_is_believed_from_then_on() -> None:
    """Once a GET agreed with a HEAD's 404, missing tags cost no GET per check."""
    fake = FakeRegistry()
    fake.add("acme/api:stable")

    async with client_for(fake) as client:
        for tag in ("gone", "gone", "also-gone"):
            with pytest.raises(NotFound):
                await client.head_manifest(Reference.parse(f"ghcr.io/acme/api:{tag}"))

    gets = [
        r for r in fake.requests if r.method == "GET" and "/manifests/" in r.url.path
    ]
    assert len(gets) == 1
