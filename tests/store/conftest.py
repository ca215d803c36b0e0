"""A store on a fresh database; ``database_url`` (tests/conftest.py) runs it on both."""

from __future__ import annotations

import pytest

from watcher.store import Store, open_store


@pytest.fixture
def store(database_url):
    opened: Store = open_store(database_url)
    yield opened
    opened.close()
