"""The database: an engine on a schema at this watcher's revision.

Opening an empty database creates the schema; one that is behind or ahead is
refused with the command that fixes it (``migrate.py``).
"""

from __future__ import annotations

from watcher.errors import StoreError
from watcher.store import migrate
from watcher.store.engine import engine_for, safe_url


class Database:
    """An engine whose database has the schema this watcher needs.

    Raises:
        StoreError: the URL or driver is wrong, the database is unreachable, or
            its schema is behind (run ``watcher db upgrade``) or ahead.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        try:
            migrate.require_current(self.engine, url)
        except StoreError:
            self.engine.dispose()
            raise

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs and errors."""
        return safe_url(self.url)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
