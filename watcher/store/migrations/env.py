"""Alembic's environment: runs watcher's migrations on the connection it is handed.

``watcher.store.migrate`` configures Alembic in code and passes an open
connection, inside its transaction, as ``config.attributes["connection"]``.
There is no alembic.ini, and no offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

from watcher.errors import StoreError
from watcher.store import models  # noqa: F401 - registers the tables


def run() -> None:
    """Run the migrations Alembic was asked for on the connection it was handed."""
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or not isinstance(connection, Connection):
        msg = "run watcher's migrations with `watcher db upgrade` (watcher.store.migrate.upgrade); there is no alembic.ini or offline mode"
        raise StoreError(msg)

    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite alters a table by copying it; batch mode writes migrations so.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run()
