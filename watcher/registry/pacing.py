"""Pacing: at most so many requests a second to one registry.

Concurrency bounds how many requests are in flight; pacing bounds how fast they
start, for registries that throttle bursts (or whose operators ask politely).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


class Pacer:
    """Hands out evenly spaced start times, ``rate`` a second; None: no limit."""

    def __init__(
        self,
        rate: float | None,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gap = 1.0 / rate if rate else 0.0
        self._sleep = sleep
        self._clock = clock
        self._next = 0.0

    async def wait(self) -> None:
        """Return when this request may start: at its slot, not before."""
        if not self._gap:
            return
        now = self._clock()
        # The slot is taken before the await, so concurrent callers queue up.
        slot = max(now, self._next)
        self._next = slot + self._gap
        if slot > now:
            await self._sleep(slot - now)
