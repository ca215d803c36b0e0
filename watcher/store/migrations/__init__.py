"""Alembic migrations of watcher's schema, run by ``watcher.store.migrate``.

Each file in ``versions/`` takes the schema one step forward and never changes
once released: ``0001`` is the first schema, ``0002`` adds platform watches and
the outbox's claim lease, ``0003`` adds check records. A new step copies the
newest file, sets ``revision`` and ``down_revision``, appends the revision to
``migrate.REVISIONS`` and changes ``models.py`` to match;
``tests/store/test_migrations.py`` fails until all three agree.

Migrations only go forward: to go back, restore the backup taken before the
upgrade.
"""

from __future__ import annotations

from watcher.errors import StoreError


def forward_only(revision: str) -> None:
    """Refuse to downgrade ``revision``: watcher's migrations only go forward."""
    msg = f"downgrade schema {revision}: watcher's migrations only go forward; restore the backup taken before the upgrade"
    raise StoreError(msg)
