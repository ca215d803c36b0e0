"""The pull reserve: when a manifest GET may be spent."""

from __future__ import annotations

from watcher.registry.budget import Budget
from watcher.registry.ratelimit import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reading(remaining: int | None, window: int | None = 21600) -> RateLimit:
    return RateLimit(limit=100, remaining=remaining, window_seconds=window, source="ip")


def test_pulls_are_allowed_above_the_reserve_and_held_at_it() -> None:
    budget = Budget(Clock())
    budget.record("docker.io", reading(21))
    assert budget.allows_pull("docker.io", reserve=20)

    budget.record("docker.io", reading(20))
    assert not budget.allows_pull("docker.io", reserve=20)


def test_a_passed_window_allows_one_pull_to_read_the_budget_again() -> None:
    clock = Clock()
    budget = Budget(clock)
    budget.record("docker.io", reading(3))

    clock.now += 21599
    held = budget.allows_pull("docker.io", reserve=20)
    clock.now += 1
    allowed = budget.allows_pull("docker.io", reserve=20)

    assert (held, allowed) == (False, True)


def test_no_reserve_unknown_registry_or_no_count_never_hold_back() -> None:
    budget = Budget(Clock())
    budget.record("docker.io", reading(0))
    budget.record("ghcr.io", reading(None))

    assert budget.allows_pull("docker.io", reserve=0)
    assert budget.allows_pull("quay.io", reserve=20)
    assert budget.allows_pull("ghcr.io", reserve=20)


def test_a_reading_without_a_window_holds_until_a_new_reading() -> None:
    clock = Clock()
    budget = Budget(clock)
    budget.record("r.example", reading(1, window=None))
    clock.now += 10**6

    assert not budget.allows_pull("r.example", reserve=5)
