"""A token server of our own for the real registry: the Docker registry token spec.

`TokenServer` is a plain ASGI app served by uvicorn on 127.0.0.1 in a background
thread. `GET /token?service=...&scope=...` (any number of `scope` parameters, each
holding space-separated `type:name:actions` items) answers
`{"token", "access_token", "expires_in", "issued_at"}`; the token is an RS256 JWT
that Debian's `docker-registry` (distribution 2.8) accepts:

- its `x5c` header holds a self-signed certificate of the signing key, and the
  registry's `rootcertbundle` holds that same certificate. distribution 2.8 takes
  the signing key from `x5c` first (then `jwk`, then `kid` as a libtrust key id),
  verifies the chain against the bundle, then the signature with the leaf's key;
- `iss` must equal the registry's `issuer` and `aud` its `service` (one string:
  distribution 2.8 cannot read a list there); `exp` and `nbf` get 60 s of leeway;
- `access` lists what the token opens. Anonymous callers (no readable basic
  credentials) get `pull` on any repository; `credential` gets `pull` and `push`;
  wrong credentials get 401; nothing else is ever granted.

`BearerAuth` is the client side for tests that push through a token registry, and
`TokenRegistry` bundles a registry with the server that feeds it. Tokens are never
logged. Imports nothing from watcher.
"""

import base64
import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.real.asgi import (
    Receive,
    Scope,
    Send,
    ThreadedServer,
    basic_credentials,
    drain,
)
from tests.real.registry import BasicCredential, RegistryServer, TokenAuth

TOKEN_SERVICE = "watcher-token-registry"
TOKEN_ISSUER = "watcher-test-token-server"
DEFAULT_TOKEN_TTL_SECONDS = 300
SIGNING_ALGORITHM = "RS256"
RSA_KEY_BITS = 2048
CERTIFICATE_LIFETIME = timedelta(days=1)
HTTP_TIMEOUT_SECONDS = 10.0

ANONYMOUS_ACTIONS = frozenset({"pull"})
CREDENTIAL_ACTIONS = frozenset({"pull", "push"})

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Access:
    """One entry of a token's `access` claim: actions on a typed, named resource."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def repository(cls, name: str, *actions: str) -> "Access":
        """Return access to repository `name`; `pull` when no action is named."""
        return cls("repository", name, actions or ("pull",))

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request to `/token`; `username` is None for an anonymous caller.

    `status` is what the server answered; `granted` is empty unless it was 200.
    """

    scopes: tuple[str, ...]
    username: str | None
    status: int
    granted: tuple[Access, ...] = ()


class TokenServer(ThreadedServer):
    """Issues registry tokens as the module docstring describes.

    The signing key and its certificate are made when the object is built, so
    `token_auth()` and `mint()` work before `start()`. Use as a context manager,
    or call `start()` and `stop()`.
    """

    def __init__(
        self,
        *,
        credential: BasicCredential | None = None,
        service: str = TOKEN_SERVICE,
        issuer: str = TOKEN_ISSUER,
        token_ttl: int = DEFAULT_TOKEN_TTL_SECONDS,
    ) -> None:
        super().__init__(name="TokenServer", thread_name="token-server")
        self.credential = credential
        self.service = service
        self.issuer = issuer
        self.token_ttl = token_ttl
        self._key = rsa.generate_private_key(
            public_exponent=65537, key_size=RSA_KEY_BITS
        )
        self._certificate = _self_signed_certificate(self._key, issuer)
        der = self._certificate.public_bytes(serialization.Encoding.DER)
        self._x5c = [base64.b64encode(der).decode("ascii")]
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._scopes: Counter[str] = Counter()
        self._requests: list[TokenRequest] = []

    # Observations, safe to read from the test thread.

    @property
    def counts(self) -> Counter[str]:
        """Return a snapshot of `/token` requests by outcome.

        Keys: `token` (every request), `token_denied` (401: wrong credentials),
        `token_bad_request` (400: wrong or missing service), `token_anonymous` and
        `token_authenticated` (200s without and with valid basic credentials).
        """
        with self._lock:
            return Counter(self._counts)

    @property
    def scopes(self) -> Counter[str]:
        """Return how often each scope item (`type:name:actions`) was asked for."""
        with self._lock:
            return Counter(self._scopes)

    @property
    def requests(self) -> list[TokenRequest]:
        """Return every `/token` request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, repository: str) -> list[TokenRequest]:
        """Return the `/token` requests that asked for any access to `repository`."""
        resource = f"repository:{repository}"
        return [
            request
            for request in self.requests
            if any(
                item.rpartition(":")[0] == resource
                for scope in request.scopes
                for item in scope.split(" ")
            )
        ]

    @property
    def realm(self) -> str:
        """Return the token endpoint, for the registry's `realm`."""
        return f"{self.url}/token"

    @property
    def certificate_pem(self) -> bytes:
        """Return the self-signed certificate of the signing key, PEM-encoded."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    def token_auth(self) -> TokenAuth:
        """Return the `start_registry(token_auth=...)` settings that trust this server.

        Raises:
            RuntimeError: the server is not started, so it has no realm yet.
        """
        if not self.url:
            msg = "TokenServer.token_auth(): start() the server first; its realm has no port yet"
            raise RuntimeError(msg)

        return TokenAuth(
            realm=self.realm,
            service=self.service,
            issuer=self.issuer,
            root_certificates=self.certificate_pem,
        )

    def mint(
        self,
        access: Iterable[Access],
        *,
        subject: str = "",
        issued_at: float | None = None,
        lifetime_seconds: int | None = None,
    ) -> str:
        """Return a signed token for `access`, without a request or any policy.

        Args:
            subject: the `sub` claim; "" is how the server names anonymous callers.
            issued_at: Unix time of `iat` and `nbf`; now when None. A time far
                enough in the past (with the 60 s leeway) makes an expired token.
            lifetime_seconds: `exp` - `iat`; the server's `token_ttl` when None.
        """
        now = time.time() if issued_at is None else issued_at
        lifetime = self.token_ttl if lifetime_seconds is None else lifetime_seconds
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": int(now) + lifetime,
            "nbf": int(now),
            "iat": int(now),
            "jti": secrets.token_hex(16),
            "access": [entry.claim() for entry in access],
        }
        return jwt.encode(
            claims, self._key, algorithm=SIGNING_ALGORITHM, headers={"x5c": self._x5c}
        )

    # ASGI application; start(), stop() and the context manager come from
    # ThreadedServer.

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return

        await drain(receive)
        if scope["path"] != "/token":
            await _send_json(send, 404, {"details": f"no route for {scope['path']}"})
            return

        if scope["method"] != "GET":
            await _send_json(send, 405, {"details": "the token endpoint takes GET"})
            return

        status, document, headers = self._token(scope)
        await _send_json(send, status, document, *headers)

    def _token(self, scope: Scope) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        query = parse_qs(scope["query_string"].decode("latin-1"))
        scopes = tuple(query.get("scope", []))
        authorization = _header(scope, "authorization")
        offered = basic_credentials(authorization) if authorization else None
        username = offered[0] if offered is not None else None
        self._count("token", scopes)

        if offered is not None and offered != self._credential_pair():
            self._record(TokenRequest(scopes, username, 401), "token_denied")
            challenge = ("www-authenticate", 'Basic realm="watcher-token-server"')
            return 401, {"details": "incorrect username or password"}, [challenge]

        service = query.get("service", [""])[0]
        if service != self.service:
            self._record(TokenRequest(scopes, username, 400), "token_bad_request")
            details = f"service must be {self.service!r}, got {service!r}"
            return 400, {"details": details}, []

        allowed = CREDENTIAL_ACTIONS if offered is not None else ANONYMOUS_ACTIONS
        granted = tuple(_grant(scopes, allowed))
        token = self.mint(granted, subject=username or "")
        outcome = "token_anonymous" if offered is None else "token_authenticated"
        self._record(TokenRequest(scopes, username, 200, granted), outcome)
        issued_at = datetime.now(UTC).isoformat(timespec="seconds")
        document = {
            "token": token,
            "access_token": token,
            "expires_in": self.token_ttl,
            "issued_at": issued_at.replace("+00:00", "Z"),
        }
        return 200, document, []

    def _credential_pair(self) -> tuple[str, str] | None:
        credential = self.credential
        return None if credential is None else credential.as_auth()

    def _count(self, kind: str, scopes: Iterable[str]) -> None:
        with self._lock:
            self._counts[kind] += 1
            self._scopes.update(item for scope in scopes for item in scope.split(" "))

    def _record(self, request: TokenRequest, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1
            self._requests.append(request)


class BearerAuth(httpx.Auth):
    """httpx auth doing the registry token dance, with a credential or anonymously.

    A request goes out with the last token obtained; on a `401` with a Bearer
    challenge it fetches a token for the challenge's scope from its realm (with
    HTTP basic credentials when given) and sends the request once more. A failed
    token request is returned as the response, so callers see what refused them.
    Works with `httpx.Client` and `httpx.AsyncClient`; not for concurrent use.
    """

    requires_request_body = True
    requires_response_body = True

    def __init__(self, credential: BasicCredential | None = None) -> None:
        self._credential = credential
        self._token: str | None = None

    def auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is not None:
            request.headers["Authorization"] = f"Bearer {self._token}"

        response = yield request
        challenge = bearer_challenge(response)
        if response.status_code != httpx.codes.UNAUTHORIZED or challenge is None:
            return

        token_response = yield self._token_request(challenge)
        if token_response.status_code != httpx.codes.OK:
            return

        self._token = token_response.json()["token"]
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def _token_request(self, challenge: dict[str, str]) -> httpx.Request:
        params: dict[str, str] = {
            name: challenge[name] for name in ("service", "scope") if name in challenge
        }
        headers = {}
        if self._credential is not None:
            pair = ":".join(self._credential.as_auth()).encode()
            headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"

        return httpx.Request("GET", challenge["realm"], params=params, headers=headers)


@dataclass(frozen=True, slots=True)
class TokenRegistry:
    """A real `docker-registry` with token auth, and the token server it trusts.

    `credential` may pull and push; anyone may pull. `push_auth` does the token
    dance with `credential`, for `tests.real.images.push_image(..., auth=...)`.
    """

    registry: RegistryServer
    token_server: TokenServer
    credential: BasicCredential
    push_auth: BearerAuth = field(repr=False)

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def host(self) -> str:
        return self.registry.host


def _self_signed_certificate(
    key: rsa.RSAPrivateKey, common_name: str
) -> x509.Certificate:
    # Go's x509 verifier accepts a certificate that is itself in the root pool, so
    # one self-signed certificate serves as both the x5c leaf and the bundle.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _grant(scopes: Iterable[str], allowed: frozenset[str]) -> list[Access]:
    """Return the access the policy gives for `scopes`: `allowed` on repositories.

    Names may hold colons (`repository:host:5000/x:pull`), so the actions are what
    follows the last colon. Other resource types get nothing.
    """
    granted: list[Access] = []
    for scope in scopes:
        for item in scope.split(" "):
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [action for action in actions.split(",") if action in allowed]
            if kind == "repository" and name and wanted:
                granted.append(Access(kind, name, tuple(dict.fromkeys(wanted))))

    return granted


def bearer_challenge(response: httpx.Response) -> dict[str, str] | None:
    """Return the parameters of the response's Bearer challenge, if it has one.

    Reads the quoted `name="value"` pairs distribution writes; not a general
    RFC 7235 parser (watcher has its own, and this must not depend on it).
    """
    for value in response.headers.get_list("www-authenticate"):
        scheme, _, params = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            found = dict(_CHALLENGE_PARAM.findall(params))
            return found if "realm" in found else None

    return None


def _header(scope: Scope, wanted: str) -> str:
    for name, value in scope["headers"]:
        if name.decode("latin-1").lower() == wanted:
            decoded: str = value.decode("latin-1")
            return decoded

    return ""


async def _send_json(
    send: Send, status: int, document: dict[str, Any], *headers: tuple[str, str]
) -> None:
    body = json.dumps(document).encode()
    all_headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        # Tokens must not linger in caches between tests or processes.
        ("cache-control", "no-store"),
        *headers,
    ]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in all_headers
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
