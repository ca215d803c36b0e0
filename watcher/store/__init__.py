"""History storage: the only package that touches SQLModel and SQLAlchemy.

``AsyncStore`` runs every call on one dedicated thread, so database writes are
serialised (SQLite allows one writer) and never block the event loop. The
schema is migrated with Alembic: ``upgrade`` and ``schema_state`` (``migrate.py``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from watcher.store.db import Database
from watcher.store.history import (
    Change,
    CheckRecord,
    Current,
    ImageStatus,
    MessagesFor,
    Outcome,
    OwedMessage,
    PendingNotification,
    Period,
    PlatformChange,
    Recorded,
    Store,
)
from watcher.store.migrate import SchemaState, SchemaStatus, schema_state, upgrade

__all__ = [
    "AsyncStore",
    "Change",
    "CheckRecord",
    "Current",
    "Database",
    "ImageStatus",
    "MessagesFor",
    "Outcome",
    "OwedMessage",
    "PendingNotification",
    "Period",
    "PlatformChange",
    "Recorded",
    "SchemaState",
    "SchemaStatus",
    "Store",
    "open_store",
    "schema_state",
    "upgrade",
]

P = ParamSpec("P")
R = TypeVar("R")


def open_store(url: str) -> Store:
    """A ``Store`` on the database at ``url``; an empty one gets the schema first.

    Raises:
        StoreError: the schema is behind (run ``watcher db upgrade``) or ahead of
            this watcher, or the database cannot be opened.
    """
    return Store(Database(url))


class AsyncStore:
    """``Store`` for the event loop: each call runs on the one writer thread."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def call(
        self, method: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``method`` (a ``Store`` method) on the writer thread and await it."""
        loop = asyncio.get_running_loop()
        bound = functools.partial(method, *args, **kwargs)
        return await loop.run_in_executor(self._executor, bound)

    def close(self) -> None:
        """Finish queued writes, then close the database."""
        self._executor.shutdown(wait=True)
        self.sync.close()
