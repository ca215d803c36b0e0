"""Schema migrations: where a database's schema stands, and bringing it to head.

Alembic runs the scripts in ``migrations/``, configured here in code, so no
alembic.ini is needed. A database made before watcher had migrations (its
tables made by ``create_all``, no ``alembic_version`` table) is recognised by
its columns as schema 0001 or 0002 and stamped so when it is upgraded.

Alembic is imported only to upgrade: where a schema stands is read from the
``alembic_version`` table and ``REVISIONS``, so a watcher opening a database
already at head starts without loading Alembic, which costs time and memory.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from watcher.errors import StoreError
from watcher.logs import get_logger
from watcher.store import models  # noqa: F401 - registers the tables
from watcher.store.engine import engine_for, safe_url

if TYPE_CHECKING:
    from alembic.config import Config

log = get_logger("watcher.store")

_MIGRATIONS = Path(__file__).with_name("migrations")

#: Every revision in ``migrations/versions/``, oldest first; the last is head.
#: A new migration adds its revision here: tests/store/test_migrations.py fails
#: until this matches Alembic's own reading of the scripts.
REVISIONS = ("0001", "0002", "0003")

#: Alembic's version table, under the default name watcher's migrations keep, as
#: Alembic creates it: read by ``_revision``, created by ``_create_at_head``.
_VERSION_TABLE = sa.Table(
    "alembic_version",
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)

#: Two processes starting on one empty PostgreSQL database (two replicas) would
#: both create the tables; this transaction-scoped advisory lock makes one wait.
_POSTGRES_LOCK_KEY = 0x7761746368657201

#: The columns ``create_all`` made, per table, before watcher had migrations.
#: Frozen like the migrations themselves: never edit an entry.
_SCHEMA_0001: Mapping[str, frozenset[str]] = {
    "image": frozenset(
        {
            "id",
            "reference",
            "registry_name",
            "repository",
            "tag",
            "created_at",
            "last_check_at",
            "last_outcome",
            "last_error_reason",
            "last_error",
            "last_change_at",
        }
    ),
    "digest_period": frozenset(
        {
            "id",
            "image_id",
            "digest",
            "media_type",
            "first_seen",
            "last_seen",
            "ended_at",
        }
    ),
    "notification": frozenset(
        {
            "id",
            "period_id",
            "target",
            "title",
            "body",
            "status",
            "attempts",
            "created_at",
            "next_attempt_at",
            "delivered_at",
            "last_error",
        }
    ),
}
_SCHEMA_0002: Mapping[str, frozenset[str]] = {
    **_SCHEMA_0001,
    "image": _SCHEMA_0001["image"] | {"platform", "source_digest"},
    "notification": _SCHEMA_0001["notification"] | {"claimed_until"},
    "platform_digest": frozenset(
        {"id", "period_id", "platform", "digest", "media_type"}
    ),
    "manifest": frozenset({"digest", "media_type", "body", "fetched_at"}),
}
#: Newest first: a database matching 0002 is not taken for 0001.
_UNVERSIONED = {"0002": _SCHEMA_0002, "0001": _SCHEMA_0001}


class SchemaStatus(enum.StrEnum):
    """Where a database's schema stands against the one this watcher needs."""

    EMPTY = "empty"  # no watcher tables yet: upgrading creates them
    CURRENT = "current"
    BEHIND = "behind"  # `watcher db upgrade` brings it to head
    AHEAD = "ahead"  # a newer watcher upgraded it; this one cannot use it


@dataclass(frozen=True, slots=True)
class SchemaState:
    """A database's schema revision and this watcher's newest (``head``).

    ``revision`` is None for an empty database. ``unversioned`` is True when
    the revision was recognised from the tables of a database made before
    watcher had migrations; upgrading stamps it first.
    """

    status: SchemaStatus
    revision: str | None
    head: str
    unversioned: bool = False


def head() -> str:
    """The schema revision this watcher's models need."""
    return REVISIONS[-1]


def schema_state(url: str) -> SchemaState:
    """Where the schema of the database at ``url`` stands; changes nothing.

    Raises:
        StoreError: the database cannot be reached, or it holds watcher tables
            that match no schema watcher ever made.
    """
    engine = engine_for(url)
    try:
        with _translated("read the schema revision of", url), engine.connect() as conn:
            return _state(conn, url)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str]:
    """Migrate the database at ``url`` to ``revision``; return (from, to) revisions.

    ``from`` is None for an empty database. Upgrading a database already at
    ``revision`` changes nothing and returns it twice.

    Raises:
        StoreError: the database is ahead of this watcher, is unreachable, or a
            migration failed (its transaction is rolled back on PostgreSQL).
    """
    engine = engine_for(url)
    try:
        return _upgrade_engine(engine, url, revision)
    finally:
        engine.dispose()


def _upgrade_engine(
    engine: Engine, url: str, revision: str = "head"
) -> tuple[str | None, str]:
    """``upgrade`` on an engine the caller keeps open."""
    # Imported here, not above: only an upgrade needs Alembic (module docstring).
    from alembic import command
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    with (
        _translated("upgrade the schema of", url, CommandError, RevisionError),
        _locked(engine) as conn,
    ):
        state = _state(conn, url)
        if state.status is SchemaStatus.AHEAD:
            raise StoreError(_ahead_message(url, state))

        config = _config(conn)
        if state.unversioned:
            assert state.revision is not None  # noqa: S101 - recognised from the tables
            command.stamp(config, state.revision)
        command.upgrade(config, revision)
        reached = _revision(conn)

    assert reached is not None  # noqa: S101 - an upgrade always stamps
    if reached != state.revision:
        log.info(
            "schema.upgraded",
            database=safe_url(url),
            from_revision=state.revision,
            to_revision=reached,
        )
    return state.revision, reached


def require_current(engine: Engine, url: str) -> None:
    """Give an empty database the schema at head; refuse one behind or ahead.

    The schema is read and, if missing, created under the upgrade lock: of
    replicas starting together on an empty database, one creates it and the
    others find it made, never half made.

    Raises:
        StoreError: the schema is behind (the message names ``watcher db
            upgrade``) or ahead of this watcher, or the database is unreachable.
    """
    with _translated("open", url), _locked(engine) as conn:
        state = _state(conn, url)
        if state.status is SchemaStatus.EMPTY:
            _create_at_head(conn)

    match state.status:
        case SchemaStatus.EMPTY:
            log.info(
                "schema.upgraded",
                database=safe_url(url),
                from_revision=None,
                to_revision=state.head,
            )
        case SchemaStatus.CURRENT:
            return
        case SchemaStatus.BEHIND:
            msg = f"database {safe_url(url)} is at schema {state.revision}, this watcher needs {state.head}; run: watcher db upgrade"
            raise StoreError(msg)
        case SchemaStatus.AHEAD:
            raise StoreError(_ahead_message(url, state))


def _create_at_head(conn: Connection) -> None:
    """The schema at head in an empty database: the models' tables, stamped.

    What running every migration makes (tests/store/test_migrations.py compares
    the two), without loading Alembic, so that a first start stays quick.
    """
    SQLModel.metadata.create_all(conn)
    _VERSION_TABLE.create(conn)
    conn.execute(_VERSION_TABLE.insert().values(version_num=head()))


def _state(conn: Connection, url: str) -> SchemaState:
    newest = head()
    revision = _revision(conn)
    if revision is None:
        found = _columns(conn)
        if not found:
            return SchemaState(SchemaStatus.EMPTY, None, newest)
        return SchemaState(
            SchemaStatus.BEHIND, _recognise(found, url), newest, unversioned=True
        )

    if revision not in REVISIONS:
        return SchemaState(SchemaStatus.AHEAD, revision, newest)
    status = SchemaStatus.CURRENT if revision == newest else SchemaStatus.BEHIND
    return SchemaState(status, revision, newest)


def _revision(conn: Connection) -> str | None:
    """The revision in ``alembic_version``, read as Alembic reads it."""
    if not inspect(conn).has_table(_VERSION_TABLE.name):
        return None

    heads = conn.execute(sa.select(_VERSION_TABLE.c.version_num)).scalars().all()
    if len(heads) > 1:
        msg = f"alembic_version holds several revisions ({', '.join(heads)}); watcher's schema history has one line, so this table was written by something else"
        raise StoreError(msg)
    return heads[0] if heads else None


def _columns(conn: Connection) -> dict[str, frozenset[str]]:
    """The columns of each watcher table present; other tables are not ours."""
    inspector = inspect(conn)
    ours = set(SQLModel.metadata.tables) & set(inspector.get_table_names())
    return {
        table: frozenset(column["name"] for column in inspector.get_columns(table))
        for table in ours
    }


def _recognise(found: Mapping[str, frozenset[str]], url: str) -> str:
    for revision, columns in _UNVERSIONED.items():
        if found == columns:
            return revision

    differences = "; ".join(_differences(found, _SCHEMA_0002)) or "none"
    msg = f"database {safe_url(url)} has watcher tables but no schema revision, and they match no schema watcher made before migrations (0001, 0002); against 0002: {differences}; point database_url at watcher's own database or an empty one"
    raise StoreError(msg)


def _differences(
    found: Mapping[str, frozenset[str]], expected: Mapping[str, frozenset[str]]
) -> list[str]:
    lines = []
    for table in sorted(expected.keys() | found.keys()):
        missing = sorted(
            expected.get(table, frozenset()) - found.get(table, frozenset())
        )
        extra = sorted(found.get(table, frozenset()) - expected.get(table, frozenset()))
        if table not in found:
            lines.append(f"table {table} missing")
        elif table not in expected:
            lines.append(f"unexpected table {table}")
        else:
            lines += [f"{table}.{name} missing" for name in missing]
            lines += [f"unexpected {table}.{name}" for name in extra]
    return lines


def _ahead_message(url: str, state: SchemaState) -> str:
    return f"database {safe_url(url)} is at schema {state.revision}, which this watcher does not know (it needs {state.head}): a newer watcher upgraded it; run that version or a newer one"


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other upgrade runs beside.

    The caller reads the revision inside it, so of two processes upgrading one
    database the second finds the first's work done. On SQLite the transaction
    also makes the migration's DDL all-or-nothing.
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                lock = text("SELECT pg_advisory_xact_lock(:key)")
                conn.execute(lock, {"key": _POSTGRES_LOCK_KEY})
            yield conn
        return

    # pysqlite opens transactions only before DML, and never with the write
    # lock taken; with its own transaction handling off, BEGIN IMMEDIATE takes
    # the lock now (waiting out busy_timeout) and covers the DDL too.
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            # SQLite ends the transaction itself on some errors (disk full).
            sqlite = conn.connection.driver_connection
            if sqlite is not None and sqlite.in_transaction:
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")


def _config(conn: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = conn
    return config


@contextlib.contextmanager
def _translated(action: str, url: str, *faults: type[Exception]) -> Iterator[None]:
    """Turn database faults and ``faults`` into StoreError naming the action and URL."""
    caught: tuple[type[Exception], ...] = (SQLAlchemyError, *faults)
    try:
        yield
    except caught as exc:
        reason = exc.args[0] if exc.args else exc
        msg = f"{action} database {safe_url(url)}: {exc.__class__.__name__}: {reason}"
        raise StoreError(msg) from exc
