"""Docker Hub's pull budget, read from the ``ratelimit-*`` headers of a response.

Pure parsing: no I/O, no httpx. Limits differ by plan and change over time, so
they are read from every answer and never hard-coded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

LIMIT_HEADER = "ratelimit-limit"
REMAINING_HEADER = "ratelimit-remaining"
SOURCE_HEADER = "docker-ratelimit-source"

_COUNT = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The pull budget a registry announced; a field is None when it did not say."""

    limit: int | None
    remaining: int | None
    window_seconds: int | None
    #: The client IP or account the budget belongs to.
    source: str | None


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """The budget in ``headers`` (any case), or None when no rate-limit header is there.

    A value looks like ``100;w=21600``: 100 pulls per 21600-second window. Empty or
    garbled values give None fields; this never raises.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    if not {LIMIT_HEADER, REMAINING_HEADER, SOURCE_HEADER} & lowered.keys():
        return None

    limit, limit_window = _parse_quota(lowered.get(LIMIT_HEADER, ""))
    remaining, remaining_window = _parse_quota(lowered.get(REMAINING_HEADER, ""))
    source = lowered.get(SOURCE_HEADER, "").strip() or None
    window = limit_window if limit_window is not None else remaining_window
    return RateLimit(limit, remaining, window, source)


def _parse_quota(value: str) -> tuple[int | None, int | None]:
    """Count and window of ``100;w=21600``.

    The IETF draft allows a list (``100, 100;w=21600``): the first item's count is
    the one in force, and the first ``w=`` in the list is its window.
    """
    items = value.split(",")
    count = _count(items[0].split(";")[0])
    windows = (_window(item) for item in items)
    return count, next((window for window in windows if window is not None), None)


def _window(item: str) -> int | None:
    for parameter in item.split(";")[1:]:
        name, _, number = parameter.partition("=")
        if name.strip().lower() == "w":
            return _count(number)

    return None


def _count(text: str) -> int | None:
    text = text.strip()
    return int(text) if _COUNT.fullmatch(text) else None
