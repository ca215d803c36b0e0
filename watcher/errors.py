"""Every exception watcher raises, in one tree.

This module imports nothing else from watcher, so any module may import it.

    WatcherError
    ├── ConfigError              bad configuration file; carries one line per problem
    ├── InvalidReference         an image reference that does not parse
    ├── StoreError               the database failed or holds something unexpected
    ├── NotifyError              a notification could not be delivered
    ├── ListenError              the /metrics server could not listen on its address
    └── RegistryError            a registry request failed; carries method, url, status
        ├── AuthError            401/403, or a token exchange that failed
        ├── NotFound             404: no such repository or tag
        ├── RateLimited          429: the registry's pull budget is spent
        ├── RegistryUnavailable  connection, DNS, TLS, timeout or 5xx: try again later
        ├── PullsReserved        a manifest GET held back to keep the pull reserve
        ├── ProtocolViolation    an answer the distribution spec does not allow
        └── UnsupportedManifest  a manifest type watcher refuses to record (schema1)

Handlers branch on the class and its fields, never on the message text. Each
``RegistryError`` has a ``reason``: a short, closed-set word used as a metric label.
"""

from __future__ import annotations

from collections.abc import Sequence


class WatcherError(Exception):
    """Base class of every error watcher raises on purpose."""


class ConfigError(WatcherError):
    """The configuration file is invalid; ``problems`` holds one line per problem."""

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"invalid configuration {path}:\n{lines}")


class InvalidReference(WatcherError, ValueError):
    """An image reference does not parse; the message quotes it and says why."""

    def __init__(self, text: str, why: str) -> None:
        self.text = text
        self.why = why
        super().__init__(f"parse reference {text!r}: {why}")


class StoreError(WatcherError):
    """The database could not be read or written."""


class NotifyError(WatcherError):
    """A notification target refused or could not be reached."""

    def __init__(self, target: str, message: str) -> None:
        self.target = target
        super().__init__(f"notify {target}: {message}")


class ListenError(WatcherError):
    """The HTTP server for /metrics could not bind its address."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        super().__init__(
            f"listen on {address}: {reason}; stop whatever holds it, or change "
            "listen in the configuration"
        )


class RegistryError(WatcherError):
    """A registry request failed.

    ``url`` is already redacted (no credentials, no query string) and safe to log.
    ``transient`` says whether the same request may succeed later unchanged;
    ``retry_after`` is the registry's advice in seconds, when it gave some.
    """

    reason = "error"
    transient = False

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        status: int | None = None,
        codes: Sequence[str] = (),
        retry_after: float | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.codes = tuple(codes)
        self.retry_after = retry_after
        super().__init__(message)


class AuthError(RegistryError):
    """The registry refused our credentials, or the token exchange failed."""

    reason = "auth"


class NotFound(RegistryError):
    """The repository or tag does not exist (or is hidden from these credentials)."""

    reason = "not_found"


class RateLimited(RegistryError):
    """The registry answered 429; ``retry_after`` is in seconds when it said."""

    reason = "rate_limited"
    transient = True


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or answered 5xx.

    ``reason`` narrows it down for metrics: ``dns``, ``connect``, ``tls``,
    ``timeout`` or ``server_error``.
    """

    transient = True

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        reason: str,
        status: int | None = None,
        codes: Sequence[str] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            method=method,
            url=url,
            status=status,
            codes=codes,
            retry_after=retry_after,
        )
        self.reason = reason


class PullsReserved(RegistryError):
    """A manifest GET was not made: the registry's pull budget is at the reserve."""

    reason = "budget"
    transient = True


class ProtocolViolation(RegistryError):
    """The registry answered in a way the distribution spec does not allow."""

    reason = "protocol"


class UnsupportedManifest(RegistryError):
    """The registry served a manifest type whose digest watcher will not record."""

    reason = "unsupported"


#: Every reason a check can fail for: ``RegistryError.reason`` values, ``store``
#: when the history could not be written, and ``internal`` for bugs.
ERROR_REASONS = (
    "auth",
    "not_found",
    "rate_limited",
    "dns",
    "connect",
    "tls",
    "timeout",
    "server_error",
    "protocol",
    "unsupported",
    "budget",
    "error",
    "store",
    "internal",
)
