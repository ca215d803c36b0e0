"""The registry client: resolve a tag's digest, fetch manifests, list tags.

The only module that imports httpx; what it raises is from ``watcher.errors``, never
from httpx. Tokens, passwords and Authorization headers never reach a log event or
an error message, and every URL shown passes through ``redact_url``.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.cookiejar
import ipaddress
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeAlias
from urllib.parse import urlsplit

import httpx

from watcher import __version__
from watcher.config import RegistrySettings
from watcher.errors import (
    AuthError,
    NotFound,
    ProtocolViolation,
    PullsReserved,
    RateLimited,
    RegistryError,
    RegistryUnavailable,
    UnsupportedManifest,
)
from watcher.logs import get_logger, redact_text, redact_url
from watcher.reference import Digest, Reference
from watcher.registry.auth import (
    AuthState,
    Challenge,
    Credential,
    Token,
    parse_challenges,
    parse_token_response,
    preferred_challenge,
    pull_scope,
    scope_names,
)
from watcher.registry.budget import Budget
from watcher.registry.credentials import FoundCredential, find_credential
from watcher.registry.media_types import (
    MANIFEST_ACCEPT,
    MANIFEST_TYPES,
    SCHEMA1_TYPES,
)
from watcher.registry.pacing import Pacer
from watcher.registry.ratelimit import RateLimit, parse_rate_limit
from watcher.registry.retry import (
    Retry,
    parse_retry_after,
    retry_for_fault,
    retry_for_status,
)
from watcher.registry.transport import Http11Transport, proxy_mounts
from watcher.registry.wire import (
    parse_error_codes,
    parse_next_link,
    parse_tags,
    sniff_media_type,
)

USER_AGENT = f"watcher/{__version__}"

#: The reference registry refuses manifests past 4 MiB, and so does a client that
#: must not let a bad registry exhaust its memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: A token answer is a small JSON object; anything near this is not one.
MAX_TOKEN_BYTES = 1024 * 1024
#: One page of tags: a registry that ignores ``n=`` may send thousands at once.
MAX_TAGS_PAGE_BYTES = 16 * 1024 * 1024
#: Read of an error answer, for its error codes; the rest is dropped unread.
MAX_ERROR_BODY_BYTES = 64 * 1024
#: Hops followed per request, as browsers and the Docker CLI bound them.
MAX_REDIRECTS = 5
#: Pages of tags followed per listing: 1000 pages of the default 100 is plenty,
#: and a registry whose ``Link`` never ends must not keep us forever.
MAX_TAG_PAGES = 1000
REDIRECT_STATUSES = frozenset({301, 302, 307, 308})

#: What replaces the network in tests, named here so callers need not import httpx.
Transport: TypeAlias = httpx.AsyncBaseTransport
#: How the client waits before a retry; tests pass one that only records.
Sleep: TypeAlias = Callable[[float], Awaitable[None]]

_log = get_logger("watcher.registry")

# What resolvers say when a name does not resolve (glibc, macOS, musl).
_DNS_FAILURES = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no address associated",
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What an answer says about a manifest; ``size`` is None without Content-Length."""

    media_type: str
    digest: Digest
    size: int | None


@dataclass(frozen=True, slots=True)
class HeadResult:
    """A manifest's descriptor, the pull budget announced, and who answered.

    ``method`` is ``HEAD``, or ``GET`` when the registry's HEAD is unusable and the
    digest was taken from the body (which may have cost a pull).
    """

    descriptor: Descriptor
    rate_limit: RateLimit | None
    method: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """A fetched manifest: its descriptor and its exact bytes (at most 4 MiB)."""

    descriptor: Descriptor
    body: bytes = field(repr=False)


class RequestObserver(Protocol):
    """Told about every registry request; ``registry`` is the name users write."""

    def request_done(
        self, registry: str, method: str, status: int | None, seconds: float
    ) -> None:
        """A request ended; ``status`` is None when no answer came."""

    def token_fetched(self, registry: str, ok: bool) -> None:
        """A token request ended, with a usable token or not."""

    def rate_limit_seen(self, registry: str, rate_limit: RateLimit) -> None:
        """A manifest answer carried rate-limit headers."""

    def pull_deferred(self, registry: str) -> None:
        """A manifest GET was held back to keep the pull reserve."""

    def manifest_fetched(self, registry: str) -> None:
        """A manifest GET was sent; registries that meter pulls may count it."""

    def head_fallback(self, registry: str, reason: str) -> None:
        """A digest came from a GET: ``reason`` is ``no_digest``, ``405`` or ``404``."""

    def retry_scheduled(self, registry: str, reason: str) -> None:
        """A request is retried after ``reason`` (``server_error``, ``timeout`` ...)."""


@dataclass
class _Registry:
    """One registry's pool, limits, credential, authentication state and quirks."""

    name: str
    base_url: str
    settings: RegistrySettings
    http: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    pacer: Pacer
    #: The credential from watcher's settings; Docker's config is read on demand.
    configured: Credential | None
    auth: AuthState = field(default_factory=AuthState)
    found: FoundCredential | None = None
    credential_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Why HEAD is skipped on this registry (a ``head_fallback`` reason), if it is.
    head_unusable: str | None = None
    #: Set once a GET confirmed a HEAD's 404: this registry's 404s are then
    #: believed, so a missing tag costs no GET (a pull, on Docker Hub) per check.
    head_404_trusted: bool = False
    warned: set[str] = field(default_factory=set)

    @property
    def credential(self) -> Credential | None:
        return self.found.credential if self.found is not None else None

    @property
    def config_key(self) -> str:
        return f'[registries."{self.name}"]'

    def warn_once(self, event: str, **fields: object) -> None:
        """Log WARNING ``event`` the first time this registry gives cause."""
        if event not in self.warned:
            self.warned.add(event)
            _log.warning(event, registry=self.name, **fields)


_Kind: TypeAlias = Literal["manifest", "tags", "token"]
_JSON = "application/json"
_ACCEPT: dict[_Kind, str] = {"manifest": MANIFEST_ACCEPT, "tags": _JSON, "token": _JSON}
_LIMITS: dict[_Kind, int] = {
    "manifest": MAX_MANIFEST_BYTES,
    "tags": MAX_TAGS_PAGE_BYTES,
    "token": MAX_TOKEN_BYTES,
}


@dataclass(frozen=True, slots=True)
class _Call:
    """One request to make, and what its errors and logs call it."""

    reference: Reference
    registry: _Registry
    method: str
    url: str
    #: Opens every error message: ``HEAD manifest ghcr.io/acme/api:stable``.
    what: str
    kind: _Kind

    @classmethod
    def manifest(cls, reference: Reference, registry: _Registry, method: str) -> _Call:
        path = f"/v2/{reference.repository}/manifests/{reference.tag_or_digest}"
        what = f"{method} manifest {reference}"
        return cls(
            reference, registry, method, registry.base_url + path, what, "manifest"
        )

    def for_token(self, url: str) -> _Call:
        """The token request made for this call.

        Its errors name the repository, not the tag: concurrent checks of one
        repository share a token fetch, and its failure.
        """
        what = f"fetch token for {self.reference.name}"
        return _Call(self.reference, self.registry, "GET", url, what, "token")

    @property
    def config_key(self) -> str:
        return self.registry.config_key

    @property
    def accept(self) -> str:
        return _ACCEPT[self.kind]

    @property
    def limit(self) -> int:
        return _LIMITS[self.kind]


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing: registries need no cookies (Docker keeps none).

    httpx would otherwise parse every answer's headers for cookies to keep.
    """

    def extract_cookies(self, response: Any, request: Any) -> None:
        """Keep nothing from the answer."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """A response read whole (its body capped); ``url`` is where it came from."""

    status: int
    headers: httpx.Headers
    body: bytes = field(repr=False)
    url: str
    #: The pull budget its headers announce, read once per answer.
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class _Authorization:
    """The ``Authorization`` header sent (None: none), and the token behind it."""

    header: str | None = field(default=None, repr=False)
    scheme: str | None = None
    token: Token | None = None
    cached: bool = False


class RegistryClient:
    """Resolves references to descriptors, one connection pool per registry.

    HEAD is used while it works; a registry whose HEAD gives no digest or is
    refused is answered by GET from then on. Faults that may pass are retried with
    backoff; redirects are followed, without Authorization to another host.

    Args:
        settings: the settings of a registry, by the name users write.
        observer: told about every request, token fetch, retry and rate limit seen.
        transport: replaces the network for every registry (tests).
        docker_config: Docker's ``config.json``, for registries whose settings hold
            no credential.
        sleep: how to wait before a retry (tests record instead of waiting).
    """

    def __init__(
        self,
        settings: Callable[[str], RegistrySettings],
        *,
        observer: RequestObserver | None = None,
        transport: Transport | None = None,
        docker_config: Path | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._observer = observer
        self._transport = transport
        self._docker_config = docker_config
        self._sleep = sleep
        self._registries: dict[str, _Registry] = {}
        self._closed = False
        self._budget = Budget()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection pool; the client cannot be used afterwards."""
        self._closed = True
        registries, self._registries = self._registries, {}
        for registry in registries.values():
            await registry.http.aclose()

    async def head_manifest(self, reference: Reference) -> HeadResult:
        """The descriptor of the manifest ``reference`` names, by HEAD if possible.

        A HEAD without Docker-Content-Digest, or answered 405, or 404 where a GET
        finds the manifest, is answered by GET and the sha256 of its body; the
        registry's HEAD is then skipped for good (WARNING
        ``manifest.head_fallback_get`` once): each check then costs a GET.

        Raises:
            AuthError: the registry refused us, or the token exchange failed.
            NotFound: no such repository, tag or digest.
            RateLimited: 429; ``retry_after`` holds the registry's advice.
            RegistryUnavailable: DNS, connection, TLS, timeout or 5xx.
            ProtocolViolation: an answer the distribution spec does not allow.
            UnsupportedManifest: the registry served a schema1 manifest.
            RegistryError: the registry's host or endpoint makes no usable URL, or
                its ca_file is no CA bundle.
        """
        registry = self._registry(reference, "HEAD", f"HEAD manifest {reference}")
        if registry.head_unusable is not None:
            return await self._head_by_get(reference, registry, registry.head_unusable)

        call = _Call.manifest(reference, registry, "HEAD")
        answer, authorization = await self._authorized(call)
        reason = _fallback_reason(answer)
        if reason is None:
            _check_status(call, answer, authorization)
            descriptor = _head_descriptor(call, answer)
            return HeadResult(descriptor, answer.rate_limit, "HEAD")

        # A 404 may be the tag's truth; only a GET that finds it condemns HEAD.
        if reason == "404" and registry.head_404_trusted:
            _check_status(call, answer, authorization)
        if reason != "404":
            self._skip_head(registry, reason)

        try:
            return await self._head_by_get(reference, registry, reason)
        except NotFound:
            if reason == "404":
                registry.head_404_trusted = True
            raise

    async def get_manifest(self, reference: Reference) -> Manifest:
        """The manifest ``reference`` names, with its exact bytes.

        The digest is the sha256 of the body, whatever Docker-Content-Digest says;
        fetched by digest, the body must hash to that digest. Each call is a GET,
        which registries that meter pulls count.

        Raises:
            ProtocolViolation: the body is past 4 MiB, or hashes to another digest
                than the one asked for; and as ``head_manifest`` does.
        """
        registry = self._registry(reference, "GET", f"GET manifest {reference}")
        self._spend_pull(registry, f"GET manifest {reference}")
        manifest, _ = await self._fetch(reference, registry)
        return manifest

    def _spend_pull(self, registry: _Registry, what: str) -> None:
        """Refuse a manifest GET while the registry's budget is at the reserve."""
        reserve = registry.settings.reserve
        if self._budget.allows_pull(registry.name, reserve):
            return
        if self._observer is not None:
            self._observer.pull_deferred(registry.name)
        msg = (
            f"{what}: not sent, the pull budget is at the reserve of {reserve} "
            f"kept for your own pulls; it is tried again once the window allows "
            f'(lower reserve in [registries."{registry.name}"] to spend more)'
        )
        raise PullsReserved(msg, method="GET", url=registry.base_url)

    async def list_tags(
        self, reference: Reference, *, page_size: int | None = None
    ) -> list[str]:
        """Every tag of ``reference``'s repository, in the registry's order.

        Follows ``Link: <...>; rel="next"`` pages (relative or absolute), asking for
        ``page_size`` tags a page (``n=``) when given, for at most 1000 pages.

        Raises:
            NotFound: no such repository.
            ProtocolViolation: a page that is not a tag list, a ``Link`` that loops
                or leaves http(s), or more than 1000 pages.
            ValueError: ``page_size`` is below 1.
        """
        if page_size is not None and page_size < 1:
            msg = f"page_size must be at least 1, got {page_size}"
            raise ValueError(msg)

        what = f"list tags {reference.name}"
        registry = self._registry(reference, "GET", what)
        url = f"{registry.base_url}/v2/{reference.repository}/tags/list"
        if page_size is not None:
            url += f"?n={page_size}"

        tags: list[str] = []
        seen: set[str] = set()
        for _page in range(MAX_TAG_PAGES):
            seen.add(url)
            call = _Call(reference, registry, "GET", url, what, "tags")
            answer, authorization = await self._authorized(call)
            _check_status(call, answer, authorization)
            tags += _tags_of(call, answer)
            next_url = _next_page(call, answer)
            if next_url is None:
                return tags

            if next_url in seen:
                msg = f"{what}: the Link header leads back to a page already read"
                raise ProtocolViolation(msg, method="GET", url=_redact(next_url))

            url = next_url

        msg = (
            f"{what}: more than {MAX_TAG_PAGES} pages; watcher stops there. "
            "Ask for larger pages, or report a Link header that never ends"
        )
        raise ProtocolViolation(msg, method="GET", url=_redact(url))

    def _registry(self, reference: Reference, method: str, what: str) -> _Registry:
        """The registry's pool and state, opened on first use for ``what``."""
        if self._closed:
            msg = "this RegistryClient is closed; create a new one"
            raise RuntimeError(msg)

        registry = self._registries.get(reference.registry)
        if registry is None:
            registry = self._open(reference, method, what)
            self._registries[reference.registry] = registry

        return registry

    def _open(self, reference: Reference, method: str, what: str) -> _Registry:
        settings = self._settings(reference.registry)
        base = base_url(reference.api_host, settings.endpoint)
        _check_base_url(reference, base, method, what)
        verify = _tls_verify(reference, settings, method, what)
        registry = _Registry(
            name=reference.registry,
            base_url=base,
            settings=settings,
            http=self._pool(settings, verify),
            semaphore=asyncio.Semaphore(settings.concurrency),
            pacer=Pacer(settings.rate, self._sleep),
            configured=_configured_credential(settings),
        )
        if settings.insecure:
            registry.warn_once(
                "tls.verification_disabled",
                detail=(
                    "insecure = true: the registry's certificate is not checked, so "
                    "anyone on the network path can answer for it; prefer ca_file"
                ),
            )

        return registry

    def _pool(
        self, settings: RegistrySettings, verify: ssl.SSLContext | bool
    ) -> httpx.AsyncClient:
        # At most `concurrency` requests are in flight (the semaphore in _send), so
        # more connections than that would sit idle. httpx's own pool scans every
        # connection on each request (bench/RESULTS.md), so registry requests go
        # through Http11Transport; these limits hold for proxied requests, which
        # take httpx's transport.
        limits = httpx.Limits(
            max_connections=settings.concurrency,
            max_keepalive_connections=settings.concurrency,
        )
        transport, mounts = self._transport, None
        if transport is None:
            # Given a transport, httpx leaves the proxy variables to us.
            transport = Http11Transport(verify, max_idle=settings.concurrency)
            mounts = proxy_mounts(verify, limits)

        return httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(settings.timeout),
            limits=limits,
            follow_redirects=False,
            verify=verify,
            transport=transport,
            mounts=mounts,
            cookies=_NoCookies(),
        )

    async def _head_by_get(
        self, reference: Reference, registry: _Registry, reason: str
    ) -> HeadResult:
        self._spend_pull(registry, f"GET manifest {reference} (HEAD gave no digest)")
        manifest, rate_limit = await self._fetch(reference, registry)
        self._skip_head(registry, reason)
        if self._observer is not None:
            self._observer.head_fallback(registry.name, reason)

        return HeadResult(manifest.descriptor, rate_limit, "GET")

    def _skip_head(self, registry: _Registry, reason: str) -> None:
        """Remember that this registry's HEAD is unusable, and say what that costs."""
        if registry.head_unusable is None:
            registry.head_unusable = reason

        registry.warn_once(
            "manifest.head_fallback_get",
            reason=reason,
            detail=(
                "HEAD gives no usable digest, so each check GETs the manifest and "
                "hashes it; registries that meter pulls count every such GET"
            ),
        )

    async def _fetch(
        self, reference: Reference, registry: _Registry
    ) -> tuple[Manifest, RateLimit | None]:
        call = _Call.manifest(reference, registry, "GET")
        answer, authorization = await self._authorized(call)
        _check_status(call, answer, authorization)
        manifest = _manifest_of(call, answer)
        _check_digest_header(call, answer, manifest.descriptor.digest)
        return manifest, answer.rate_limit

    async def _authorized(self, call: _Call) -> tuple[_Answer, _Authorization]:
        """The answer, authenticated as the registry asks, with at most one retry.

        A 401 is answered once: for the probe that revealed the challenge, for a
        cached token the registry no longer takes, or for a registry that started
        asking. A 401 to a token fetched for this very request is final.
        """
        challenged = await self._probe(call)
        if challenged is not None and challenged.status != 401:
            return challenged, _Authorization()

        if challenged is None:
            authorization = await self._authorize(call, call.registry.auth.challenge)
            answer = await self._request(call, authorization)
            retry = authorization.header is None or authorization.cached
            if answer.status != 401 or not retry:
                return answer, authorization

            if authorization.token is not None:
                call.registry.auth.drop(authorization.token)

            challenged = answer

        challenge = _challenge_of(challenged)
        call.registry.auth.learn(challenge)
        authorization = await self._authorize(call, challenge, challenged=True)
        if authorization.header is None:
            return challenged, authorization

        return await self._request(call, authorization), authorization

    async def _probe(self, call: _Call) -> _Answer | None:
        """Send the registry's first request alone, unauthenticated, to learn its needs.

        Returns that answer, or None when the registry's needs were already known.
        """
        if call.registry.auth.known:
            return None

        async with call.registry.auth.probe_lock:
            return await self._probe_alone(call)

    async def _probe_alone(self, call: _Call) -> _Answer | None:
        auth = call.registry.auth
        # Another request may have probed while this one waited for the lock.
        if auth.known:
            return None

        answer = await self._request(call, _Authorization())
        status = answer.status
        # A 429 or 5xx says nothing about authentication: the next request probes.
        if status != 401 and status != 429 and status < 500:
            auth.learn(None)

        return answer

    async def _credential(self, registry: _Registry) -> Credential | None:
        """The registry's credential, looked up once, when it first asks for one."""
        if registry.found is None:
            async with registry.credential_lock:
                if registry.found is None:
                    registry.found = await find_credential(
                        registry.name, registry.configured, self._docker_config
                    )

        return registry.credential

    async def _authorize(
        self, call: _Call, challenge: Challenge | None, *, challenged: bool = False
    ) -> _Authorization:
        """What ``challenge`` asks for; ``challenged``: it came for this very call."""
        if challenge is None:
            return _Authorization()

        if challenge.scheme == "basic":
            credential = await self._credential(call.registry)
            if credential is None and not challenged:
                # Another repository asked; this one may be public: let it say.
                return _Authorization()
            if credential is None:
                msg = (
                    f"{call.what}: registry requires credentials; "
                    f"set username and password_env in {call.config_key}"
                )
                raise AuthError(
                    msg, method=call.method, url=redact_url(call.url), status=401
                )
            return _Authorization(credential.basic_authorization(), "basic")

        if challenge.scheme == "bearer":
            return await self._bearer(call, challenge, challenged=challenged)

        if not challenged:
            return _Authorization()
        msg = (
            f"{call.what}: the registry asks for {challenge.scheme!r} authentication, "
            "which watcher does not support; only Bearer and Basic are"
        )
        raise AuthError(msg, method=call.method, url=redact_url(call.url), status=401)

    async def _bearer(
        self, call: _Call, challenge: Challenge, *, challenged: bool
    ) -> _Authorization:
        repository = call.reference.repository
        scope = pull_scope(repository)
        # A challenge that came for another request names another repository.
        if challenged and challenge.scope and scope_names(challenge.scope, repository):
            scope = challenge.scope

        async def fetch(wanted: str) -> Token:
            return await self._fetch_token(call, challenge, wanted)

        token, cached = await call.registry.auth.token(scope, fetch)
        return _Authorization(f"Bearer {token.value}", "bearer", token, cached)

    async def _fetch_token(
        self, call: _Call, challenge: Challenge, scope: str
    ) -> Token:
        ok = False
        try:
            token = await self._request_token(call, challenge, scope)
            ok = True
        finally:
            if self._observer is not None:
                self._observer.token_fetched(call.registry.name, ok)

        _log.debug(
            "token.fetched",
            registry=call.registry.name,
            scope=scope,
            expires_in=round(token.lifetime_seconds),
        )
        return token

    async def _request_token(
        self, call: _Call, challenge: Challenge, scope: str
    ) -> Token:
        realm = _realm_url(call, challenge)
        params = {"scope": scope}
        if challenge.service is not None:
            params = {"service": challenge.service, **params}

        token_call = call.for_token(str(realm.copy_merge_params(params)))
        headers = {"Accept": token_call.accept}
        credential = await self._credential(call.registry)
        if credential is not None:
            _check_realm_host(token_call, realm)
            headers["Authorization"] = credential.basic_authorization()

        answer = await self._exchange(token_call, headers)
        failure = None
        if answer.status != httpx.codes.OK:
            failure = f"answered {answer.status}"
        else:
            try:
                return parse_token_response(_json(answer.body), scope=scope)
            except ValueError as exc:
                failure = f"gave no usable token ({exc})"

        where = _redact(str(realm))
        msg = (
            f"{token_call.what}: {where} {failure}; "
            f"check the credentials for {call.registry.name} in {call.config_key}"
        )
        raise AuthError(msg, method="GET", url=where, status=answer.status)

    async def _request(self, call: _Call, authorization: _Authorization) -> _Answer:
        """``call`` sent with the Accept list and ``authorization``, retried as due."""
        headers = {"Accept": call.accept}
        # Authorization is for the registry itself: a Link to elsewhere goes bare.
        if authorization.header is not None and _same_origin(
            call.url, call.registry.base_url
        ):
            headers["Authorization"] = authorization.header

        answer = await self._exchange(call, headers)
        rate_limit = answer.rate_limit
        if call.kind == "manifest" and rate_limit is not None:
            self._budget.record(call.registry.name, rate_limit)
            if self._observer is not None:
                self._observer.rate_limit_seen(call.registry.name, rate_limit)

        return answer

    async def _exchange(self, call: _Call, headers: dict[str, str]) -> _Answer:
        """The answer to ``call``, after the retries its faults earn.

        At most ``retries`` (from the registry's settings) retries; a 4xx other
        than 429 is never retried, nor is a TLS or DNS failure.
        """
        for retry in range(1, call.registry.settings.retries + 1):
            outcome = await self._attempt(call, headers, retry)
            if isinstance(outcome, _Answer):
                return outcome

            await self._wait(call, outcome, retry)

        return await self._follow(call, headers)

    async def _attempt(
        self, call: _Call, headers: dict[str, str], retry: int
    ) -> _Answer | Retry:
        """The answer, or the retry it earns as retry number ``retry``."""
        try:
            answer = await self._follow(call, headers)
        except RegistryUnavailable as exc:
            planned = retry_for_fault(exc.reason, retry)
            if planned is None:
                raise
            return planned

        retry_after = parse_retry_after(answer.headers.get("retry-after"))
        planned = retry_for_status(answer.status, retry_after, retry)
        return answer if planned is None else planned

    async def _wait(self, call: _Call, planned: Retry, retry: int) -> None:
        registry = call.registry.name
        _log.warning(
            "retry.scheduled",
            registry=registry,
            reason=planned.reason,
            attempt=retry,
            delay_s=round(planned.delay_seconds, 3),
            method=call.method,
            url=_redact(call.url),
        )
        if self._observer is not None:
            self._observer.retry_scheduled(registry, planned.reason)

        await self._sleep(planned.delay_seconds)

    async def _follow(self, call: _Call, headers: dict[str, str]) -> _Answer:
        """The answer at the end of up to ``MAX_REDIRECTS`` redirects."""
        if call.kind == "manifest" and call.method == "GET" and self._observer:
            self._observer.manifest_fetched(call.registry.name)

        url = call.url
        for hop in range(MAX_REDIRECTS + 1):
            answer = await self._send(call, url, headers)
            if answer.status not in REDIRECT_STATUSES:
                return answer

            if hop == MAX_REDIRECTS:
                break

            url, headers = _redirect(call, answer, headers)

        msg = (
            f"{call.what}: more than {MAX_REDIRECTS} redirects; "
            "report the redirect loop to the registry operator"
        )
        raise ProtocolViolation(msg, method=call.method, url=_redact(call.url))

    async def _send(self, call: _Call, url: str, headers: dict[str, str]) -> _Answer:
        """One request through the registry's pool, reported and logged either way."""
        registry = call.registry
        await registry.pacer.wait()
        async with registry.semaphore:
            started = time.perf_counter()
            status = None
            try:
                request = registry.http.build_request(call.method, url, headers=headers)
                response = await registry.http.send(request, stream=True)
                status = response.status_code
                try:
                    body = await _read_body(call, response)
                finally:
                    await response.aclose()
            except httpx.RequestError as exc:
                raise _unavailable(call, url, exc) from exc
            finally:
                seconds = time.perf_counter() - started
                _log.debug(
                    "http.request",
                    registry=registry.name,
                    method=call.method,
                    url=_redact(url),
                    status=status,
                    duration_ms=round(seconds * 1000, 1),
                )
                if self._observer is not None:
                    self._observer.request_done(
                        registry.name, call.method, status, seconds
                    )

        received = response.headers
        return _Answer(
            response.status_code, received, body, url, parse_rate_limit(received)
        )


def base_url(api_host: str, endpoint: str | None) -> str:
    """Where a registry's ``/v2/`` lives: the endpoint, else HTTPS at ``api_host``.

    Loopback hosts get plain HTTP, as Docker treats them as insecure registries.
    """
    if endpoint is not None:
        return endpoint.rstrip("/")

    scheme = "http" if _is_loopback(api_host) else "https"
    return f"{scheme}://{api_host}"


def _check_base_url(reference: Reference, base: str, method: str, what: str) -> None:
    """Refuse a registry URL that httpx cannot use, before any request.

    httpx 0.29 takes a port past 65535, and the request then fails with an
    ExceptionGroup from inside httpcore instead of an httpx error.

    Raises:
        RegistryError: naming the URL and both places it comes from.
    """
    try:
        urlsplit(base).port  # noqa: B018 - reading it validates the port
        httpx.URL(base)
    except (ValueError, httpx.InvalidURL) as exc:
        msg = (
            f"{what}: registry URL {base!r} is invalid ({exc}); "
            "fix the registry host[:port] in the reference, or endpoint in "
            f'[registries."{reference.registry}"]'
        )
        raise RegistryError(msg, method=method, url=_redact(base)) from exc


def _tls_verify(
    reference: Reference, settings: RegistrySettings, method: str, what: str
) -> ssl.SSLContext | bool:
    """How to check the registry's certificate: by ``ca_file``, the system, or not.

    ``insecure`` wins over ``ca_file``: no verification at all.

    Raises:
        RegistryError: ``ca_file`` cannot be loaded as a PEM bundle.
    """
    if settings.insecure:
        return False

    if settings.ca_file is None:
        return True

    try:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror or str(exc)
        msg = (
            f"{what}: cannot load the CA bundle "
            f"{settings.ca_file} ({why}); set ca_file in "
            f'[registries."{reference.registry}"] to a PEM file of CA certificates'
        )
        raise RegistryError(msg, method=method, url="") from exc


def _configured_credential(settings: RegistrySettings) -> Credential | None:
    """The credential in watcher's own settings (password already resolved)."""
    if settings.username is None or settings.password is None:
        return None

    return Credential(settings.username, settings.password.get_secret_value())


def _is_loopback(api_host: str) -> bool:
    host = urlsplit(f"//{api_host}").hostname or ""
    if host == "localhost":
        return True

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(url: str) -> str:
    """``redact_url``, for URLs a registry sent, which may not parse."""
    try:
        return redact_url(url)
    except ValueError:
        return "(unparseable URL)"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    return parts.scheme, parts.hostname or "", port


def _same_origin(first: str, second: str) -> bool:
    # The common case, a path under the other URL, needs no parsing: the
    # authority ends at the first "/" after "//", inside the shared prefix.
    if first.startswith(second.rstrip("/") + "/"):
        return True
    return _origin(first) == _origin(second)


def _json(body: bytes) -> object:
    """``body`` as JSON; ValueError (never quoting it) when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        msg = "the answer is not JSON"
        raise ValueError(msg) from None


async def _read_body(call: _Call, response: httpx.Response) -> bytes:
    """The body, streamed: a success past the call's cap is refused unread.

    An error answer is read only so far as its error codes need.
    """
    if call.method == "HEAD":
        # Read to the end (a HEAD has no body) so that httpcore keeps the
        # connection for the next request instead of closing it unfinished.
        await response.aread()
        return b""
    if response.status_code in REDIRECT_STATUSES:
        return b""

    strict = response.is_success
    limit = call.limit if strict else MAX_ERROR_BODY_BYTES
    declared = response.headers.get("content-length", "")
    if strict and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(call, limit, response.status_code)

    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            if strict:
                raise _too_large(call, limit, response.status_code)
            return bytes(body[:limit])

    return bytes(body)


def _too_large(call: _Call, limit: int, status: int) -> ProtocolViolation:
    size = f"{limit // _MIB} MiB" if limit % _MIB == 0 else f"{limit} bytes"
    msg = (
        f"{call.what}: the answer is larger than {size}, the most watcher reads; "
        "report it to the registry operator"
    )
    return ProtocolViolation(
        msg, method=call.method, url=_redact(call.url), status=status
    )


def _redirect(
    call: _Call, answer: _Answer, headers: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """Where a redirect leads, and the headers to send there.

    Authorization never follows a redirect to another origin: object storage
    behind a registry gets the signed URL, not the registry's token.
    """
    location = answer.headers.get("location")
    if not location:
        msg = (
            f"{call.what}: {answer.status} redirect without a Location header; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(
            msg, method=call.method, url=_redact(answer.url), status=answer.status
        )

    target = _resolve(call, answer, location, "redirect")
    if not _same_origin(target, answer.url):
        headers = {
            name: value
            for name, value in headers.items()
            if name.lower() != "authorization"
        }

    return target, headers


def _next_page(call: _Call, answer: _Answer) -> str | None:
    """The URL of the next page of tags, from the ``Link`` header; None: last page."""
    link = parse_next_link(", ".join(answer.headers.get_list("link")))
    if link is None:
        return None

    return _resolve(call, answer, link, "Link")


def _resolve(call: _Call, answer: _Answer, target: str, source: str) -> str:
    """``target`` (a Location or Link) made absolute, if it is one we may follow."""
    try:
        base = httpx.URL(answer.url)
        url: httpx.URL | None = base.join(target)
    except httpx.InvalidURL:
        url = None

    shown = _redact(target) if "://" in target else target.partition("?")[0]
    if url is None or url.scheme not in ("http", "https") or not url.host:
        problem = f"{source} {shown!r} is not an http(s) URL"
    elif base.scheme == "https" and url.scheme == "http":
        problem = (
            f"{source} to {_redact(str(url))} would leave HTTPS for plain HTTP, "
            "which watcher does not follow"
        )
    else:
        return str(url)

    msg = f"{call.what}: {problem}; report it to the registry operator"
    raise ProtocolViolation(
        msg, method=call.method, url=_redact(answer.url), status=answer.status
    )


def _challenge_of(answer: _Answer) -> Challenge | None:
    header = ", ".join(answer.headers.get_list("www-authenticate"))
    return preferred_challenge(parse_challenges(header))


def _realm_url(call: _Call, challenge: Challenge) -> httpx.URL:
    """The token endpoint, if it is one we may ask for a token."""
    realm = challenge.realm or ""
    where = _redact(realm)
    try:
        redact_url(realm)  # urlsplit finds faults that httpx.URL lets through
        url: httpx.URL | None = httpx.URL(realm)
    except (ValueError, httpx.InvalidURL):
        url = None

    if not realm:
        problem = "has no realm"
    elif url is None or url.scheme not in ("http", "https") or not url.host:
        problem = f"has realm {where!r}, which is not an http(s) URL"
    elif call.registry.base_url.startswith("https:") and url.scheme != "https":
        problem = (
            f"has realm {where}, plain HTTP while the registry uses HTTPS, and "
            "watcher will not send tokens or credentials in clear text"
        )
    else:
        return url

    msg = (
        f"fetch token for {call.reference.name}: the Bearer challenge {problem}; "
        "report it to the registry operator"
    )
    raise ProtocolViolation(msg, method="GET", url=where, status=401)


def _check_realm_host(token_call: _Call, realm: httpx.URL) -> None:
    """Refuse to send the credential to a realm on a host the user did not allow.

    The realm comes from the registry's answer: a compromised or misconfigured
    registry must not be able to collect credentials for another host. Ports are
    not compared: the registry's own host may serve tokens on another port.
    """
    registry = token_call.registry
    own = (httpx.URL(registry.base_url).host or "").lower()
    host = realm.host.lower()
    allowed = registry.settings.realm_hosts_for(registry.name)
    netloc = f"{host}:{realm.port}" if realm.port is not None else host
    if host == own or host in allowed or netloc in allowed:
        return

    msg = (
        f"{token_call.what}: the registry sends us to the token realm on {host}, "
        f"not {own}, and watcher sends the credential for {registry.name} only to "
        f'hosts you allow; if you trust {host}, add realm_hosts = ["{host}"] to '
        f"{registry.config_key}"
    )
    raise AuthError(msg, method="GET", url=_redact(str(realm)), status=401)


def _fallback_reason(answer: _Answer) -> str | None:
    """Why a HEAD answer calls for a GET (a ``head_fallback`` reason), if it does."""
    if answer.status == httpx.codes.OK:
        present = "docker-content-digest" in answer.headers
        return None if present else "no_digest"

    if answer.status in (httpx.codes.METHOD_NOT_ALLOWED, httpx.codes.NOT_FOUND):
        return str(answer.status)

    return None


def _check_status(call: _Call, answer: _Answer, authorization: _Authorization) -> None:
    """Raise the error a non-200 answer means."""
    status = answer.status
    if status == httpx.codes.OK:
        return

    url = redact_url(call.url)
    codes = parse_error_codes(answer.body)
    shown = f" ({', '.join(codes)})" if codes else ""
    if status in (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN):
        msg = f"{call.what}: {_refusal(call, status, authorization)}"
        raise AuthError(msg, method=call.method, url=url, status=status, codes=codes)

    if status == httpx.codes.NOT_FOUND:
        sought = "repository" if call.kind == "tags" else "repository and tag"
        msg = (
            f"{call.what}: 404 not found{shown}; check that the {sought} exist "
            "and that the credential may see them"
        )
        raise NotFound(msg, method=call.method, url=url, status=status, codes=codes)

    if status == httpx.codes.TOO_MANY_REQUESTS:
        retry_after = parse_retry_after(answer.headers.get("retry-after"))
        advice = "later" if retry_after is None else f"in {retry_after:g} s"
        msg = (
            f"{call.what}: 429 too many requests{shown}; "
            f"the pull budget is spent, retry {advice}"
        )
        raise RateLimited(
            msg,
            method=call.method,
            url=url,
            status=status,
            codes=codes,
            retry_after=retry_after,
        )

    raise _unexpected_status(call, answer, codes)


def _refusal(call: _Call, status: int, authorization: _Authorization) -> str:
    """What a 401 or 403 means, given what we sent, and what to do about it."""
    hint = _credential_hint(call)
    if status == httpx.codes.FORBIDDEN:
        return f"403 forbidden; {hint}"

    if authorization.scheme == "bearer":
        return f"401 after token exchange; {hint}"

    if authorization.scheme == "basic":
        return f"401 with basic credentials; {hint}"

    return (
        "401 without a usable WWW-Authenticate challenge; "
        "report it to the registry operator"
    )


def _credential_hint(call: _Call) -> str:
    """What to check, given where the credential that was refused came from."""
    key, name = call.config_key, call.registry.name
    found = call.registry.found
    source = found.source if found is not None else "anonymous"
    if source == "anonymous":
        return f"if the repository is private, set username and password_env in {key}"

    if source == "config":
        return f"check username and password_env (or password_file) in {key}"

    if source == "docker-config":
        where = "the credential docker login stored in Docker's config.json"
    else:
        helper = source.removeprefix("helper:")
        where = f"the credential docker-credential-{helper} holds"

    return f"check {where} for {name}, or set username and password_env in {key}"


def _unexpected_status(
    call: _Call, answer: _Answer, codes: tuple[str, ...]
) -> RegistryError:
    status = answer.status
    url = redact_url(call.url)
    if status >= httpx.codes.INTERNAL_SERVER_ERROR:
        retry_after = parse_retry_after(answer.headers.get("retry-after"))
        advice = "later" if retry_after is None else f"in {retry_after:g} s"
        msg = f"{call.what}: the registry answered {status}; try again {advice}"
        return RegistryUnavailable(
            msg,
            method=call.method,
            url=url,
            reason="server_error",
            status=status,
            codes=codes,
            retry_after=retry_after,
        )

    msg = (
        f"{call.what}: unexpected status {status}; "
        f"the registry does not answer {call.method} as the distribution spec says"
    )
    return ProtocolViolation(
        msg, method=call.method, url=url, status=status, codes=codes
    )


def _head_descriptor(call: _Call, answer: _Answer) -> Descriptor:
    """The descriptor in a HEAD answer's headers, refusing what we cannot record."""
    try:
        digest = Digest.parse(answer.headers["docker-content-digest"].strip())
    except ValueError as exc:
        msg = (
            f"{call.what}: the Docker-Content-Digest header is invalid: {exc}; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(
            msg, method="HEAD", url=redact_url(call.url), status=200
        ) from exc

    media_type = _content_type(answer)
    if not media_type:
        msg = (
            f"{call.what}: the answer has no Content-Type header; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(
            msg, method="HEAD", url=redact_url(call.url), status=200
        )

    _refuse_schema1(call, media_type)
    if call.reference.tag is None and digest != call.reference.digest:
        msg = (
            f"{call.what}: the registry answered another digest, {digest}; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(
            msg, method="HEAD", url=redact_url(call.url), status=200
        )

    return Descriptor(media_type, digest, _content_length(call, answer))


def _content_type(answer: _Answer) -> str:
    value = str(answer.headers.get("content-type", ""))
    return value.split(";")[0].strip().lower()


def _refuse_schema1(call: _Call, media_type: str) -> None:
    """Refuse to record what is no OCI or Docker v2 manifest, saying what it was."""
    if media_type in SCHEMA1_TYPES:
        msg = (
            f"{call.what}: the registry ignored the Accept header and served schema1 "
            f"({media_type}), whose digest no docker pull shows; watcher records only "
            "OCI and Docker v2 manifests"
        )
        raise UnsupportedManifest(
            msg, method=call.method, url=redact_url(call.url), status=200
        )
    if not _json_media_type(media_type):
        msg = (
            f"{call.what}: the answer is {media_type}, not a manifest; check the "
            "registry's endpoint (a proxy or login page may be answering)"
        )
        raise ProtocolViolation(
            msg, method=call.method, url=redact_url(call.url), status=200
        )


def _json_media_type(media_type: str) -> bool:
    """Manifest types are JSON; tolerate new ones (artifacts) and plain JSON."""
    return media_type in MANIFEST_TYPES or (
        media_type.startswith("application/")
        and (media_type.endswith("+json") or media_type == "application/json")
    )


def _content_length(call: _Call, answer: _Answer) -> int | None:
    value = answer.headers.get("content-length")
    if value is None:
        return None

    if not (value.isascii() and value.strip().isdigit()):
        msg = (
            f"{call.what}: the Content-Length header {value!r} is not a size; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(
            msg, method=call.method, url=redact_url(call.url), status=200
        )
    return int(value)


def _manifest_of(call: _Call, answer: _Answer) -> Manifest:
    """The manifest in a GET answer: its digest is the hash of the exact bytes."""
    media_type = _manifest_media_type(call, answer)
    _refuse_schema1(call, media_type)
    wanted = call.reference.digest if call.reference.tag is None else None
    digest = _body_digest(answer.body, wanted.algorithm if wanted else "sha256")
    if wanted is not None and digest != wanted:
        msg = (
            f"{call.what}: the body's digest is {digest}, not the one asked for; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(msg, method="GET", url=redact_url(call.url), status=200)

    return Manifest(Descriptor(media_type, digest, len(answer.body)), answer.body)


def _manifest_media_type(call: _Call, answer: _Answer) -> str:
    """The Content-Type, or the type the body declares when that says only JSON.

    Old registries serve schema1 as ``application/json``; its body tells.
    """
    declared = _content_type(answer)
    if declared and declared != "application/json":
        return declared

    sniffed = sniff_media_type(answer.body)
    if sniffed is not None:
        return sniffed

    if declared:
        return declared

    msg = (
        f"{call.what}: the answer has no Content-Type header and the body names no "
        "mediaType; report it to the registry operator"
    )
    raise ProtocolViolation(msg, method="GET", url=redact_url(call.url), status=200)


def _body_digest(body: bytes, algorithm: str) -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, body).hexdigest())


def _check_digest_header(call: _Call, answer: _Answer, digest: Digest) -> None:
    """Warn, once per registry, when Docker-Content-Digest is not the body's hash.

    The body's hash wins: it is what ``docker pull`` verifies. A proxy that
    re-serialises manifests, or a registry bug, makes the header lie.
    """
    header = answer.headers.get("docker-content-digest")
    if header is None:
        return

    try:
        claimed = Digest.parse(header.strip())
        matches = _body_digest(answer.body, claimed.algorithm) == claimed
    except ValueError:
        matches = False

    if not matches:
        call.registry.warn_once(
            "manifest.digest_mismatch",
            digest=str(digest),
            header_digest=header[:140],
            detail=(
                "Docker-Content-Digest is not the hash of the body; watcher records "
                "the body's hash, which is what docker pull verifies"
            ),
        )


def _tags_of(call: _Call, answer: _Answer) -> list[str]:
    try:
        return parse_tags(answer.body)
    except ValueError as exc:
        msg = f"{call.what}: {exc}; report it to the registry operator"
        raise ProtocolViolation(
            msg, method="GET", url=redact_url(call.url), status=answer.status
        ) from exc


def _unavailable(call: _Call, url: str, exc: httpx.RequestError) -> RegistryUnavailable:
    """Our error for a request that got no answer, with the cause narrowed down."""
    where = _redact(url)
    detail = redact_text(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        reason = "timeout"
        what = (
            f"no answer from {where} in time; "
            f"try again later or raise timeout in {call.config_key}"
        )
    elif _caused_by_tls(exc):
        reason = "tls"
        what = (
            f"TLS with {where} failed ({detail}); check the registry's certificate, "
            f"or set ca_file in {call.config_key} to the CA that signed it"
        )
    elif any(text in str(exc).lower() for text in _DNS_FAILURES):
        reason = "dns"
        what = f"cannot resolve the host of {where}; check the registry name and DNS"
    elif _through_proxy(call, url):
        reason = "connect"
        what = (
            f"cannot reach {where} through the proxy named by HTTPS_PROXY, "
            f"HTTP_PROXY or ALL_PROXY ({detail}); check that proxy, or name the "
            "registry's host in NO_PROXY"
        )
    else:
        reason = "connect"
        what = f"cannot reach {where} ({detail}); try again later"

    msg = f"{call.what}: {what}"
    return RegistryUnavailable(msg, method=call.method, url=where, reason=reason)


def _through_proxy(call: _Call, url: str) -> bool:
    """Whether httpx sent ``url`` through a proxy from the environment.

    Asks httpx's own routing (private, like the proxy reading in transport.py):
    a proxied URL takes a mounted transport, not the client's own.
    """
    http = call.registry.http
    try:
        chosen = http._transport_for_url(httpx.URL(url))
    except (AttributeError, httpx.InvalidURL):
        return False
    return chosen is not http._transport


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True

        seen = seen.__cause__ or seen.__context__

    return False
