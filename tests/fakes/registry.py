"""A small registry behind ``httpx.MockTransport``, with one switch per behaviour.

It stands in for what a local registry does not show: token auth with scopes,
Basic auth, missing headers, schema1, rate limits. It keeps every request it saw,
so tests assert on traffic, not on mocks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

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
    digest: str
    media_type: str = OCI_INDEX
    size: int = 1234


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

    requests: list[httpx.Request] = field(default_factory=list)
    answers: list[tuple[httpx.Request, int]] = field(default_factory=list)
    issued: dict[str, str] = field(default_factory=dict)
    tokens_issued: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def add(self, reference: str, manifest: Manifest | None = None) -> Manifest:
        """Serve a manifest at ``repository:tag``; its digest derives from the name."""
        manifest = manifest or Manifest(digest_of(reference))
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
    def token_requests(self) -> list[httpx.Request]:
        return [request for request in self.requests if request.method == "GET"]

    @property
    def unauthorized(self) -> int:
        return sum(
            1
            for request, status in self.answers
            if request.method == "HEAD" and status == 401
        )

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            # Yield, so concurrent requests really overlap.
            await asyncio.sleep(self.delay)
            if "/manifests/" in request.url.path:
                response = self._manifest(request)
            else:
                response = self._token(request)
        finally:
            self.in_flight -= 1

        self.answers.append((request, response.status_code))
        return response

    def _manifest(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.partition("/v2/")[2]
        repository, _, tag = name.partition("/manifests/")
        if self.down is not None:
            return httpx.Response(self.down)

        if not self._authorised(request, repository):
            return httpx.Response(401, headers=self._challenge(repository))

        headers = dict(self.headers)
        if self.status is not None:
            return httpx.Response(self.status, headers=headers)

        manifest = self.manifests.get(f"{repository}:{tag}") or self.manifests.get(
            f"{repository}@{tag}"
        )
        if manifest is None:
            return httpx.Response(404, headers=headers)

        headers.setdefault("Docker-Content-Digest", manifest.digest)
        headers.setdefault("Content-Type", manifest.media_type)
        headers.setdefault("Content-Length", str(manifest.size))
        for name in self.omit:
            headers.pop(name, None)

        return httpx.Response(200, headers=headers)

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

    def request_done(
        self, registry: str, method: str, status: int | None, seconds: float
    ) -> None:
        assert seconds >= 0
        self.requests.append((registry, method, status))

    def token_fetched(self, registry: str, ok: bool) -> None:
        self.tokens.append((registry, ok))

    def rate_limit_seen(self, registry: str, rate_limit: RateLimit) -> None:
        self.rate_limits.append((registry, rate_limit))


def client_for(
    fake: FakeRegistry,
    *,
    observer: RecordingObserver | None = None,
    username: str | None = None,
    password: str | None = None,
    **settings: Any,
) -> RegistryClient:
    """The real client, with every registry served by ``fake``."""
    registry_settings = RegistrySettings.model_validate(
        {
            **settings,
            "username": username,
            "password": SecretStr(password) if password is not None else None,
        }
    )
    return RegistryClient(
        lambda name: registry_settings, observer=observer, transport=fake.transport()
    )
