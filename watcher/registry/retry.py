"""When a registry request is retried, and how long the client waits first.

Pure policy: no I/O, no httpx, no imports from watcher outside this package. The
client sends, sleeps and logs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: A ``Retry-After`` up to this long is waited out; a longer one ends the request
#: at once, carrying the advice, so a check never holds its slot for minutes.
MAX_RETRY_AFTER_SECONDS = 60.0
#: Backoff for faults without advice: full jitter over 0.5 s, 1 s, 2 s ... 10 s.
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 10.0
#: Answers whose ``Retry-After`` is honoured.
RETRY_AFTER_STATUSES = frozenset({429, 503})
#: Transport faults that may pass: a TLS or DNS failure will not, unchanged.
RETRIED_FAULTS = frozenset({"connect", "timeout"})


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry to schedule: why (an ``errors.ERROR_REASONS`` value) and when."""

    reason: str
    delay_seconds: float


def backoff_ceiling(retry: int) -> float:
    """The longest wait before retry number ``retry`` (1 for the first)."""
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (retry - 1))


def backoff_delay(retry: int, fraction: float | None = None) -> float:
    """A wait drawn uniformly below ``backoff_ceiling`` ("full jitter").

    ``fraction`` in [0, 1) picks the point; None draws it at random, so clients
    that failed together do not retry together.
    """
    if fraction is None:
        fraction = random.random()  # noqa: S311 - jitter, not a secret

    return fraction * backoff_ceiling(retry)


def retry_for_status(
    status: int, retry_after: float | None, retry: int
) -> Retry | None:
    """The retry an answer with ``status`` earns, or None when it earns none.

    429 and 503 wait ``retry_after`` when given and at most
    ``MAX_RETRY_AFTER_SECONDS``, and are not retried past it; without advice they
    back off like any 5xx. Nothing below 500 but 429 is retried.
    """
    reason = "rate_limited" if status == 429 else "server_error"
    if status != 429 and status < 500:
        return None

    if status in RETRY_AFTER_STATUSES and retry_after is not None:
        if retry_after > MAX_RETRY_AFTER_SECONDS:
            return None
        return Retry(reason, retry_after)

    return Retry(reason, backoff_delay(retry))


def retry_for_fault(reason: str, retry: int) -> Retry | None:
    """The retry a request that got no answer earns, by its failure ``reason``."""
    if reason not in RETRIED_FAULTS:
        return None

    return Retry(reason, backoff_delay(retry))


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
