"""A small registry behind ``httpx.MockTransport``, with one switch per behaviour.

It stands in for what a local registry does not show: token auth with scopes,
Basic auth, missing headers, HEAD refused, schema1, rate limits, redirects to
object storage on another host, scripted faults, paged tag lists. It keeps every
request it saw, so tests assert on traffic, not on mocks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from watcher.config import RegistrySettings
from watcher.registry import RateLimit, RegistryClient
from watcher.registry.media_types import OCI_INDEX

REALM = "https://auth.fake.test/token"
SERVICE = "fake.test"


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class Manifest:
    """What the fake serves for a tag; ``body`` is what a GET gets."""

    digest: str
    media_type: str = OCI_INDEX
    size: int = 1234
    body: bytes | None = None

    @classmethod
    def of(cls, body: bytes, media_type: str = OCI_INDEX) -> Manifest:
        """A manifest whose digest and size are those of ``body``."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return cls(digest, media_type, len(body), body)


#: A scripted answer: a status, a status with headers, or a transport fault.
Fault: TypeAlias = int | tuple[int, dict[str, str]] | Exception


def error_body(code: str) -> bytes:
    """A distribution-spec error answer carrying ``code``."""
    return json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()


@dataclass
class FakeRegistry:
    """Serves ``manifests`` (keyed ``repository:tag``) under the chosen auth scheme."""

    auth: Literal["none", "bearer", "basic"] = "none"
    manifests: dict[str, Manifest] = field(default_factory=dict)
    realm: str = REALM
    service: str | None = SERVICE
    #: The challenge's scope; ``{repository}`` is filled in; None: no scope.
    scope_template: str | None = "repository:{repository}:pull"
    #: Overrides the whole WWW-Authenticate value of a 401.
    challenge_header: str | None = None
    #: Required by the token endpoint (bearer) or on every request (basic).
    credentials: tuple[str, str] | None = None
    token_prefix: str = "tok"
    token_field: Literal["token", "access_token", "both"] = "token"
    expires_in: int | None = 300
    token_status: int = 200
    token_body: bytes | None = None
    #: Tokens are refused from the start (True) or once issued (revoke_tokens).
    refuse_tokens: bool = False
    #: Answer every manifest request with this status, before looking at auth.
    down: int | None = None
    #: Answer every authorised manifest request with this status instead.
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    omit: set[str] = field(default_factory=set)
    delay: float = 0.0
    #: Answer every authorised manifest HEAD with this status instead (405, 404).
    head_status: int | None = None
    #: Headers left out of HEAD answers only (GETs keep them).
    head_omit: set[str] = field(default_factory=set)
    #: Headers of GET answers only, over the manifest's own.
    get_headers: dict[str, str] = field(default_factory=dict)
    #: URL (without query) → Location: answered with ``redirect_status`` first.
    redirects: dict[str, str] = field(default_factory=dict)
    redirect_status: int = 307
    #: Hosts that serve manifests to anyone (object storage behind signed URLs).
    open_hosts: set[str] = field(default_factory=set)
    #: Answered, one each and in order, to /v2/ requests before anything else.
    faults: list[Fault] = field(default_factory=list)
    #: Answered, one each and in order, to token requests before anything else.
    token_faults: list[Fault] = field(default_factory=list)
    #: Tags of each repository, served sorted and paged by ``n`` and ``last``.
    tags: dict[str, list[str]] = field(default_factory=dict)
    link_style: Literal["relative", "absolute"] = "relative"
    #: Stream GET bodies in chunks of this size, counting what the client took.
    chunk_size: int | None = None
    bytes_streamed: int = 0

    requests: list[httpx.Request] = field(default_factory=list)
    answers: list[tuple[httpx.Request, int]] = field(default_factory=list)
    issued: dict[str, str] = field(default_factory=dict)
    tokens_issued: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def add(self, reference: str, manifest: Manifest | None = None) -> Manifest:
        """Serve a manifest at ``repository:tag``; by default its body is the name.

        So the default digest, ``digest_of(reference)``, is also the body's hash.
        """
        manifest = manifest or Manifest.of(reference.encode())
        self.manifests[reference] = manifest
        return manifest

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def revoke_tokens(self) -> None:
        self.issued.clear()

    @property
    def heads(self) -> list[httpx.Request]:
        return [request for request in self.requests if request.method == "HEAD"]

    @property
    def gets(self) -> list[httpx.Request]:
        """Manifest GETs, on any host."""
        return [
            request
            for request in self.requests
            if request.method == "GET" and "/manifests/" in request.url.path
        ]

    @property
    def token_requests(self) -> list[httpx.Request]:
        return [request for request in self.requests if "/v2/" not in request.url.path]

    @property
    def unauthorized(self) -> int:
        return sum(
            1
            for request, status in self.answers
            if "/manifests/" in request.url.path and status == 401
        )

    def on_host(self, host: str) -> list[httpx.Request]:
        return [request for request in self.requests if request.url.host == host]

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            # Yield, so concurrent requests really overlap.
            await asyncio.sleep(self.delay)
            response = self._route(request)
        finally:
            self.in_flight -= 1

        self.answers.append((request, response.status_code))
        return response

    def _route(self, request: httpx.Request) -> httpx.Response:
        target = self.redirects.get(str(request.url.copy_with(query=None)))
        if target is not None:
            # A registry checks authorization before it sends anyone elsewhere.
            repository = _repository_of(request.url.path)
            open_host = request.url.host in self.open_hosts
            if (
                repository
                and not open_host
                and not self._authorised(request, repository)
            ):
                return httpx.Response(401, headers=self._challenge(repository))

            return httpx.Response(self.redirect_status, headers={"Location": target})

        if "/v2/" not in request.url.path:
            return _scripted(self.token_faults) or self._token(request)

        scripted = _scripted(self.faults)
        if scripted is not None:
            return scripted

        if request.url.path.endswith("/tags/list"):
            return self._tags(request)

        return self._manifest(request)

    def _manifest(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.partition("/v2/")[2]
        repository, _, tag = name.partition("/manifests/")
        if self.down is not None:
            return httpx.Response(self.down)

        open_host = request.url.host in self.open_hosts
        if not open_host and not self._authorised(request, repository):
            return httpx.Response(401, headers=self._challenge(repository))

        headers = dict(self.headers)
        if self.status is not None:
            return httpx.Response(self.status, headers=headers)

        manifest = self.manifests.get(f"{repository}:{tag}") or self.manifests.get(
            f"{repository}@{tag}"
        )
        if manifest is None:
            body = b"" if request.method == "HEAD" else error_body("MANIFEST_UNKNOWN")
            return httpx.Response(404, headers=headers, content=body)

        if request.method == "HEAD":
            return self._head_answer(manifest, headers)

        body = manifest.body if manifest.body is not None else b""
        headers.setdefault("Docker-Content-Digest", manifest.digest)
        headers.setdefault("Content-Type", manifest.media_type)
        headers.setdefault("Content-Length", str(len(body)))
        headers.update(self.get_headers)
        for name in self.omit:
            headers.pop(name, None)

        if self.chunk_size is None:
            return httpx.Response(200, headers=headers, content=body)

        return httpx.Response(200, headers=headers, content=self._stream(body))

    async def _stream(self, body: bytes) -> AsyncIterator[bytes]:
        assert self.chunk_size is not None
        for start in range(0, len(body), self.chunk_size):
            chunk = body[start : start + self.chunk_size]
            self.bytes_streamed += len(chunk)
            yield chunk

    def _head_answer(
        self, manifest: Manifest, headers: dict[str, str]
    ) -> httpx.Response:
        if self.head_status is not None:
            return httpx.Response(self.head_status, headers=headers)

        headers.setdefault("Docker-Content-Digest", manifest.digest)
        headers.setdefault("Content-Type", manifest.media_type)
        headers.setdefault("Content-Length", str(manifest.size))
        for name in self.omit | self.head_omit:
            headers.pop(name, None)

        return httpx.Response(200, headers=headers)

    def _tags(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.partition("/v2/")[2]
        repository = name.removesuffix("/tags/list")
        if not self._authorised(request, repository):
            return httpx.Response(401, headers=self._challenge(repository))

        tags = self.tags.get(repository)
        if tags is None:
            return httpx.Response(404, content=error_body("NAME_UNKNOWN"))

        ordered = sorted(tags)
        size = int(request.url.params.get("n", len(ordered) or 1))
        last = request.url.params.get("last")
        start = ordered.index(last) + 1 if last in ordered else 0
        page = ordered[start : start + size]
        headers = {}
        if start + size < len(ordered):
            link = f"/v2/{repository}/tags/list?n={size}&last={page[-1]}"
            if self.link_style == "absolute":
                link = f"{request.url.scheme}://{request.url.netloc.decode()}{link}"
            headers["Link"] = f'<{link}>; rel="next"'

        body = json.dumps({"name": repository, "tags": page}).encode()
        return httpx.Response(200, headers=headers, content=body)

    def _authorised(self, request: httpx.Request, repository: str) -> bool:
        sent = request.headers.get("authorization")
        if self.auth == "none":
            return True

        if self.auth == "basic":
            return self.credentials is not None and sent == basic(*self.credentials)

        if sent is None or not sent.startswith("Bearer ") or self.refuse_tokens:
            return False

        scope = self.issued.get(sent.removeprefix("Bearer "), "")
        return f"repository:{repository}:" in scope

    def _challenge(self, repository: str) -> dict[str, str]:
        if self.challenge_header is not None:
            return {"WWW-Authenticate": self.challenge_header}

        if self.auth == "basic":
            return {"WWW-Authenticate": 'Basic realm="fake"'}

        params = [f'realm="{self.realm}"']
        if self.service is not None:
            params.append(f'service="{self.service}"')

        if self.scope_template is not None:
            scope = self.scope_template.format(repository=repository)
            params.append(f'scope="{scope}"')

        return {"WWW-Authenticate": "Bearer " + ",".join(params)}

    def _token(self, request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization")
        if self.credentials is not None and sent != basic(*self.credentials):
            return httpx.Response(401, json={"details": "bad credentials"})

        if self.token_status != 200 or self.token_body is not None:
            return httpx.Response(self.token_status, content=self.token_body or b"{}")

        self.tokens_issued += 1
        token = f"{self.token_prefix}-{self.tokens_issued}"
        self.issued[token] = request.url.params.get("scope", "")
        body: dict[str, object] = {}
        if self.token_field in ("token", "both"):
            body["token"] = token

        if self.token_field in ("access_token", "both"):
            body["access_token"] = (
                token if self.token_field == "access_token" else "other"
            )
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in

        return httpx.Response(200, content=json.dumps(body).encode())


def _repository_of(path: str) -> str | None:
    """The repository a /v2/ path names; None for other paths."""
    name = path.partition("/v2/")[2]
    for marker in ("/manifests/", "/tags/list"):
        if marker in name:
            return name.partition(marker)[0]

    return None


def _scripted(faults: list[Fault]) -> httpx.Response | None:
    """The next scripted answer, raising it if it is a fault; None when none is left."""
    if not faults:
        return None

    fault = faults.pop(0)
    if isinstance(fault, Exception):
        raise fault

    status, headers = fault if isinstance(fault, tuple) else (fault, {})
    return httpx.Response(status, headers=headers)


@dataclass
class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingObserver:
    """A ``RequestObserver`` that keeps what it was told."""

    requests: list[tuple[str, str, int | None]] = field(default_factory=list)
    tokens: list[tuple[str, bool]] = field(default_factory=list)
    rate_limits: list[tuple[str, RateLimit]] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    retries: list[tuple[str, str]] = field(default_factory=list)

    def request_done(
        self, registry: str, method: str, status: int | None, seconds: float
    ) -> None:
        assert seconds >= 0
        self.requests.append((registry, method, status))

    def token_fetched(self, registry: str, ok: bool) -> None:
        self.tokens.append((registry, ok))

    def rate_limit_seen(self, registry: str, rate_limit: RateLimit) -> None:
        self.rate_limits.append((registry, rate_limit))

    def manifest_fetched(self, registry: str) -> None:
        self.fetched.append(registry)

    def pull_deferred(self, registry: str) -> None:
        self.deferred.append(registry)

    def head_fallback(self, registry: str, reason: str) -> None:
        self.fallbacks.append((registry, reason))

    def retry_scheduled(self, registry: str, reason: str) -> None:
        self.retries.append((registry, reason))


@dataclass
class RecordingSleep:
    """Stands in for ``asyncio.sleep`` before retries: keeps the delays, waits not."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def client_for(
    fake: FakeRegistry,
    *,
    observer: RecordingObserver | None = None,
    username: str | None = None,
    password: str | None = None,
    sleep: RecordingSleep | None = None,
    docker_config: Path | None = None,
    **settings: Any,
) -> RegistryClient:
    """The real client, with every registry served by ``fake``; retries never wait.

    The fake's token realm is on its own host, ``auth.fake.test``, which the client
    may send credentials to unless the test passes ``realm_hosts`` itself.
    """
    settings.setdefault("realm_hosts", [urlsplit(REALM).hostname])
    registry_settings = RegistrySettings.model_validate(
        {
            **settings,
            "username": username,
            "password": SecretStr(password) if password is not None else None,
        }
    )
    return RegistryClient(
        lambda name: registry_settings,
        observer=observer,
        transport=fake.transport(),
        sleep=sleep if sleep is not None else RecordingSleep(),
        docker_config=docker_config,
    )
