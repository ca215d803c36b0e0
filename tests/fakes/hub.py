"""A Docker Hub test double: bearer tokens and pull rate limits before a real registry.

`HubDouble` is a plain ASGI app served by uvicorn on 127.0.0.1 in a background thread.
It reverse-proxies reads to an upstream registry (normally the `docker-registry` of
`tests.real.registry`) and adds what no local registry shows, as ../shared/REGISTRY-FACTS.md
describes Docker Hub:

- every `/v2/` request needs `Authorization: Bearer <token>`; without one it answers
  401 with `WWW-Authenticate: Bearer realm="<url>/token",service="registry.docker.io"`
  plus `scope="repository:<name>:pull"` below `/v2/<name>/`;
- `GET /token?service=...&scope=...` issues a random token that opens only the
  repositories in its scope, for `token_ttl` seconds, behind optional basic
  credentials;
- manifest responses carry `ratelimit-limit`, `ratelimit-remaining` and
  `docker-ratelimit-source`; a manifest GET spends one pull, a HEAD spends none, and
  a GET with nothing left gets 429 TOOMANYREQUESTS with `Retry-After`.

Deliberate non-goals: it is read-only (other methods get 405; push to the upstream
registry directly) and it grants pull on any repository asked for, like public
repositories on Docker Hub. Repository names pass through unchanged. Imports nothing
from watcher.
"""

import asyncio
import json
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs

import httpx
import uvicorn

from tests.real.asgi import (
    Receive,
    Scope,
    Send,
    ThreadedServer,
    basic_credentials,
    drain,
)
from tests.real.ports import LOOPBACK

HUB_SERVICE = "registry.docker.io"
DEFAULT_TOKEN_TTL_SECONDS = 300
DEFAULT_RATELIMIT_LIMIT = 100
DEFAULT_RATELIMIT_WINDOW_SECONDS = 21600
DEFAULT_RETRY_AFTER_SECONDS = 60
UPSTREAM_TIMEOUT_SECONDS = 10.0

# Response headers of the upstream registry a client may rely on; the rest
# (Date, Server, ETag...) are the double's own business.
_FORWARDED_HEADERS = (
    "content-type",
    "docker-content-digest",
    "content-length",
    "location",
    "link",
    "docker-distribution-api-version",
)
_REPOSITORY_PATH = re.compile(
    r"^/v2/(?P<repository>.+)/(?P<kind>manifests|blobs|tags)/.+$"
)
_READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(slots=True)
class HubBehaviour:
    """Knobs of the double; tests may change them while it runs.

    `remaining` is the pull budget left in the window and goes down by one per
    manifest GET. `credentials` (user, password), when set, are required on
    `/token`. `latency` (seconds) delays every response.
    """

    limit: int = DEFAULT_RATELIMIT_LIMIT
    remaining: int = DEFAULT_RATELIMIT_LIMIT
    window: int = DEFAULT_RATELIMIT_WINDOW_SECONDS
    source: str = LOOPBACK
    token_ttl: int = DEFAULT_TOKEN_TTL_SECONDS
    latency: float = 0.0
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    send_ratelimit_headers: bool = True
    retry_after: int = DEFAULT_RETRY_AFTER_SECONDS


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """One request the double received; header names are lower-case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Grant:
    repositories: frozenset[str]
    expires_at: float


@dataclass(slots=True)
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    async def send(self, send: Send, *, method: str) -> None:
        headers = list(self.headers)
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers.append(("content-length", str(len(self.body))))

        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers
                ],
            }
        )
        body = b"" if method == "HEAD" else self.body
        await send({"type": "http.response.body", "body": body})


def _json_response(
    status: int, document: object, *headers: tuple[str, str]
) -> _Response:
    body = json.dumps(document).encode()
    return _Response(status, [("content-type", "application/json"), *headers], body)


def _registry_error(
    status: int, code: str, message: str, *headers: tuple[str, str]
) -> _Response:
    document = {"errors": [{"code": code, "message": message, "detail": None}]}
    return _json_response(status, document, *headers)


class HubDouble(ThreadedServer):
    """Docker-Hub-like proxy before `upstream`; see the module docstring.

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(self, upstream: str, behaviour: HubBehaviour | None = None) -> None:
        super().__init__(name="HubDouble", thread_name="hub-double")
        self.upstream = upstream.rstrip("/")
        self.behaviour = behaviour if behaviour is not None else HubBehaviour()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._tokens_by_scope: Counter[str] = Counter()
        self._requests: list[SeenRequest] = []
        self._grants: dict[str, _Grant] = {}
        self._issued: list[str] = []
        self._client: httpx.AsyncClient | None = None

    # Observations, safe to read from the test thread.

    @property
    def counts(self) -> Counter[str]:
        """Return a snapshot of requests by kind.

        Keys: `token` (requests to /token), `token_denied` (401s from /token),
        `unauthorized` (401 challenges on /v2/), `head_manifest` and
        `get_manifest` (authorized manifest requests, 429s included),
        `rate_limited` (429s sent), `other` (other authorized /v2/ requests).
        """
        with self._lock:
            return Counter(self._counts)

    @property
    def tokens_by_scope(self) -> Counter[str]:
        """Return a snapshot of tokens issued per requested scope ("" for none)."""
        with self._lock:
            return Counter(self._tokens_by_scope)

    @property
    def issued_tokens(self) -> list[str]:
        """Return every token issued so far, expired or not, oldest first."""
        with self._lock:
            return list(self._issued)

    @property
    def requests(self) -> list[SeenRequest]:
        """Return every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def reset_counts(self) -> None:
        """Forget counts, tokens-by-scope and seen requests (tokens stay valid)."""
        with self._lock:
            self._counts.clear()
            self._tokens_by_scope.clear()
            self._requests.clear()

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid, as if its lifetime had passed."""
        with self._lock:
            self._grants.clear()

    @property
    def realm(self) -> str:
        """Return the token endpoint named in the challenge."""
        return f"{self.url}/token"

    # Lifecycle: start(), stop() and the context manager come from ThreadedServer.

    async def _serve(self, server: uvicorn.Server) -> None:
        async with httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT_SECONDS) as client:
            self._client = client
            await server.serve()

    # ASGI application.

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return

        await drain(receive)
        seen = _seen_request(scope)
        with self._lock:
            self._requests.append(seen)

        if self.behaviour.latency > 0:
            await asyncio.sleep(self.behaviour.latency)

        response = await self._dispatch(seen)
        await response.send(send, method=seen.method)

    async def _dispatch(self, seen: SeenRequest) -> _Response:
        if seen.path == "/token":
            return self._token(seen)

        if seen.path == "/v2/":
            return self._authorize(seen, None) or await self._forward(seen)

        match = _REPOSITORY_PATH.match(seen.path)
        if match is None:
            return _registry_error(
                404, "NOT_FOUND", f"HubDouble has no route for {seen.path}"
            )

        if seen.method not in _READ_METHODS:
            return _registry_error(
                405,
                "UNSUPPORTED",
                "HubDouble is read-only; push to the upstream registry",
            )

        repository = match["repository"]
        denied = self._authorize(seen, repository)
        if denied is not None:
            return denied

        if match["kind"] != "manifests":
            self._count("other")
            return await self._forward(seen)

        return await self._manifest(seen)

    # Token endpoint.

    def _token(self, seen: SeenRequest) -> _Response:
        behaviour = self.behaviour
        self._count("token")
        if behaviour.credentials is not None and (
            basic_credentials(seen.headers.get("authorization", ""))
            != behaviour.credentials
        ):
            self._count("token_denied")
            return _json_response(
                401,
                {"details": "incorrect username or password"},
                ("www-authenticate", 'Basic realm="HubDouble"'),
            )

        query = parse_qs(seen.query)
        service = query.get("service", [""])[0]
        if service != HUB_SERVICE:
            return _json_response(
                400, {"details": f"service must be {HUB_SERVICE!r}, got {service!r}"}
            )

        scopes = query.get("scope", [])
        token = secrets.token_urlsafe(24)
        grant = _Grant(
            repositories=frozenset(_pull_repositories(scopes)),
            expires_at=time.monotonic() + behaviour.token_ttl,
        )
        with self._lock:
            self._grants[token] = grant
            self._issued.append(token)
            self._tokens_by_scope.update(scopes or [""])

        issued_at = (
            datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        )
        return _json_response(
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": behaviour.token_ttl,
                "issued_at": issued_at,
            },
        )

    def _authorize(self, seen: SeenRequest, repository: str | None) -> _Response | None:
        token = _bearer_token(seen.headers.get("authorization", ""))
        with self._lock:
            grant = self._grants.get(token) if token else None

        error = None
        if token is not None and (
            grant is None or grant.expires_at <= time.monotonic()
        ):
            error = "invalid_token"
        elif (
            grant is not None
            and repository is not None
            and repository not in grant.repositories
        ):
            error = "insufficient_scope"
        elif grant is not None:
            return None

        self._count("unauthorized")
        challenge = f'Bearer realm="{self.realm}",service="{HUB_SERVICE}"'
        if repository is not None:
            challenge += f',scope="repository:{repository}:pull"'

        if error is not None:
            challenge += f',error="{error}"'

        return _registry_error(
            401,
            "UNAUTHORIZED",
            "authentication required",
            ("www-authenticate", challenge),
        )

    # Manifests and proxying.

    async def _manifest(self, seen: SeenRequest) -> _Response:
        is_get = seen.method == "GET"
        with self._lock:
            self._counts["get_manifest" if is_get else "head_manifest"] += 1
            spent = is_get and self.behaviour.remaining <= 0
            if is_get and not spent:
                self.behaviour.remaining -= 1

            if spent:
                self._counts["rate_limited"] += 1

            ratelimit = self._ratelimit_headers()

        if spent:
            retry_after = ("retry-after", str(self.behaviour.retry_after))
            return _registry_error(
                429,
                "TOOMANYREQUESTS",
                "You have reached your pull rate limit.",
                retry_after,
                *ratelimit,
            )

        response = await self._forward(seen)
        response.headers.extend(ratelimit)
        return response

    def _ratelimit_headers(self) -> list[tuple[str, str]]:
        behaviour = self.behaviour
        if not behaviour.send_ratelimit_headers:
            return []

        window = f";w={behaviour.window}"
        return [
            ("ratelimit-limit", f"{behaviour.limit}{window}"),
            ("ratelimit-remaining", f"{max(behaviour.remaining, 0)}{window}"),
            ("docker-ratelimit-source", behaviour.source),
        ]

    async def _forward(self, seen: SeenRequest) -> _Response:
        assert self._client is not None
        url = f"{self.upstream}{seen.path}"
        if seen.query:
            url += f"?{seen.query}"

        # identity: the body must reach the client byte for byte, since the
        # digest is the sha256 of exactly these bytes.
        headers = {"accept-encoding": "identity"}
        if "accept" in seen.headers:
            headers["accept"] = seen.headers["accept"]

        try:
            upstream = await self._client.request(seen.method, url, headers=headers)
        except httpx.TransportError as exc:
            return _registry_error(
                502, "UNAVAILABLE", f"upstream {self.upstream}: {exc!r}"
            )

        forwarded = [
            (k, v) for k, v in upstream.headers.items() if k in _FORWARDED_HEADERS
        ]
        return _Response(upstream.status_code, forwarded, upstream.content)

    def _count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1


def _seen_request(scope: Scope) -> SeenRequest:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    return SeenRequest(
        method=scope["method"],
        path=scope["path"],
        query=scope["query_string"].decode("latin-1"),
        headers=headers,
    )


def _bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None

    return token.strip()


def _pull_repositories(scopes: list[str]) -> set[str]:
    """Return the repositories the scopes ask pull access for.

    A scope is `repository:<name>:<actions>`; names may contain colons only in
    a registry host with a port, which Hub names never have.
    """
    repositories: set[str] = set()
    for scope in scopes:
        for item in scope.split(" "):
            resource, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            if resource == "repository" and "pull" in actions.split(","):
                repositories.add(name)

    return repositories
