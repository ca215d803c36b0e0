"""The registry client: HEAD a manifest, authenticating as the registry asks.

The only module that imports httpx; what it raises is from ``watcher.errors``, never
from httpx. Tokens, passwords and Authorization headers never reach a log event or
an error message, and every URL shown passes through ``redact_url``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Protocol, Self, TypeAlias
from urllib.parse import urlsplit

import httpx

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
from watcher.registry.media_types import MANIFEST_ACCEPT, SCHEMA1_TYPES
from watcher.registry.ratelimit import RateLimit, parse_rate_limit

USER_AGENT = f"watcher/{__version__}"

#: What replaces the network in tests, named here so callers need not import httpx.
Transport: TypeAlias = httpx.AsyncBaseTransport

_log = get_logger("watcher.registry")

# What resolvers say when a name does not resolve (glibc, macOS, musl).
_DNS_FAILURES = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no address associated",
)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What a HEAD says about a manifest; ``size`` is None without Content-Length."""

    media_type: str
    digest: Digest
    size: int | None


@dataclass(frozen=True, slots=True)
class HeadResult:
    """A manifest's descriptor, and the pull budget the answer announced."""

    descriptor: Descriptor
    rate_limit: RateLimit | None


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


@dataclass
class _Registry:
    """One registry's connection pool, concurrency limit and authentication state."""

    name: str
    base_url: str
    http: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    credential: Credential | None
    auth: AuthState = field(default_factory=AuthState)


@dataclass(frozen=True, slots=True)
class _Call:
    """One ``head_manifest`` call: what its requests and errors refer to."""

    reference: Reference
    registry: _Registry
    url: str

    @property
    def what(self) -> str:
        return self.doing("HEAD")

    def doing(self, method: str) -> str:
        """What a request was for, to open its error messages.

        A token error names the repository, not the tag: concurrent checks of one
        repository share a token fetch, and its failure.
        """
        if method == "HEAD":
            return f"HEAD manifest {self.reference}"

        return f"fetch token for {self.reference.name}"

    @property
    def config_key(self) -> str:
        return f'[registries."{self.registry.name}"]'


@dataclass(frozen=True, slots=True)
class _Authorization:
    """The ``Authorization`` header sent (None: none), and the token behind it."""

    header: str | None = field(default=None, repr=False)
    scheme: str | None = None
    token: Token | None = None
    cached: bool = False


class RegistryClient:
    """Resolves references to descriptors with HEAD requests, one pool per registry.

    Args:
        settings: the settings of a registry, by the name users write.
        observer: told about every request, token fetch and rate limit seen.
        transport: replaces the network for every registry (tests).
    """

    def __init__(
        self,
        settings: Callable[[str], RegistrySettings],
        *,
        observer: RequestObserver | None = None,
        transport: Transport | None = None,
    ) -> None:
        self._settings = settings
        self._observer = observer
        self._transport = transport
        self._registries: dict[str, _Registry] = {}
        self._closed = False

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
        """The descriptor of the manifest ``reference`` names, from a HEAD request.

        Raises:
            AuthError: the registry refused us, or the token exchange failed.
            NotFound: no such repository, tag or digest.
            RateLimited: 429; ``retry_after`` holds the registry's advice.
            RegistryUnavailable: DNS, connection, TLS, timeout or 5xx.
            ProtocolViolation: an answer the distribution spec does not allow.
            UnsupportedManifest: the registry served a schema1 manifest.
            RegistryError: the registry's host or endpoint makes no usable URL.
        """
        registry = self._registry(reference)
        path = f"/v2/{reference.repository}/manifests/{reference.tag_or_digest}"
        call = _Call(reference, registry, registry.base_url + path)

        response, authorization = await self._authorized_head(call)
        _check_status(call, response, authorization)
        descriptor = _descriptor(call, response)
        return HeadResult(descriptor, parse_rate_limit(response.headers))

    def _registry(self, reference: Reference) -> _Registry:
        if self._closed:
            msg = "this RegistryClient is closed; create a new one"
            raise RuntimeError(msg)

        registry = self._registries.get(reference.registry)
        if registry is None:
            registry = self._open(reference)
            self._registries[reference.registry] = registry

        return registry

    def _open(self, reference: Reference) -> _Registry:
        settings = self._settings(reference.registry)
        base = base_url(reference.api_host, settings.endpoint)
        _check_base_url(reference, base)
        # Every pooled connection beyond the concurrency limit would sit idle: a
        # lead measured 1000-connection pools far slower than 8 for many HEADs.
        limits = httpx.Limits(
            max_connections=settings.concurrency,
            max_keepalive_connections=settings.concurrency,
        )
        http = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(settings.timeout),
            limits=limits,
            follow_redirects=False,
            transport=self._transport,
        )
        credential = None
        if settings.username is not None and settings.password is not None:
            password = settings.password.get_secret_value()
            credential = Credential(settings.username, password)

        return _Registry(
            name=reference.registry,
            base_url=base,
            http=http,
            semaphore=asyncio.Semaphore(settings.concurrency),
            credential=credential,
        )

    async def _authorized_head(
        self, call: _Call
    ) -> tuple[httpx.Response, _Authorization]:
        """The HEAD answer, authenticated as the registry asks, with at most one retry.

        A 401 is answered once: for the probe that revealed the challenge, for a
        cached token the registry no longer takes, or for a registry that started
        asking. A 401 to a token fetched for this very request is final.
        """
        challenged = await self._probe(call)
        if challenged is not None and challenged.status_code != 401:
            return challenged, _Authorization()

        if challenged is None:
            authorization = await self._authorize(call, call.registry.auth.challenge)
            response = await self._head(call, authorization)
            retry = authorization.header is None or authorization.cached
            if response.status_code != 401 or not retry:
                return response, authorization

            if authorization.token is not None:
                call.registry.auth.drop(authorization.token)

            challenged = response

        challenge = _challenge_of(challenged)
        call.registry.auth.learn(challenge)
        authorization = await self._authorize(call, challenge, challenged=True)
        if authorization.header is None:
            return challenged, authorization

        return await self._head(call, authorization), authorization

    async def _probe(self, call: _Call) -> httpx.Response | None:
        """Send the registry's first request alone, unauthenticated, to learn its needs.

        Returns that answer, or None when the registry's needs were already known.
        """
        if call.registry.auth.known:
            return None

        async with call.registry.auth.probe_lock:
            return await self._probe_alone(call)

    async def _probe_alone(self, call: _Call) -> httpx.Response | None:
        auth = call.registry.auth
        # Another request may have probed while this one waited for the lock.
        if auth.known:
            return None

        response = await self._head(call, _Authorization())
        status = response.status_code
        # A 429 or 5xx says nothing about authentication: the next request probes.
        if status != 401 and status != 429 and status < 500:
            auth.learn(None)

        return response

    async def _authorize(
        self, call: _Call, challenge: Challenge | None, *, challenged: bool = False
    ) -> _Authorization:
        """What ``challenge`` asks for; ``challenged``: it came for this very call."""
        if challenge is None:
            return _Authorization()

        credential = call.registry.credential
        if challenge.scheme == "basic":
            if credential is None:
                msg = (
                    f"{call.what}: registry requires credentials; "
                    f"set username and password_env in {call.config_key}"
                )
                raise AuthError(
                    msg, method="HEAD", url=redact_url(call.url), status=401
                )
            return _Authorization(credential.basic_authorization(), "basic")

        if challenge.scheme == "bearer":
            return await self._bearer(call, challenge, challenged=challenged)

        msg = (
            f"{call.what}: the registry asks for {challenge.scheme!r} authentication, "
            "which watcher does not support; only Bearer and Basic are"
        )
        raise AuthError(msg, method="HEAD", url=redact_url(call.url), status=401)

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

        url = str(realm.copy_merge_params(params))
        headers = {}
        if call.registry.credential is not None:
            headers["Authorization"] = call.registry.credential.basic_authorization()

        response = await self._send(call, "GET", url, headers)
        failure = None
        if response.status_code != httpx.codes.OK:
            failure = f"answered {response.status_code}"
        else:
            try:
                return parse_token_response(response.json(), scope=scope)
            except ValueError as exc:
                failure = f"gave no usable token ({exc})"

        where = _redact(str(realm))
        msg = (
            f"{call.doing('GET')}: {where} {failure}; "
            f"check the credentials for {call.registry.name} in {call.config_key}"
        )
        raise AuthError(msg, method="GET", url=where, status=response.status_code)

    async def _head(self, call: _Call, authorization: _Authorization) -> httpx.Response:
        headers = {"Accept": MANIFEST_ACCEPT}
        if authorization.header is not None:
            headers["Authorization"] = authorization.header

        response = await self._send(call, "HEAD", call.url, headers)
        rate_limit = parse_rate_limit(response.headers)
        if rate_limit is not None and self._observer is not None:
            self._observer.rate_limit_seen(call.registry.name, rate_limit)

        return response

    async def _send(
        self, call: _Call, method: str, url: str, headers: dict[str, str]
    ) -> httpx.Response:
        """One request through the registry's pool, reported and logged either way."""
        registry = call.registry
        async with registry.semaphore:
            started = time.perf_counter()
            status = None
            try:
                response = await registry.http.request(method, url, headers=headers)
                status = response.status_code
            except httpx.RequestError as exc:
                raise _unavailable(call, method, url, exc) from exc
            finally:
                seconds = time.perf_counter() - started
                _log.debug(
                    "http.request",
                    registry=registry.name,
                    method=method,
                    url=_redact(url),
                    status=status,
                    duration_ms=round(seconds * 1000, 1),
                )
                if self._observer is not None:
                    self._observer.request_done(registry.name, method, status, seconds)

        return response


def base_url(api_host: str, endpoint: str | None) -> str:
    """Where a registry's ``/v2/`` lives: the endpoint, else HTTPS at ``api_host``.

    Loopback hosts get plain HTTP, as Docker treats them as insecure registries.
    """
    if endpoint is not None:
        return endpoint.rstrip("/")

    scheme = "http" if _is_loopback(api_host) else "https"
    return f"{scheme}://{api_host}"


def _check_base_url(reference: Reference, base: str) -> None:
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
            f"HEAD manifest {reference}: registry URL {base!r} is invalid ({exc}); "
            "fix the registry host[:port] in the reference, or endpoint in "
            f'[registries."{reference.registry}"]'
        )
        raise RegistryError(msg, method="HEAD", url=_redact(base)) from exc


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


def _challenge_of(response: httpx.Response) -> Challenge | None:
    header = ", ".join(response.headers.get_list("www-authenticate"))
    return preferred_challenge(parse_challenges(header))


def _realm_url(call: _Call, challenge: Challenge) -> httpx.URL:
    """The token endpoint, if it is one we may send credentials to."""
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
        f"{call.doing('GET')}: the Bearer challenge {problem}; "
        "report it to the registry operator"
    )
    raise ProtocolViolation(msg, method="GET", url=where, status=401)


def _check_status(
    call: _Call, response: httpx.Response, authorization: _Authorization
) -> None:
    """Raise the error a non-200 answer means."""
    status = response.status_code
    if status == httpx.codes.OK:
        return

    url = redact_url(call.url)
    if status in (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN):
        msg = f"{call.what}: {_refusal(call, status, authorization)}"
        raise AuthError(msg, method="HEAD", url=url, status=status)

    if status == httpx.codes.NOT_FOUND:
        # A HEAD answer has no body, so no distribution error codes to read.
        msg = (
            f"{call.what}: 404 not found; check that the repository and tag exist "
            "and that the credential may see them"
        )
        raise NotFound(msg, method="HEAD", url=url, status=status)

    if status == httpx.codes.TOO_MANY_REQUESTS:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        advice = "later" if retry_after is None else f"in {retry_after:g} s"
        msg = (
            f"{call.what}: 429 too many requests; "
            f"the pull budget is spent, retry {advice}"
        )
        raise RateLimited(
            msg, method="HEAD", url=url, status=status, retry_after=retry_after
        )

    raise _unexpected_status(call, response)


def _refusal(call: _Call, status: int, authorization: _Authorization) -> str:
    """What a 401 or 403 means, given what we sent, and what to do about it."""
    key = call.config_key
    if call.registry.credential is None:
        hint = f"if the repository is private, set username and password_env in {key}"
    else:
        hint = f"check username and password_env in {key}"

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


def _unexpected_status(call: _Call, response: httpx.Response) -> RegistryError:
    status = response.status_code
    url = redact_url(call.url)
    if status >= httpx.codes.INTERNAL_SERVER_ERROR:
        msg = f"{call.what}: the registry answered {status}; try again later"
        return RegistryUnavailable(
            msg, method="HEAD", url=url, reason="server_error", status=status
        )

    if response.is_redirect:
        location = _redact(response.headers.get("location", ""))
        msg = (
            f"{call.what}: {status} redirect to {location!r}, which watcher does not "
            f"follow; if the registry moved, set endpoint in {call.config_key}"
        )
        return ProtocolViolation(msg, method="HEAD", url=url, status=status)

    msg = (
        f"{call.what}: unexpected status {status}; "
        "the registry does not answer HEAD as the distribution spec says"
    )
    return ProtocolViolation(msg, method="HEAD", url=url, status=status)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date)."""
    if value is None:
        return None

    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None

    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)

    now = datetime.now(UTC) if now is None else now
    return max(0.0, (when - now).total_seconds())


def _descriptor(call: _Call, response: httpx.Response) -> Descriptor:
    """The descriptor in a 200 answer's headers, refusing what we cannot record."""
    url = redact_url(call.url)
    digest_header = response.headers.get("docker-content-digest")
    if digest_header is None:
        # TODO: #3 no GET fallback yet: registries that omit Docker-Content-Digest on
        # HEAD fail here; the fallback would hash the GET body (and may cost a pull).
        msg = (
            f"{call.what}: the answer has no Docker-Content-Digest header; "
            "watcher cannot resolve tags on this registry yet"
        )
        raise ProtocolViolation(msg, method="HEAD", url=url, status=200)

    try:
        digest = Digest.parse(digest_header.strip())
    except ValueError as exc:
        msg = (
            f"{call.what}: the Docker-Content-Digest header is invalid: {exc}; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(msg, method="HEAD", url=url, status=200) from exc

    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not media_type:
        msg = (
            f"{call.what}: the answer has no Content-Type header; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(msg, method="HEAD", url=url, status=200)

    if media_type in SCHEMA1_TYPES:
        msg = (
            f"{call.what}: the registry ignored the Accept header and served schema1 "
            f"({media_type}), whose digest no docker pull shows; watcher records only "
            "OCI and Docker v2 manifests"
        )
        raise UnsupportedManifest(msg, method="HEAD", url=url, status=200)

    if call.reference.tag is None and digest != call.reference.digest:
        msg = (
            f"{call.what}: the registry answered another digest, {digest}; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(msg, method="HEAD", url=url, status=200)

    return Descriptor(media_type, digest, _content_length(call, response))


def _content_length(call: _Call, response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None:
        return None

    if not (value.isascii() and value.strip().isdigit()):
        msg = (
            f"{call.what}: the Content-Length header {value!r} is not a size; "
            "report it to the registry operator"
        )
        raise ProtocolViolation(
            msg, method="HEAD", url=redact_url(call.url), status=200
        )
    return int(value)


def _unavailable(
    call: _Call, method: str, url: str, exc: httpx.RequestError
) -> RegistryUnavailable:
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
        what = f"TLS with {where} failed ({detail}); check the registry's certificate"
    elif any(text in str(exc).lower() for text in _DNS_FAILURES):
        reason = "dns"
        what = f"cannot resolve the host of {where}; check the registry name and DNS"
    else:
        reason = "connect"
        what = f"cannot reach {where} ({detail}); try again later"

    msg = f"{call.doing(method)}: {what}"
    return RegistryUnavailable(msg, method=method, url=where, reason=reason)


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True

        seen = seen.__cause__ or seen.__context__

    return False
