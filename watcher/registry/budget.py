"""The pull budget: what a registry says is left, and what watcher leaves alone.

Docker Hub meters manifest GETs per IP or account, and the budget is shared with
every `docker pull` of the same user. With a ``reserve`` configured, watcher
makes no manifest GET while the last reading says that many or fewer pulls are
left, until the reported window has passed since that reading. HEADs cost
nothing there and always go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from watcher.registry.ratelimit import RateLimit


@dataclass(frozen=True, slots=True)
class _Reading:
    remaining: int
    window_seconds: int | None
    at: float


class Budget:
    """The last rate-limit reading of each registry, and the reserve rule."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._readings: dict[str, _Reading] = {}

    def record(self, registry: str, rate_limit: RateLimit) -> None:
        """Remember a reading; one without a remaining count changes nothing."""
        if rate_limit.remaining is not None:
            reading = _Reading(
                rate_limit.remaining, rate_limit.window_seconds, self._clock()
            )
            self._readings[registry] = reading

    def allows_pull(self, registry: str, reserve: int) -> bool:
        """True unless the last reading left ``reserve`` pulls or fewer, in its window."""
        reading = self._readings.get(registry)
        if reserve <= 0 or reading is None or reading.remaining > reserve:
            return True
        window = reading.window_seconds
        return window is not None and self._clock() - reading.at >= window
