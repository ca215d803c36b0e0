"""The real RegistryClient against small fake registries served by MockTransport."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Literal

import httpx
import pytest
from structlog.testing import capture_logs

from tests.fakes.registry import (
    REALM,
    FakeClock,
    FakeRegistry,
    Manifest,
    RecordingObserver,
    RecordingSleep,
    basic,
    client_for,
    digest_of,
)
from watcher import __version__
from watcher.config import RegistrySettings
from watcher.errors import (
    AuthError,
    NotFound,
    ProtocolViolation,
    RateLimited,
    RegistryError,
    RegistryUnavailable,
    UnsupportedManifest,
)
from watcher.reference import Digest, Reference
from watcher.registry import MANIFEST_ACCEPT, HeadResult, RateLimit, RegistryClient
from watcher.registry.media_types import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    OCI_INDEX,
    OCI_MANIFEST,
)
from watcher.registry.retry import parse_retry_after

pytestmark = pytest.mark.anyio

API = Reference.parse("ghcr.io/acme/api:stable")


async def head(
    fake: FakeRegistry, reference: Reference = API, **settings: Any
) -> HeadResult:
    async with client_for(fake, **settings) as client:
        return await client.head_manifest(reference)


async def head_error(
    fake: FakeRegistry, reference: Reference = API, **settings: Any
) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        await head(fake, reference, **settings)

    return caught.value


class TestHeadManifest:
    async def test_head_returns_the_descriptor_in_the_answer_headers(
        self, fake_registry: FakeRegistry
    ) -> None:
        manifest = fake_registry.add(
            "acme/api:stable", Manifest(digest_of("x"), OCI_MANIFEST, 527)
        )

        result = await head(fake_registry)

        assert result.descriptor.digest == Digest.parse(manifest.digest)
        assert result.descriptor.media_type == OCI_MANIFEST
        assert result.descriptor.size == 527
        assert result.rate_limit is None

    async def test_head_asks_for_indexes_and_manifests_in_order(
        self, fake_registry: FakeRegistry
    ) -> None:
        fake_registry.add("acme/api:stable")

        await head(fake_registry)

        sent = fake_registry.heads[0]
        accepted = [item.strip() for item in sent.headers["accept"].split(",")]
        assert accepted == [
            OCI_INDEX,
            DOCKER_MANIFEST_LIST,
            OCI_MANIFEST,
            DOCKER_MANIFEST,
        ]
        assert sent.headers["accept"] == MANIFEST_ACCEPT
        assert sent.headers["user-agent"] == f"watcher/{__version__}"
        assert "authorization" not in sent.headers

    @pytest.mark.parametrize(
        ("reference", "endpoint", "url"),
        [
            pytest.param(
                "nginx:1.27",
                None,
                "https://registry-1.docker.io/v2/library/nginx/manifests/1.27",
                id="docker-hub",
            ),
            pytest.param(
                "ghcr.io/acme/api:stable",
                None,
                "https://ghcr.io/v2/acme/api/manifests/stable",
                id="https-by-default",
            ),
            pytest.param(
                "localhost:5000/acme/api:1",
                None,
                "http://localhost:5000/v2/acme/api/manifests/1",
                id="localhost-is-http",
            ),
            pytest.param(
                "localhost/acme/api:1",
                None,
                "http://localhost/v2/acme/api/manifests/1",
                id="localhost-without-port",
            ),
            pytest.param(
                "127.0.0.2:5000/acme/api:1",
                None,
                "http://127.0.0.2:5000/v2/acme/api/manifests/1",
                id="ipv4-loopback-is-http",
            ),
            pytest.param(
                "[::1]:5000/acme/api:1",
                None,
                "http://[::1]:5000/v2/acme/api/manifests/1",
                id="ipv6-loopback-is-http",
            ),
            pytest.param(
                "10.0.0.1:5000/acme/api:1",
                None,
                "https://10.0.0.1:5000/v2/acme/api/manifests/1",
                id="private-address-is-https",
            ),
            pytest.param(
                "ghcr.io/acme/api:stable",
                "http://mirror.test:8080/prefix/",
                "http://mirror.test:8080/prefix/v2/acme/api/manifests/stable",
                id="endpoint-wins",
            ),
            pytest.param(
                f"ghcr.io/acme/api@{digest_of('acme/api:stable')}",
                None,
                f"https://ghcr.io/v2/acme/api/manifests/{digest_of('acme/api:stable')}",
                id="by-digest",
            ),
        ],
    )
    async def test_head_url_follows_endpoint_then_host(
        self, reference: str, endpoint: str | None, url: str
    ) -> None:
        fake = FakeRegistry(status=200, headers={"Content-Type": OCI_INDEX})
        fake.headers["Docker-Content-Digest"] = digest_of("acme/api:stable")

        await head(fake, Reference.parse(reference), endpoint=endpoint)

        assert str(fake.heads[0].url) == url

    @pytest.mark.parametrize(
        ("content_type", "media_type"),
        [
            pytest.param(OCI_INDEX, OCI_INDEX, id="plain"),
            pytest.param(
                f"{DOCKER_MANIFEST}; charset=utf-8", DOCKER_MANIFEST, id="charset"
            ),
            pytest.param(f" {OCI_INDEX.upper()} ", OCI_INDEX, id="case-and-blanks"),
        ],
    )
    async def test_head_records_the_media_type_without_parameters(
        self, fake_registry: FakeRegistry, content_type: str, media_type: str
    ) -> None:
        fake_registry.add("acme/api:stable")
        fake_registry.headers["Content-Type"] = content_type

        result = await head(fake_registry)

        assert result.descriptor.media_type == media_type

    async def test_head_without_content_length_has_no_size(
        self, fake_registry: FakeRegistry
    ) -> None:
        fake_registry.add("acme/api:stable")
        fake_registry.omit.add("Content-Length")

        result = await head(fake_registry)

        assert result.descriptor.size is None

    @pytest.mark.parametrize(
        ("reference", "endpoint"),
        [
            pytest.param(
                Reference("localhost:99999", "acme/api", "1"),
                None,
                id="port-out-of-range",
            ),
            pytest.param(
                Reference("ghcr.io", "acme/api", "1"),
                "http://ho\x00st",
                id="control-character",
            ),
        ],
    )
    async def test_unusable_registry_url_is_refused_before_any_request(
        self, fake_registry: FakeRegistry, reference: Reference, endpoint: str | None
    ) -> None:
        """References and settings refuse these when parsed; the client, when built."""
        settings = RegistrySettings.model_construct(endpoint=endpoint)
        client = RegistryClient(
            lambda name: settings, transport=fake_registry.transport()
        )

        async with client:
            with pytest.raises(RegistryError) as caught:
                await client.head_manifest(reference)

        assert type(caught.value) is RegistryError
        assert "registry URL" in str(caught.value)
        assert fake_registry.requests == []

    async def test_client_refuses_use_after_close(
        self, fake_registry: FakeRegistry
    ) -> None:
        client = client_for(fake_registry)
        await client.aclose()

        with pytest.raises(RuntimeError, match="closed"):
            await client.head_manifest(API)


class TestAnswersWeRefuse:
    @pytest.mark.parametrize(
        "digest",
        [
            pytest.param("sha256:abc", id="short"),
            pytest.param("md5:" + "a" * 32, id="unknown-algorithm"),
            pytest.param("", id="empty"),
        ],
    )
    async def test_invalid_digest_header_is_a_protocol_violation(
        self, fake_registry: FakeRegistry, digest: str
    ) -> None:
        fake_registry.add("acme/api:stable", Manifest(digest))

        error = await head_error(fake_registry)

        assert isinstance(error, ProtocolViolation)
        assert "Docker-Content-Digest header is invalid" in str(error)

    async def test_missing_content_type_is_a_protocol_violation(
        self, fake_registry: FakeRegistry
    ) -> None:
        fake_registry.add("acme/api:stable")
        fake_registry.omit.add("Content-Type")

        error = await head_error(fake_registry)

        assert isinstance(error, ProtocolViolation)
        assert "Content-Type" in str(error)

    async def test_garbled_content_length_is_a_protocol_violation(
        self, fake_registry: FakeRegistry
    ) -> None:
        fake_registry.add("acme/api:stable")
        fake_registry.headers["Content-Length"] = "lots"

        error = await head_error(fake_registry)

        assert isinstance(error, ProtocolViolation)
        assert "Content-Length" in str(error)

    @pytest.mark.parametrize(
        "media_type",
        [
            pytest.param(DOCKER_SCHEMA1, id="schema1"),
            pytest.param(DOCKER_SCHEMA1_SIGNED, id="schema1-signed"),
            pytest.param(f"{DOCKER_SCHEMA1_SIGNED}; charset=utf-8", id="with-charset"),
        ],
    )
    async def test_schema1_answer_is_unsupported(
        self, fake_registry: FakeRegistry, media_type: str
    ) -> None:
        fake_registry.add("acme/api:stable", Manifest(digest_of("x"), media_type))

        error = await head_error(fake_registry)

        assert isinstance(error, UnsupportedManifest)
        assert "ignored the Accept header and served schema1" in str(error)

    async def test_other_digest_for_a_digest_reference_is_a_protocol_violation(
        self, fake_registry: FakeRegistry
    ) -> None:
        wanted = digest_of("wanted")
        fake_registry.add(f"acme/api@{wanted}", Manifest(digest_of("other")))

        error = await head_error(
            fake_registry, Reference.parse(f"ghcr.io/acme/api@{wanted}")
        )

        assert isinstance(error, ProtocolViolation)
        assert "another digest" in str(error)


class TestStatus:
    async def test_404_is_not_found_once_a_get_confirms_it(
        self, fake_registry: FakeRegistry, observer: RecordingObserver
    ) -> None:
        """A HEAD 404 may be a registry's HEAD bug; the GET's 404 is the answer."""
        error = await head_error(fake_registry, observer=observer)

        assert isinstance(error, NotFound)
        assert (error.status, error.codes, error.transient) == (
            404,
            ("MANIFEST_UNKNOWN",),
            False,
        )
        assert str(error).startswith(
            "GET manifest ghcr.io/acme/api:stable: 404 not found (MANIFEST_UNKNOWN); "
        )
        assert [request.method for request in fake_registry.requests] == [
            "HEAD",
            "GET",
        ]
        assert observer.fallbacks == []

    @pytest.mark.parametrize(
        ("retry_after", "expected"),
        [
            pytest.param(lambda: "120", 120, id="seconds"),
            pytest.param(
                lambda: format_datetime(
                    datetime.now(UTC) + timedelta(seconds=600), usegmt=True
                ),
                pytest.approx(595, abs=5),
                id="http-date",
            ),
            pytest.param(lambda: None, None, id="absent"),
        ],
    )
    async def test_429_is_rate_limited_with_retry_after(
        self, retry_after: Callable[[], str | None], expected: object
    ) -> None:
        fake = FakeRegistry(status=429)
        value = retry_after()
        if value is not None:
            fake.headers["Retry-After"] = value

        error = await head_error(fake)

        assert isinstance(error, RateLimited)
        assert error.transient
        assert error.retry_after == expected

    @pytest.mark.parametrize("status", [500, 502, 503])
    async def test_5xx_is_a_transient_server_error(self, status: int) -> None:
        error = await head_error(FakeRegistry(status=status))

        assert isinstance(error, RegistryUnavailable)
        assert (error.reason, error.status, error.transient) == (
            "server_error",
            status,
            True,
        )

    @pytest.mark.parametrize(
        ("status", "headers", "text"),
        [
            pytest.param(
                303,
                {"Location": "https://storage.test/blob?X-Amz-Signature=planted"},
                "unexpected status 303",
                id="see-other-not-followed",
            ),
            pytest.param(400, {}, "unexpected status 400", id="bad-request"),
            pytest.param(204, {}, "unexpected status 204", id="no-content"),
        ],
    )
    async def test_unexpected_status_is_a_protocol_violation(
        self, status: int, headers: dict[str, str], text: str
    ) -> None:
        fake = FakeRegistry(status=status, headers=headers)

        error = await head_error(fake)

        assert isinstance(error, ProtocolViolation)
        assert text in str(error)
        assert "planted" not in str(error)
        assert len(fake.requests) == 1

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param("90", 90.0, id="seconds"),
            pytest.param("Fri, 01 May 2026 12:01:30 GMT", 90.0, id="http-date"),
            pytest.param("Fri, 01 May 2026 11:00:00 GMT", 0.0, id="past-date"),
            pytest.param("Fri, 01 May 2026 12:01:30 -0000", 90.0, id="naive-date"),
            pytest.param("soon", None, id="garbage"),
            pytest.param("²", None, id="non-ascii-digit"),
            pytest.param(None, None, id="absent"),
        ],
    )
    def test_parse_retry_after_reads_seconds_or_a_date(
        self, value: str | None, expected: float | None
    ) -> None:
        now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)

        assert parse_retry_after(value, now) == expected


class TestTransportFailures:
    @pytest.mark.parametrize(
        ("exc", "reason"),
        [
            pytest.param(
                httpx.ConnectError("[Errno -2] Name or service not known"),
                "dns",
                id="dns-glibc",
            ),
            pytest.param(
                httpx.ConnectError(
                    "[Errno 8] nodename nor servname provided, or not known"
                ),
                "dns",
                id="dns-macos",
            ),
            pytest.param(
                httpx.ConnectError("[Errno -3] Temporary failure in name resolution"),
                "dns",
                id="dns-temporary",
            ),
            pytest.param(
                httpx.ConnectError("[Errno 111] Connection refused"),
                "connect",
                id="refused",
            ),
            pytest.param(
                httpx.RemoteProtocolError("Server disconnected"),
                "connect",
                id="protocol",
            ),
            pytest.param(httpx.ReadTimeout("timed out"), "timeout", id="read-timeout"),
            pytest.param(
                httpx.ConnectTimeout("timed out"), "timeout", id="connect-timeout"
            ),
            pytest.param(httpx.PoolTimeout("timed out"), "timeout", id="pool-timeout"),
        ],
    )
    async def test_transport_error_becomes_registry_unavailable(
        self, exc: httpx.RequestError, reason: str
    ) -> None:
        """Connect faults and timeouts are retried (3 times by default); DNS is not."""
        attempts: list[httpx.Request] = []

        def fail(request: httpx.Request) -> httpx.Response:
            attempts.append(request)
            raise exc

        sleep = RecordingSleep()
        async with RegistryClient(
            lambda name: RegistrySettings(),
            transport=httpx.MockTransport(fail),
            sleep=sleep,
        ) as client:
            with pytest.raises(RegistryUnavailable) as caught:
                await client.head_manifest(API)

        retried = reason in ("connect", "timeout")
        assert caught.value.reason == reason
        assert caught.value.transient
        assert caught.value.__cause__ is exc
        assert len(attempts) == (4 if retried else 1)
        assert len(sleep.delays) == (3 if retried else 0)

    async def test_tls_failure_is_told_apart_from_other_connect_errors(self) -> None:
        def fail(request: httpx.Request) -> httpx.Response:
            msg = "certificate verify failed"
            try:
                raise ssl.SSLCertVerificationError(msg)
            except ssl.SSLError as exc:
                raise httpx.ConnectError(msg) from exc

        async with RegistryClient(
            lambda name: RegistrySettings(),
            transport=httpx.MockTransport(fail),
            sleep=RecordingSleep(),
        ) as client:
            with pytest.raises(RegistryUnavailable) as caught:
                await client.head_manifest(API)

        assert caught.value.reason == "tls"


class TestBearer:
    async def test_anonymous_token_is_fetched_from_the_challenge_realm(self) -> None:
        fake = FakeRegistry(auth="bearer")
        fake.add("acme/api:stable")

        result = await head(fake)

        token_request = fake.token_requests[0]
        assert str(token_request.url).startswith(REALM + "?")
        assert dict(token_request.url.params) == {
            "service": "fake.test",
            "scope": "repository:acme/api:pull",
        }
        assert "authorization" not in token_request.headers
        assert fake.heads[-1].headers["authorization"] == "Bearer tok-1"
        assert result.descriptor.digest == Digest.parse(digest_of("acme/api:stable"))

    async def test_token_request_omits_service_when_the_challenge_has_none(
        self,
    ) -> None:
        fake = FakeRegistry(auth="bearer", service=None)
        fake.add("acme/api:stable")

        await head(fake)

        assert dict(fake.token_requests[0].url.params) == {
            "scope": "repository:acme/api:pull"
        }

    async def test_token_request_keeps_the_realm_query(self) -> None:
        fake = FakeRegistry(auth="bearer", realm=REALM + "?account=robot")
        fake.add("acme/api:stable")

        await head(fake)

        assert fake.token_requests[0].url.params["account"] == "robot"

    async def test_token_request_carries_configured_credentials(self) -> None:
        fake = FakeRegistry(auth="bearer", credentials=("alice", "s3cret"))
        fake.add("acme/api:stable")

        await head(fake, username="alice", password="s3cret")

        assert fake.token_requests[0].headers["authorization"] == basic(
            "alice", "s3cret"
        )
        assert "authorization" not in fake.heads[0].headers

    async def test_challenge_scope_is_used_when_it_names_the_repository(self) -> None:
        fake = FakeRegistry(
            auth="bearer", scope_template="repository:{repository}:pull,push"
        )
        fake.add("acme/api:stable")

        await head(fake)

        assert (
            fake.token_requests[0].url.params["scope"]
            == "repository:acme/api:pull,push"
        )

    async def test_challenge_scope_naming_another_repository_is_not_used(self) -> None:
        fake = FakeRegistry(auth="bearer", scope_template="repository:acme/other:pull")
        fake.add("acme/api:stable")

        await head(fake)

        assert fake.token_requests[0].url.params["scope"] == "repository:acme/api:pull"

    async def test_scope_of_one_repository_is_not_reused_for_another(self) -> None:
        fake = FakeRegistry(
            auth="bearer", scope_template="repository:{repository}:pull,push"
        )
        fake.add("acme/api:stable")
        fake.add("acme/web:stable")

        async with client_for(fake) as client:
            await client.head_manifest(API)
            await client.head_manifest(Reference.parse("ghcr.io/acme/web:stable"))

        scopes = [request.url.params["scope"] for request in fake.token_requests]
        assert scopes == ["repository:acme/api:pull,push", "repository:acme/web:pull"]

    @pytest.mark.parametrize(
        "token_field",
        [
            pytest.param("access_token", id="access-token-only"),
            pytest.param("both", id="token-preferred-over-access-token"),
        ],
    )
    async def test_token_is_read_from_token_or_access_token(
        self, token_field: Literal["access_token", "both"]
    ) -> None:
        """With both, the fake puts the real token in ``token`` and junk elsewhere."""
        fake = FakeRegistry(auth="bearer", token_field=token_field)
        fake.add("acme/api:stable")

        await head(fake)

        assert fake.heads[-1].headers["authorization"] == "Bearer tok-1"

    async def test_cached_token_is_reused_by_later_heads(self) -> None:
        fake = FakeRegistry(auth="bearer")
        for tag in ("1", "2", "3"):
            fake.add(f"acme/api:{tag}")

        async with client_for(fake) as client:
            for tag in ("1", "2", "3"):
                await client.head_manifest(API.with_tag(tag))

        assert len(fake.token_requests) == 1
        assert fake.unauthorized == 1
        assert len(fake.heads) == 4

    async def test_expired_token_is_refetched(self, clock: FakeClock) -> None:
        fake = FakeRegistry(auth="bearer", expires_in=300)
        fake.add("acme/api:stable")

        async with client_for(fake) as client:
            await client.head_manifest(API)
            clock.advance(260)
            await client.head_manifest(API)
            tokens_while_fresh = len(fake.token_requests)
            clock.advance(15)
            await client.head_manifest(API)

        assert tokens_while_fresh == 1
        assert len(fake.token_requests) == 2
        assert fake.heads[-1].headers["authorization"] == "Bearer tok-2"

    async def test_token_without_expires_in_lives_60_seconds(
        self, clock: FakeClock
    ) -> None:
        fake = FakeRegistry(auth="bearer", expires_in=None)
        fake.add("acme/api:stable")

        async with client_for(fake) as client:
            await client.head_manifest(API)
            clock.advance(50)
            await client.head_manifest(API)
            tokens_while_fresh = len(fake.token_requests)
            clock.advance(5)
            await client.head_manifest(API)

        assert (tokens_while_fresh, len(fake.token_requests)) == (1, 2)

    async def test_refused_cached_token_is_refetched_once(self) -> None:
        fake = FakeRegistry(auth="bearer")
        fake.add("acme/api:stable")

        async with client_for(fake) as client:
            await client.head_manifest(API)
            fake.revoke_tokens()
            await client.head_manifest(API)

        assert len(fake.token_requests) == 2
        assert fake.heads[-1].headers["authorization"] == "Bearer tok-2"

    async def test_second_401_after_refetch_is_an_auth_error(self) -> None:
        fake = FakeRegistry(auth="bearer")
        fake.add("acme/api:stable")

        async with client_for(fake) as client:
            await client.head_manifest(API)
            fake.refuse_tokens = True
            with pytest.raises(AuthError) as caught:
                await client.head_manifest(API)

        assert "401 after token exchange" in str(caught.value)
        assert len(fake.token_requests) == 2
        assert len(fake.heads) == 4

    async def test_fresh_token_refused_is_an_auth_error_without_retry(self) -> None:
        fake = FakeRegistry(auth="bearer", refuse_tokens=True)
        fake.add("acme/api:stable")

        error = await head_error(fake)

        assert isinstance(error, AuthError)
        assert (error.status, error.method) == (401, "HEAD")
        assert str(error) == (
            "HEAD manifest ghcr.io/acme/api:stable: 401 after token exchange; "
            "if the repository is private, "
            'set username and password_env in [registries."ghcr.io"]'
        )
        assert (len(fake.heads), len(fake.token_requests)) == (2, 1)

    async def test_fresh_token_refused_after_the_probe_is_not_retried(self) -> None:
        """Only a cached token earns a second try; a token fetched just now does not."""
        fake = FakeRegistry(auth="bearer")
        fake.add("acme/api:stable")
        fake.add("acme/web:stable")

        async with client_for(fake) as client:
            await client.head_manifest(API)
            fake.refuse_tokens = True
            with pytest.raises(AuthError):
                await client.head_manifest(Reference.parse("ghcr.io/acme/web:stable"))

        web = [request for request in fake.heads if "acme/web" in request.url.path]
        assert (len(web), len(fake.token_requests)) == (1, 2)

    async def test_registry_that_starts_asking_for_tokens_gets_one(self) -> None:
        fake = FakeRegistry(auth="none")
        fake.add("acme/api:stable")

        async with client_for(fake) as client:
            await client.head_manifest(API)
            fake.auth = "bearer"
            await client.head_manifest(API)

        assert fake.heads[-1].headers["authorization"] == "Bearer tok-1"

    @pytest.mark.parametrize(
        ("fake", "failure"),
        [
            pytest.param(
                FakeRegistry(auth="bearer", credentials=("alice", "right")),
                "answered 401",
                id="credentials-refused",
            ),
            pytest.param(
                FakeRegistry(auth="bearer", token_status=503),
                "answered 503",
                id="server-error",
            ),
            pytest.param(
                FakeRegistry(auth="bearer", token_body=b"<html>"),
                "gave no usable token",
                id="not-json",
            ),
            pytest.param(
                FakeRegistry(auth="bearer", token_body=b'{"expires_in": 60}'),
                "gave no usable token",
                id="no-token",
            ),
        ],
    )
    async def test_token_endpoint_failure_is_an_auth_error_naming_the_config(
        self, fake: FakeRegistry, failure: str, observer: RecordingObserver
    ) -> None:
        fake.add("acme/api:stable")

        with pytest.raises(AuthError) as caught:
            await head(fake, username="alice", password="wrong", observer=observer)

        message = str(caught.value)
        assert message.startswith(
            "fetch token for ghcr.io/acme/api: https://auth.fake.test/token "
        )
        assert failure in message
        assert 'check the credentials for ghcr.io in [registries."ghcr.io"]' in message
        assert (caught.value.method, caught.value.url) == ("GET", REALM)
        assert observer.tokens == [("ghcr.io", False)]

    @pytest.mark.parametrize(
        ("realm", "text"),
        [
            pytest.param(
                "http://auth.fake.test/token?secret=planted",
                "plain HTTP while the registry uses HTTPS",
                id="https-downgrade",
            ),
            pytest.param("ftp://auth.fake.test/token", "not an http(s) URL", id="ftp"),
            pytest.param("/token", "not an http(s) URL", id="relative"),
            pytest.param("http://[bad", "not an http(s) URL", id="unparseable"),
            pytest.param("", "has no realm", id="empty"),
        ],
    )
    async def test_unsafe_realm_is_refused_before_any_token_request(
        self, realm: str, text: str
    ) -> None:
        fake = FakeRegistry(auth="bearer", realm=realm)

        error = await head_error(fake, username="alice", password="pw")

        assert isinstance(error, ProtocolViolation)
        assert text in str(error)
        assert "planted" not in str(error)
        assert fake.token_requests == []

    async def test_plain_http_realm_is_followed_for_a_plain_http_registry(self) -> None:
        fake = FakeRegistry(auth="bearer", realm="http://localhost:5001/token")
        fake.add("acme/api:1")

        await head(fake, Reference.parse("localhost:5000/acme/api:1"))

        assert str(fake.token_requests[0].url).startswith(
            "http://localhost:5001/token?"
        )


class TestConcurrency:
    async def test_concurrent_heads_of_one_repository_pay_one_401_and_one_token(
        self,
    ) -> None:
        fake = FakeRegistry(auth="bearer")
        tags = [f"1.{minor}" for minor in range(50)]
        for tag in tags:
            fake.add(f"acme/api:{tag}")

        async with client_for(fake, concurrency=8) as client:
            results = await asyncio.gather(
                *(client.head_manifest(API.with_tag(tag)) for tag in tags)
            )

        assert [result.descriptor.digest for result in results] == [
            Digest.parse(digest_of(f"acme/api:{tag}")) for tag in tags
        ]
        assert fake.unauthorized == 1
        assert len(fake.token_requests) == 1
        assert len(fake.heads) == 51

    async def test_concurrent_heads_across_repositories_pay_one_401_per_registry(
        self,
    ) -> None:
        fake = FakeRegistry(auth="bearer")
        references = [
            Reference.parse(f"ghcr.io/acme/repo{number}:{tag}")
            for number in range(5)
            for tag in range(10)
        ]
        for reference in references:
            fake.add(f"{reference.repository}:{reference.tag}")

        async with client_for(fake) as client:
            await asyncio.gather(*(client.head_manifest(r) for r in references))

        scopes = sorted(request.url.params["scope"] for request in fake.token_requests)
        assert fake.unauthorized == 1
        assert scopes == [f"repository:acme/repo{number}:pull" for number in range(5)]

    async def test_requests_in_flight_never_exceed_registry_concurrency(self) -> None:
        fake = FakeRegistry(delay=0.01)
        tags = [str(number) for number in range(20)]
        for tag in tags:
            fake.add(f"acme/api:{tag}")

        async with client_for(fake, concurrency=3) as client:
            await asyncio.gather(
                *(client.head_manifest(API.with_tag(tag)) for tag in tags)
            )

        assert fake.max_in_flight == 3

    async def test_probe_answered_5xx_leaves_the_next_burst_to_one_probe(self) -> None:
        """A 5xx says nothing about auth, so the next burst still pays one 401."""
        fake = FakeRegistry(auth="bearer", down=503)
        tags = [str(number) for number in range(10)]
        for tag in tags:
            fake.add(f"acme/api:{tag}")

        async with client_for(fake) as client:
            with pytest.raises(RegistryUnavailable):
                await client.head_manifest(API.with_tag("0"))

            fake.down = None
            await asyncio.gather(
                *(client.head_manifest(API.with_tag(tag)) for tag in tags)
            )

        assert fake.unauthorized == 1
        assert len(fake.token_requests) == 1


class TestBasicAndOtherSchemes:
    async def test_basic_challenge_is_answered_with_configured_credentials(
        self,
    ) -> None:
        fake = FakeRegistry(auth="basic", credentials=("alice", "s3cret"))
        fake.add("acme/api:stable")
        fake.add("acme/api:next")

        async with client_for(fake, username="alice", password="s3cret") as client:
            await client.head_manifest(API)
            await client.head_manifest(API.with_tag("next"))

        sent = [request.headers.get("authorization") for request in fake.heads]
        assert sent == [None, basic("alice", "s3cret"), basic("alice", "s3cret")]
        assert fake.token_requests == []

    async def test_basic_challenge_without_credentials_asks_for_them(self) -> None:
        fake = FakeRegistry(auth="basic", credentials=("alice", "s3cret"))

        error = await head_error(fake)

        assert isinstance(error, AuthError)
        assert str(error) == (
            "HEAD manifest ghcr.io/acme/api:stable: registry requires credentials; "
            'set username and password_env in [registries."ghcr.io"]'
        )

    async def test_refused_basic_credentials_are_an_auth_error(self) -> None:
        fake = FakeRegistry(auth="basic", credentials=("alice", "right"))

        error = await head_error(fake, username="alice", password="wrong")

        assert isinstance(error, AuthError)
        assert "401 with basic credentials; check username and password_env" in str(
            error
        )
        assert len(fake.heads) == 2

    async def test_unknown_scheme_is_an_auth_error_naming_it(self) -> None:
        fake = FakeRegistry(auth="bearer", challenge_header='Negotiate realm="corp"')

        error = await head_error(fake)

        assert isinstance(error, AuthError)
        assert "'negotiate' authentication" in str(error)

    async def test_401_without_a_challenge_is_an_auth_error(self) -> None:
        fake = FakeRegistry(auth="bearer", challenge_header="")

        error = await head_error(fake)

        assert isinstance(error, AuthError)
        assert "401 without a usable WWW-Authenticate challenge" in str(error)

    async def test_403_is_an_auth_error(self) -> None:
        error = await head_error(FakeRegistry(status=403))

        assert isinstance(error, AuthError)
        assert (error.status, error.reason) == (403, "auth")


class TestObserver:
    async def test_observer_hears_every_request_and_token(
        self, observer: RecordingObserver
    ) -> None:
        fake = FakeRegistry(auth="bearer")
        fake.add("acme/api:stable")

        await head(fake, observer=observer)

        assert observer.requests == [
            ("ghcr.io", "HEAD", 401),
            ("ghcr.io", "GET", 200),
            ("ghcr.io", "HEAD", 200),
        ]
        assert observer.tokens == [("ghcr.io", True)]

    async def test_observer_hears_a_request_that_got_no_answer(
        self, observer: RecordingObserver
    ) -> None:
        def fail(request: httpx.Request) -> httpx.Response:
            msg = "[Errno 111] Connection refused"
            raise httpx.ConnectError(msg)

        client = RegistryClient(
            lambda name: RegistrySettings(retries=0),
            observer=observer,
            transport=httpx.MockTransport(fail),
        )
        async with client:
            with pytest.raises(RegistryUnavailable):
                await client.head_manifest(Reference.parse("nginx:1.27"))

        assert observer.requests == [("docker.io", "HEAD", None)]

    async def test_rate_limit_headers_reach_the_result_and_the_observer(
        self, fake_registry: FakeRegistry, observer: RecordingObserver
    ) -> None:
        fake_registry.add("acme/api:stable")
        fake_registry.headers.update(
            {
                "ratelimit-limit": "100;w=21600",
                "ratelimit-remaining": "97;w=21600",
                "docker-ratelimit-source": "1.2.3.4",
            }
        )

        result = await head(fake_registry, observer=observer)

        expected = RateLimit(100, 97, 21600, "1.2.3.4")
        assert result.rate_limit == expected
        assert observer.rate_limits == [("ghcr.io", expected)]

    async def test_rate_limit_of_a_429_reaches_the_observer(
        self, observer: RecordingObserver
    ) -> None:
        fake = FakeRegistry(
            status=429,
            headers={"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0"},
        )

        with pytest.raises(RateLimited):
            await head(fake, observer=observer)

        assert observer.rate_limits == [("ghcr.io", RateLimit(100, 0, 21600, None))]


class TestLogsAndSecrets:
    async def test_each_request_is_logged_at_debug_with_a_redacted_url(self) -> None:
        fake = FakeRegistry(auth="bearer", realm=REALM + "?account=query-secret")
        fake.add("acme/api:stable")

        with capture_logs() as logs:
            await head(fake)

        requests = [log for log in logs if log["event"] == "http.request"]
        assert [(log["method"], log["url"], log["status"]) for log in requests] == [
            ("HEAD", "https://ghcr.io/v2/acme/api/manifests/stable", 401),
            ("GET", REALM, 200),
            ("HEAD", "https://ghcr.io/v2/acme/api/manifests/stable", 200),
        ]
        assert all(log["log_level"] == "debug" for log in requests)
        assert all(log["duration_ms"] >= 0 for log in requests)
        assert "query-secret" not in repr(logs)

    async def test_token_fetch_is_logged_with_scope_and_lifetime(self) -> None:
        fake = FakeRegistry(auth="bearer", expires_in=300)
        fake.add("acme/api:stable")

        with capture_logs() as logs:
            await head(fake)

        fetched = [log for log in logs if log["event"] == "token.fetched"]
        assert fetched == [
            {
                "event": "token.fetched",
                "log_level": "debug",
                "registry": "ghcr.io",
                "scope": "repository:acme/api:pull",
                "expires_in": 300,
            }
        ]

    @pytest.mark.parametrize(
        ("breakage", "token_sent"),
        [
            pytest.param({}, True, id="success"),
            pytest.param({"refuse_tokens": True}, True, id="token-refused"),
            pytest.param({"status": 404}, True, id="not-found"),
            pytest.param({"head_status": 405}, True, id="get-fallback"),
            pytest.param(
                {
                    "redirects": {
                        "https://ghcr.io/v2/acme/api/manifests/stable": (
                            "/v2/acme/api/manifests/moved?token=planted-query"
                        )
                    }
                },
                True,
                id="redirected",
            ),
            pytest.param({"token_status": 500}, False, id="token-endpoint-down"),
            pytest.param(
                {"token_body": b'{"token": "planted-token-9c1d", "expires_in": "x"}'},
                False,
                id="token-answer-unusable",
            ),
        ],
    )
    async def test_planted_password_and_token_appear_in_no_log_or_error(
        self, breakage: dict[str, object], token_sent: bool
    ) -> None:
        password, token = "planted-password-7f3a", "planted-token-9c1d"
        fake = FakeRegistry(
            auth="bearer",
            credentials=("alice", password),
            token_prefix=token,
            realm=REALM + "?planted-query=1",
        )
        fake.add("acme/api:stable")
        for name, value in breakage.items():
            setattr(fake, name, value)

        with capture_logs() as logs:
            try:
                await head(fake, username="alice", password=password)
                error = None
            except RegistryError as exc:
                error = exc

        sent = fake.heads[-1].headers.get("authorization", "")
        assert sent.startswith(f"Bearer {token}") is token_sent
        texts = [
            repr(logs),
            str(error),
            repr(error),
            repr(getattr(error, "__dict__", {})),
        ]
        for text in texts:
            assert password not in text
            assert token not in text
            assert "planted-query" not in text
            assert "Bearer " not in text
            assert "Basic " not in text


class TestMixedRepositories:
    """One registry, one repository behind Basic or another scheme, one public."""

    @pytest.mark.parametrize("scheme", ["Basic", "Negotiate"])
    async def test_a_protected_repository_does_not_fail_the_public_ones(
        self, scheme: str
    ) -> None:
        body = b'{"schemaVersion": 2}'
        digest = "sha256:" + hashlib.sha256(body).hexdigest()

        def handler(request: httpx.Request) -> httpx.Response:
            if "/private/" in request.url.path:
                headers = {"WWW-Authenticate": f'{scheme} realm="r"'}
                return httpx.Response(401, headers=headers)
            headers = {
                "Docker-Content-Digest": digest,
                "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            }
            return httpx.Response(200, headers=headers)

        settings = RegistrySettings(endpoint="https://mixed.example")
        client = RegistryClient(
            lambda name: settings, transport=httpx.MockTransport(handler)
        )
        async with client:
            with pytest.raises(AuthError):
                await client.head_manifest(Reference.parse("mixed.example/private/x:1"))
            found = [
                await client.head_manifest(Reference.parse("mixed.example/public/y:1"))
                for _ in range(2)
            ]

        assert [str(result.descriptor.digest) for result in found] == [digest, digest]


async def test_an_html_answer_is_never_recorded_as_a_manifest() -> None:
    """A proxy's login page answering 200 must not become the tag's digest."""
    digest = "sha256:" + "c" * 64

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Docker-Content-Digest": digest, "Content-Type": "text/html"}
        return httpx.Response(200, headers=headers)

    settings = RegistrySettings(endpoint="https://proxied.example")
    client = RegistryClient(
        lambda name: settings, transport=httpx.MockTransport(handler)
    )
    async with client:
        with pytest.raises(ProtocolViolation) as caught:
            await client.head_manifest(Reference.parse("proxied.example/app:1"))

    assert "the answer is text/html, not a manifest" in str(caught.value)


async def test_cookies_a_registry_sets_are_not_sent_back() -> None:
    """Like Docker, watcher keeps no cookies: a load balancer's cookie pins nothing."""
    digest = digest_of("cookie")
    sent_cookies: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent_cookies.append(request.headers.get("cookie"))
        return httpx.Response(
            200,
            headers={
                "Docker-Content-Digest": digest,
                "Content-Type": OCI_MANIFEST,
                "Content-Length": "10",
                "Set-Cookie": "AWSALB=sticky-node-3; Path=/",
            },
        )

    client = RegistryClient(
        lambda name: RegistrySettings(), transport=httpx.MockTransport(answer)
    )
    async with client:
        for _ in range(2):
            result = await client.head_manifest(API)

    assert str(result.descriptor.digest) == digest
    assert sent_cookies == [None, None]
