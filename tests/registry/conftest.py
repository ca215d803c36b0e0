from __future__ import annotations

import pytest

from tests.fakes.registry import FakeClock, FakeRegistry, RecordingObserver
from watcher.registry import auth


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The clock token lifetimes are measured with, under the test's control."""
    fake = FakeClock()
    monkeypatch.setattr(auth, "monotonic", fake)
    return fake


@pytest.fixture
def fake_registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()
