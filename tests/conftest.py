"""Shared fixtures: the asyncio backend and a fresh database on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

pytest_plugins = ["tests.fixtures"]

POSTGRES_ADMIN = os.environ.get(
    "WATCHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def anyio_backend():
    """Async tests run on asyncio, the loop watcher itself runs on."""
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_kind(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on; each test using it runs on both."""
    kind: str = request.param
    return kind


@pytest.fixture
def new_database_url(database_kind: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Make an empty database of ``database_kind`` per call; all dropped afterwards."""
    made: list[str] = []
    admin = None
    if database_kind == "postgresql":
        try:
            admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN} is not reachable: {exc}")

    def new() -> str:
        name = f"watcher_test_{uuid.uuid4().hex[:12]}"
        if admin is None:
            return f"sqlite:///{tmp_path / name}.db"
        admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        base = POSTGRES_ADMIN.rsplit("/", 1)[0]
        return f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"

    yield new
    if admin is not None:
        with admin:
            for name in made:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(new_database_url: Callable[[], str]) -> str:
    """An empty database: a file in ``tmp_path``, or a new PostgreSQL database."""
    return new_database_url()
