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
from typing import Generic, ParamSpec, TypeVar

from watcher.store.db import Database
from watcher.store.history import (
    Change,
    CheckRecord,
    Current,
    FirstSeen,
    ImageStatus,
    MessagesFor,
    Outcome,
    OwedMessage,
    PendingNotification,
    Period,
    PlatformChange,
    Recorded,
    Store,
    Unchanged,
)
from watcher.store.migrate import SchemaState, SchemaStatus, schema_state, upgrade

__all__ = [
    "AsyncStore",
    "Change",
    "CheckRecord",
    "Current",
    "Database",
    "FirstSeen",
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
    "Unchanged",
    "open_store",
    "schema_state",
    "upgrade",
]

P = ParamSpec("P")
#: A bound on one group commit, so that one transaction never holds the
#: database's write lock for long.
_ENTRIES_PER_TRANSACTION = 500
R = TypeVar("R")
T = TypeVar("T")


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
        self._unchanged = _GroupCommit(self, store.record_unchanged)
        self._first_seen = _GroupCommit(self, store.record_first_seen)

    async def record_unchanged(self, check: Unchanged) -> bool:
        """``Store.record_unchanged`` for one check, committed with its neighbours.

        Returns once the check is committed (see ``_GroupCommit``).
        """
        return await self._unchanged.submit(check)

    async def record_first_seen(self, check: FirstSeen) -> bool:
        """``Store.record_first_seen`` for one check, committed with its neighbours."""
        return await self._first_seen.submit(check)

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


class _GroupCommit(Generic[T]):
    """Writes that arrive while the writer is busy go together in its next transaction.

    A pass of a thousand checks then costs a few transactions instead of one
    each; a lone write waits for nothing. ``write`` takes a batch and says, for
    each entry, whether it was written (False: the caller takes the slow path).
    """

    def __init__(
        self, store: AsyncStore, write: Callable[[list[T]], list[bool]]
    ) -> None:
        self._store = store
        self._write = write
        self._queue: list[tuple[T, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, entry: T) -> bool:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        self._queue.append((entry, done))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:_ENTRIES_PER_TRANSACTION]
                del self._queue[:_ENTRIES_PER_TRANSACTION]
                try:
                    written = await self._store.call(
                        self._write, [entry for entry, _ in batch]
                    )
                except Exception as exc:  # noqa: BLE001 - handed to every waiter
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for (_, done), ok in zip(batch, written, strict=True):
                    if not done.done():
                        done.set_result(ok)
        finally:
            self._flusher = None
