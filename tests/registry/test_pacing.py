"""Pacing: requests to one registry start at most ``rate`` a second."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes.registry import FakeRegistry, RecordingSleep, client_for
from watcher.reference import Reference
from watcher.registry.pacing import Pacer

pytestmark = pytest.mark.anyio


async def test_callers_at_once_are_given_evenly_spaced_slots() -> None:
    sleep = RecordingSleep()
    pacer = Pacer(4.0, sleep, clock=lambda: 100.0)

    await asyncio.gather(*(pacer.wait() for _ in range(5)))

    assert sleep.delays == [0.25, 0.5, 0.75, 1.0]


async def test_no_rate_means_no_waiting() -> None:
    sleep = RecordingSleep()

    await asyncio.gather(*(Pacer(None, sleep).wait() for _ in range(5)))

    assert sleep.delays == []


async def test_the_client_paces_each_registry_by_its_rate() -> None:
    fake = FakeRegistry()
    for tag in range(6):
        fake.add(f"acme/api:{tag}")
    sleep = RecordingSleep()

    async with client_for(fake, sleep=sleep, rate=10.0) as client:
        await asyncio.gather(
            *(
                client.head_manifest(Reference.parse(f"ghcr.io/acme/api:{tag}"))
                for tag in range(6)
            )
        )

    assert len(fake.heads) == 6
    assert len(sleep.delays) == 5
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5], abs=0.05)
