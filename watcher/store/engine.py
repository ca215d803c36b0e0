"""Engines: SQLite by default (WAL, foreign keys on), any SQLAlchemy URL.

The only module that creates engines; ``db.py`` and ``migrate.py`` both use it.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool
from sqlmodel import create_engine

from watcher.errors import StoreError

#: How long a connection waits for another process's write lock on SQLite.
BUSY_TIMEOUT_SECONDS = 5.0
_WAL_RETRY_SECONDS = 0.02


def safe_url(url: str) -> str:
    """``url`` with any password masked, for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<database_url that does not parse>"


def engine_for(url: str) -> Engine:
    """An engine for ``url``; raises StoreError for a bad URL or a missing driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        msg = f"database_url {url!r} is not an SQLAlchemy URL such as sqlite:///watcher.db"
        raise StoreError(msg) from exc

    try:
        if parsed.get_backend_name() != "sqlite":
            return create_engine(parsed, pool_pre_ping=True)
        # One writer thread and readers on other threads share the file; an
        # in-memory database lives in one connection, so all must share that.
        in_memory = parsed.database in (None, "", ":memory:")
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False},
            poolclass=StaticPool if in_memory else None,
        )
    except NoSuchModuleError as exc:
        msg = f"database_url {parsed.render_as_string()}: no driver for {parsed.drivername!r}; install it (for PostgreSQL: pip install 'watcher[postgres]')"
        raise StoreError(msg) from exc
    except ImportError as exc:
        msg = f"database_url {parsed.render_as_string()}: driver missing ({exc.name}); install it (for PostgreSQL: pip install 'watcher[postgres]')"
        raise StoreError(msg) from exc

    event.listen(engine, "connect", _tune_sqlite)
    return engine


def _tune_sqlite(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets `watcher history` read while `watcher run` writes.
    _use_wal(cursor)
    # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crash of
    # watcher loses nothing; a power cut may lose the last commits, never the
    # file's consistency. A change lost that way is seen again at the next check.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode, once, even with other processes connecting.

    Switching a new file to WAL needs it to itself, and SQLite answers "database
    is locked" at once, without its busy timeout, while another process (a
    replica starting beside this one) holds it: so wait and try again.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
            if mode.lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(_WAL_RETRY_SECONDS)
        else:
            return
