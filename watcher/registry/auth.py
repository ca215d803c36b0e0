"""Registry authentication: challenges, credentials, tokens, what each registry asks.

No HTTP here (the client sends the requests); no imports from watcher outside this
package. Tokens and passwords are secrets: they stay out of every repr.
"""

from __future__ import annotations

import asyncio
import base64
import string
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import monotonic
from types import MappingProxyType
from typing import Any

#: The token spec's lifetime when a token response has no ``expires_in``.
DEFAULT_TOKEN_LIFETIME_SECONDS = 60.0
#: A token is renewed when less than this is left of it ...
TOKEN_REFRESH_MARGIN_SECONDS = 5.0
#: ... or less than this fraction of its lifetime, so none expires in flight.
TOKEN_REFRESH_FRACTION = 0.1

_TCHAR = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
_SPACE = " \t"
_SEPARATORS = " \t,"


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge; scheme and names are lower case."""

    scheme: str
    params: Mapping[str, str]

    def __post_init__(self) -> None:
        lowered = {name.lower(): value for name, value in self.params.items()}
        object.__setattr__(self, "scheme", self.scheme.lower())
        object.__setattr__(self, "params", MappingProxyType(lowered))

    def __hash__(self) -> int:
        return hash((self.scheme, frozenset(self.params.items())))

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` value (RFC 7235), in order.

    Tolerates what registries send besides the grammar: unquoted values holding
    ``/`` or ``:`` (a realm URL), any case, blanks around ``=``. Never raises: on
    garbage it skips to the next comma and returns what it could read.
    """
    scanner = _Scanner(header)
    challenges: list[Challenge] = []
    while True:
        scanner.skip(_SEPARATORS)
        if scanner.at_end():
            return challenges

        scheme = scanner.token()
        if not scheme:
            scanner.skip_item()
            continue

        challenges.append(Challenge(scheme, _parse_params(scanner)))


def _parse_params(scanner: _Scanner) -> dict[str, str]:
    """Parameters up to the next challenge: a token that no ``=`` follows."""
    params: dict[str, str] = {}
    while True:
        scanner.skip(_SEPARATORS)
        start = scanner.position
        name = scanner.token()
        if not name:
            if scanner.at_end():
                return params

            scanner.skip_item()
            continue

        scanner.skip(_SPACE)
        if scanner.peek() != "=":
            scanner.position = start
            return params

        scanner.position += 1
        scanner.skip(_SPACE)
        value = scanner.quoted() if scanner.peek() == '"' else scanner.bare()
        if value is not None:
            params.setdefault(name.lower(), value)


@dataclass
class _Scanner:
    text: str
    position: int = 0

    def at_end(self) -> bool:
        return self.position >= len(self.text)

    def peek(self) -> str:
        return self.text[self.position : self.position + 1]

    def skip(self, characters: str) -> None:
        while not self.at_end() and self.text[self.position] in characters:
            self.position += 1

    def token(self) -> str:
        start = self.position
        while not self.at_end() and self.text[self.position] in _TCHAR:
            self.position += 1

        return self.text[start : self.position]

    def bare(self) -> str | None:
        """An unquoted value, read up to a blank or comma; None when empty."""
        start = self.position
        while not self.at_end() and self.text[self.position] not in _SEPARATORS:
            self.position += 1

        return self.text[start : self.position] or None

    def quoted(self) -> str:
        """A quoted string, unescaped; an unterminated one runs to the end."""
        self.position += 1
        chars = []
        while not self.at_end():
            char = self.text[self.position]
            self.position += 1
            if char == '"':
                break

            if char == "\\" and not self.at_end():
                char = self.text[self.position]
                self.position += 1

            chars.append(char)

        return "".join(chars)

    def skip_item(self) -> None:
        """Skip garbage up to the next comma outside quotes; always moves on."""
        self.position += 1
        while not self.at_end() and self.peek() != ",":
            if self.peek() == '"':
                self.quoted()
            else:
                self.position += 1


def format_challenge(challenge: Challenge) -> str:
    """``challenge`` as a ``WWW-Authenticate`` value, which ``parse_challenges`` reads.

    Every value is quoted. Names and the scheme must be RFC 7230 tokens, and values
    must be fit for a header (no CR or LF); test doubles build their answers with it.
    """
    params = ",".join(
        f'{name}="{_escape(value)}"' for name, value in challenge.params.items()
    )
    scheme = challenge.scheme.capitalize()
    return f"{scheme} {params}" if params else scheme


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def preferred_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The challenge to answer: Bearer, else Basic, else the first one offered."""
    offered = list(challenges)
    for scheme in ("bearer", "basic"):
        for challenge in offered:
            if challenge.scheme == scheme:
                return challenge

    return offered[0] if offered else None


def pull_scope(repository: str) -> str:
    """The token scope that allows pulling ``repository``."""
    return f"repository:{repository}:pull"


def scope_names(scope: str, repository: str) -> bool:
    """Whether ``scope`` (``type:name:actions`` items) covers ``repository``."""
    for item in scope.split():
        kind, _, rest = item.partition(":")
        name, _, _ = rest.rpartition(":")
        if kind == "repository" and name == repository:
            return True

    return False


@dataclass(frozen=True, slots=True)
class Credential:
    """A username and password, traded for tokens or sent as HTTP basic auth."""

    username: str
    password: str = field(repr=False)

    def basic_authorization(self) -> str:
        """The ``Authorization`` header value for HTTP basic auth."""
        pair = f"{self.username}:{self.password}".encode()
        return f"Basic {base64.b64encode(pair).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token for one scope; ``expires_at`` is on the monotonic clock."""

    value: str = field(repr=False)
    scope: str
    lifetime_seconds: float
    expires_at: float

    def is_fresh(self, now: float) -> bool:
        """Whether enough of the token is left to carry a request."""
        left = self.expires_at - now
        margin = max(
            TOKEN_REFRESH_MARGIN_SECONDS, TOKEN_REFRESH_FRACTION * self.lifetime_seconds
        )
        return left >= margin


def parse_token_response(
    data: Any,
    *,
    scope: str,
    now: float | None = None,
    wall_now: datetime | None = None,
) -> Token:
    """The token in a token endpoint's JSON answer.

    ``token`` wins over ``access_token``; ``expires_in`` defaults to 60 s.
    ``issued_at`` shortens the lifetime only when it is plausible (in the past and
    within ``expires_in``): anything else is taken for clock skew and ignored.

    Raises:
        ValueError: the answer holds no usable token. The message never quotes
            the answer, which may hold a token.
    """
    if not isinstance(data, dict):
        msg = "the answer is not a JSON object"
        raise ValueError(msg)  # noqa: TRY004 - callers treat every bad answer alike

    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value:
        msg = "the answer has no 'token' or 'access_token' string"
        raise ValueError(msg)

    expires_in = data.get("expires_in", DEFAULT_TOKEN_LIFETIME_SECONDS)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        msg = "the answer's 'expires_in' is not a number of seconds"
        raise ValueError(msg)  # noqa: TRY004 - callers treat every bad answer alike

    wall_now = datetime.now(UTC) if wall_now is None else wall_now
    age = _age(data.get("issued_at"), wall_now)
    lifetime = float(expires_in)
    if age is not None and 0 <= age < lifetime:
        lifetime -= age

    now = monotonic() if now is None else now
    return Token(value, scope, lifetime, now + lifetime)


def _age(issued_at: object, wall_now: datetime) -> float | None:
    if not isinstance(issued_at, str):
        return None

    try:
        issued = datetime.fromisoformat(issued_at)
    except ValueError:
        return None

    if issued.tzinfo is None:
        return None

    return (wall_now - issued).total_seconds()


class AuthState:
    """What one registry asked for, and the tokens it gave, shared by its requests.

    ``known`` turns true once a request has shown whether the registry wants
    authentication; until then ``probe_lock`` lets one request at a time find out,
    so a burst of checks pays the 401 once.
    """

    def __init__(self) -> None:
        self.known = False
        self.challenge: Challenge | None = None
        self.probe_lock = asyncio.Lock()
        self._tokens: dict[str, Token] = {}
        self._pending: dict[str, asyncio.Future[Token]] = {}

    def learn(self, challenge: Challenge | None) -> None:
        """Remember the registry's latest challenge; None means no authentication."""
        self.challenge = challenge
        self.known = True

    async def token(
        self, scope: str, fetch: Callable[[str], Awaitable[Token]]
    ) -> tuple[Token, bool]:
        """A fresh token for ``scope``, and whether it came from the cache.

        Concurrent callers for one scope share one ``fetch``, and its failure.
        """
        cached = self._tokens.get(scope)
        if cached is not None and cached.is_fresh(monotonic()):
            return cached, True

        pending = self._pending.get(scope)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(scope, fetch))
            self._pending[scope] = pending
            pending.add_done_callback(lambda done: self._forget(scope, done))

        # Shielded: a cancelled caller must not cancel the fetch others wait for.
        return await asyncio.shield(pending), False

    async def _fetch(
        self, scope: str, fetch: Callable[[str], Awaitable[Token]]
    ) -> Token:
        token = await fetch(scope)
        self._tokens[scope] = token
        return token

    def _forget(self, scope: str, done: asyncio.Future[Token]) -> None:
        # A callback, not a finally: it runs even for a task cancelled before it ran.
        if self._pending.get(scope) is done:
            del self._pending[scope]

    def drop(self, token: Token) -> None:
        """Forget ``token`` after the registry refused it, unless already replaced."""
        if self._tokens.get(token.scope) is token:
            del self._tokens[token.scope]
