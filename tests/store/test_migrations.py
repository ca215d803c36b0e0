"""Alembic migrations: the upgraded schema is the models', and no row is lost.

Every test runs on SQLite and on PostgreSQL. ``schemas/`` holds the statements
``create_all`` ran before watcher had migrations, so the old databases here are
the ones users really have.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel
from structlog.testing import capture_logs

from watcher.errors import StoreError
from watcher.manifests import PlatformManifest
from watcher.reference import Digest, Platform, Reference
from watcher.store import (
    OwedMessage,
    SchemaState,
    SchemaStatus,
    open_store,
    schema_state,
    upgrade,
)
from watcher.store.migrate import REVISIONS

HEAD = "0003"
SCHEMAS = Path(__file__).with_name("schemas")
REPOSITORY = Path(__file__).parents[2]
MIGRATIONS = REPOSITORY / "watcher" / "store" / "migrations"

# Imports first, then opens the store the moment the test says go, so that the
# processes really open the database together.
OPEN_ON_GO = """
import sys
from watcher.store import open_store
print("ready", flush=True)
sys.stdin.readline()
open_store(sys.argv[1]).close()
"""

OPEN_AND_LIST_ALEMBIC = """
import sys
from watcher.store import open_store
open_store(sys.argv[1]).close()
print(sorted(name for name in sys.modules if name.split(".")[0] == "alembic"))
"""

IMAGE = Reference.parse("ghcr.io/acme/api:stable")
OLD = Digest.parse("sha256:" + "1" * 64)
NEW = Digest.parse("sha256:" + "2" * 64)
NEWEST = Digest.parse("sha256:" + "3" * 64)
AMD64 = Digest.parse("sha256:" + "4" * 64)
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def execute(url, *statements, **params):
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


def create_as_before_migrations(url, revision):
    """Run what ``create_all`` ran at ``revision``'s time, as saved in schemas/."""
    dialect = make_url(url).get_backend_name()
    lines = (SCHEMAS / f"{revision}_{dialect}.sql").read_text().splitlines()
    script = "\n".join(line for line in lines if not line.startswith("--"))
    execute(url, *(s for s in script.split(";") if s.strip()))


def reflected(url):
    """Every table's columns, keys, indexes and constraints, as the database has them."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            tables = set(inspector.get_table_names()) - {"alembic_version"}
            return {table: _reflect_table(inspector, table) for table in tables}
    finally:
        engine.dispose()


def _reflect_table(inspector, table):
    dialect = inspector.dialect
    return {
        "columns": {
            c["name"]: (str(c["type"].compile(dialect=dialect)), c["nullable"])
            for c in inspector.get_columns(table)
        },
        "defaults": {c["name"]: c["default"] for c in inspector.get_columns(table)},
        "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
        "foreign_keys": sorted(
            (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
            for fk in inspector.get_foreign_keys(table)
        ),
        "indexes": sorted(
            (
                ix["name"],
                ix["column_names"],
                bool(ix["unique"]),
                {k: str(v) for k, v in ix.get("dialect_options", {}).items()},
            )
            for ix in inspector.get_indexes(table)
        ),
        "unique": sorted(
            (str(u["name"]), u["column_names"])
            for u in inspector.get_unique_constraints(table)
        ),
    }


def revision_of(url):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT version_num FROM alembic_version")
            ).all()
    finally:
        engine.dispose()


def alembic_config(conn):
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


class TestSchema:
    def test_revisions_are_the_migration_scripts_in_order(self):
        """``REVISIONS`` stands in for Alembic at start-up, so it must not drift."""
        scripts = ScriptDirectory(str(MIGRATIONS))

        oldest_first = [s.revision for s in reversed(list(scripts.walk_revisions()))]

        assert tuple(oldest_first) == REVISIONS
        assert scripts.get_current_head() == REVISIONS[-1] == HEAD

    def test_upgraded_schema_matches_the_models(self, database_url):
        """Alembic's own comparison finds nothing to add, drop or alter."""
        upgrade(database_url)

        engine = sa.create_engine(database_url)
        with engine.connect() as conn:
            differences = compare_metadata(
                MigrationContext.configure(conn), SQLModel.metadata
            )
        engine.dispose()
        assert differences == []

    def test_upgraded_schema_is_the_one_create_all_makes(self, new_database_url):
        """Down to partial index conditions and defaults, which Alembic does not compare."""
        migrated, created = new_database_url(), new_database_url()
        upgrade(migrated)
        engine = sa.create_engine(created)
        SQLModel.metadata.create_all(engine)
        engine.dispose()

        assert reflected(migrated) == reflected(created)

    @pytest.mark.parametrize("revision", ["0001", "0002"])
    def test_each_revision_is_the_schema_watcher_had_then(
        self, new_database_url, revision
    ):
        migrated, made_then = new_database_url(), new_database_url()
        upgrade(migrated, revision)
        create_as_before_migrations(made_then, revision)

        assert reflected(migrated) == reflected(made_then)


class TestOpen:
    def test_empty_database_gets_the_schema_when_opened(self, database_url):
        """`make run` on a fresh machine: no upgrade command needed."""
        with capture_logs() as logs:
            open_store(database_url).close()

        assert schema_state(database_url) == SchemaState(
            SchemaStatus.CURRENT, HEAD, HEAD
        )
        (event,) = [e for e in logs if e["event"] == "schema.upgraded"]
        assert (event["from_revision"], event["to_revision"]) == (None, HEAD)

    def test_schema_made_on_opening_is_the_migrated_one(self, new_database_url):
        """An empty database gets the models' tables, stamped at head, not the scripts."""
        opened, migrated = new_database_url(), new_database_url()
        open_store(opened).close()
        upgrade(migrated)

        assert reflected(opened) == reflected(migrated)
        # Alembic reads the stamp as its own: nothing left to upgrade.
        assert upgrade(opened) == (HEAD, HEAD)
        assert schema_state(opened) == SchemaState(SchemaStatus.CURRENT, HEAD, HEAD)

    def test_database_at_head_opens_without_importing_alembic(self, database_url):
        """Start-up does not pay for Alembic, which only an upgrade needs."""
        upgrade(database_url)

        opened = subprocess.run(
            [sys.executable, "-c", OPEN_AND_LIST_ALEMBIC, database_url],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert opened.returncode == 0, opened.stderr
        assert opened.stdout == "[]\n"

    def test_database_behind_is_refused_with_the_command_that_fixes_it(
        self, database_url
    ):
        upgrade(database_url, "0002")

        with pytest.raises(StoreError) as raised:
            open_store(database_url)

        assert str(raised.value) == (
            f"database {database_url} is at schema 0002, this watcher needs "
            f"{HEAD}; run: watcher db upgrade"
        )
        assert revision_of(database_url) == [("0002",)]

    def test_database_ahead_is_refused(self, database_url):
        """A newer watcher upgraded it: neither opening nor upgrading touches it."""
        upgrade(database_url)
        execute(database_url, "UPDATE alembic_version SET version_num = '0099'")

        with pytest.raises(StoreError, match="a newer watcher upgraded it") as raised:
            open_store(database_url)
        with pytest.raises(StoreError, match="at schema 0099"):
            upgrade(database_url)

        assert "at schema 0099, which this watcher does not know" in str(raised.value)
        assert schema_state(database_url).status is SchemaStatus.AHEAD
        assert revision_of(database_url) == [("0099",)]

    @pytest.mark.parametrize("database_kind", ["postgresql"])
    def test_schema_errors_mask_the_password(self, database_url):
        with_password = database_url.replace("postgres@", "postgres:hunter2@")
        upgrade(with_password, "0001")

        with pytest.raises(StoreError) as raised:
            open_store(with_password)

        assert "hunter2" not in str(raised.value)
        assert "postgres:***@" in str(raised.value)


class TestUpgrade:
    def test_upgrade_reports_the_revisions_it_went_between(self, database_url):
        assert upgrade(database_url, "0001") == (None, "0001")
        assert upgrade(database_url) == ("0001", HEAD)
        assert upgrade(database_url) == (HEAD, HEAD)
        assert revision_of(database_url) == [(HEAD,)]

    def test_processes_opening_one_empty_database_at_once_all_start(self, database_url):
        """Replicas starting together: one creates the schema, the others wait."""
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_ON_GO, database_url],
                cwd=REPOSITORY,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        stderrs = [process.communicate(timeout=60)[1] for process in processes]

        assert [process.returncode for process in processes] == [0] * 3, stderrs
        assert revision_of(database_url) == [(HEAD,)]

    def test_a_failed_migration_leaves_the_database_where_it_was(self, database_url):
        """An upgrade is one transaction: 0003 failing half-way leaves no trace."""
        upgrade(database_url, "0002")
        # Takes the name of 0003's second statement, an index.
        execute(database_url, "CREATE INDEX ix_check_record_checked_at ON image (tag)")

        with pytest.raises(StoreError, match="upgrade the schema of database"):
            upgrade(database_url)

        assert revision_of(database_url) == [("0002",)]
        assert "check_record" not in reflected(database_url)

    def test_downgrade_is_refused(self, database_url):
        upgrade(database_url)
        engine = sa.create_engine(database_url)

        with (
            pytest.raises(StoreError, match="only go forward"),
            engine.begin() as conn,
        ):
            command.downgrade(alembic_config(conn), "0002")

        engine.dispose()
        assert revision_of(database_url) == [(HEAD,)]

    def test_alembic_without_watcher_connection_is_refused(self, database_url):
        """`alembic upgrade` from a shell would bypass the lock and the stamping."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", database_url)

        with pytest.raises(StoreError, match="watcher db upgrade"):
            command.upgrade(config, "head")

        assert schema_state(database_url).status is SchemaStatus.EMPTY


class TestDatabaseMadeBeforeMigrations:
    @pytest.mark.parametrize("revision", ["0001", "0002"])
    def test_schema_is_recognised_and_upgraded(self, database_url, revision):
        create_as_before_migrations(database_url, revision)
        execute(
            database_url,
            "INSERT INTO image (reference, registry_name, repository, tag, created_at)"
            " VALUES ('ghcr.io/acme/api:stable', 'ghcr.io', 'acme/api', 'stable',"
            " CURRENT_TIMESTAMP)",
        )

        assert schema_state(database_url) == SchemaState(
            SchemaStatus.BEHIND, revision, HEAD, unversioned=True
        )
        with pytest.raises(StoreError, match=f"is at schema {revision}, this watcher"):
            open_store(database_url)
        assert upgrade(database_url) == (revision, HEAD)

        store = open_store(database_url)
        try:
            assert [s.reference for s in store.statuses()] == [str(IMAGE)]
        finally:
            store.close()
        assert revision_of(database_url) == [(HEAD,)]

    def test_tables_matching_no_schema_are_refused_and_left_alone(self, database_url):
        """Half of schema 0002's changes: no revision fits, so none is guessed."""
        create_as_before_migrations(database_url, "0001")
        execute(database_url, "ALTER TABLE image ADD COLUMN platform VARCHAR(64)")

        with pytest.raises(StoreError) as raised:
            schema_state(database_url)
        with pytest.raises(StoreError):
            upgrade(database_url)

        message = str(raised.value)
        assert "match no schema watcher made before migrations" in message
        assert "image.source_digest missing" in message
        assert "table platform_digest missing" in message
        assert "alembic_version" not in reflected(database_url)

    def test_other_applications_tables_leave_a_database_empty(self, database_url):
        execute(database_url, "CREATE TABLE someone_else (id INTEGER PRIMARY KEY)")

        assert schema_state(database_url).status is SchemaStatus.EMPTY
        open_store(database_url).close()
        assert schema_state(database_url).status is SchemaStatus.CURRENT


def insert_0001_rows(url):
    """An image changed once; one message delivered, one owed (the 0001 schema)."""
    image = sa.table(
        "image",
        *(sa.column(name) for name in ("id", "reference", "registry_name")),
        *(sa.column(name) for name in ("repository", "tag", "last_outcome")),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("last_check_at", sa.DateTime(timezone=True)),
        sa.column("last_change_at", sa.DateTime(timezone=True)),
    )
    period = sa.table(
        "digest_period",
        *(sa.column(name) for name in ("id", "image_id", "digest", "media_type")),
        sa.column("first_seen", sa.DateTime(timezone=True)),
        sa.column("last_seen", sa.DateTime(timezone=True)),
        sa.column("ended_at", sa.DateTime(timezone=True)),
    )
    notification = sa.table(
        "notification",
        *(sa.column(name) for name in ("id", "period_id", "target", "title")),
        *(sa.column(name) for name in ("body", "status", "attempts")),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.column("delivered_at", sa.DateTime(timezone=True)),
    )
    changed = T0 + timedelta(days=3)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            image.insert().values(
                id=1,
                reference=str(IMAGE),
                registry_name="ghcr.io",
                repository="acme/api",
                tag="stable",
                last_outcome="unchanged",
                created_at=T0,
                last_check_at=changed + timedelta(hours=1),
                last_change_at=changed,
            )
        )
        conn.execute(
            period.insert(),
            [
                {
                    "id": 1,
                    "image_id": 1,
                    "digest": str(OLD),
                    "media_type": INDEX,
                    "first_seen": T0,
                    "last_seen": changed - timedelta(hours=1),
                    "ended_at": changed,
                },
                {
                    "id": 2,
                    "image_id": 1,
                    "digest": str(NEW),
                    "media_type": INDEX,
                    "first_seen": changed,
                    "last_seen": changed + timedelta(hours=1),
                    "ended_at": None,
                },
            ],
        )
        conn.execute(
            notification.insert(),
            [
                {
                    "id": 1,
                    "period_id": 2,
                    "target": "ops",
                    "title": "api changed",
                    "body": f"{OLD} -> {NEW}",
                    "status": "delivered",
                    "attempts": 1,
                    "created_at": changed,
                    "next_attempt_at": changed,
                    "delivered_at": changed + timedelta(seconds=2),
                },
                {
                    "id": 2,
                    "period_id": 2,
                    "target": "dev",
                    "title": "api changed",
                    "body": f"{OLD} -> {NEW}",
                    "status": "pending",
                    "attempts": 3,
                    "created_at": changed,
                    "next_attempt_at": changed + timedelta(minutes=10),
                    "delivered_at": None,
                },
            ],
        )
    if engine.dialect.name == "postgresql":
        # Rows inserted with explicit ids leave the sequences behind, as a restore
        # would not; move them on so the store's own inserts get fresh ids.
        with engine.begin() as conn:
            for table in ("image", "digest_period", "notification"):
                conn.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"  # noqa: S608 - our table names
                        f" (SELECT max(id) FROM {table}))"
                    )
                )
    engine.dispose()
    return changed


class TestUpgradeKeepsRows:
    def test_rows_of_schema_0001_survive_and_use_the_new_columns(self, database_url):
        upgrade(database_url, "0001")
        changed = insert_0001_rows(database_url)

        assert upgrade(database_url) == ("0001", HEAD)
        store = open_store(database_url)
        try:
            old, new = store.history(IMAGE)
            (status,) = store.statuses()
            now = changed + timedelta(hours=2)
            (claimed,) = store.due_notifications(now)
            won = store.claim(claimed.id, now, now + timedelta(minutes=5))
            won_again = store.claim(claimed.id, now, now + timedelta(minutes=5))
            recorded = store.record_digest(
                IMAGE,
                NEWEST,
                INDEX,
                now,
                lambda change: [OwedMessage("dev", "api changed", "again")],
                platforms=[
                    PlatformManifest(Platform.parse("linux/amd64"), AMD64, MANIFEST)
                ],
                duration_ms=42,
            )
            current = store.current(IMAGE)
            (check,) = store.check_records(IMAGE)
        finally:
            store.close()

        assert (old.digest, old.first_seen, old.ended_at) == (OLD, T0, changed)
        assert (new.digest, new.first_seen, new.ended_at) == (NEW, changed, None)
        assert (status.digest, status.last_outcome, status.last_change_at) == (
            NEW,
            "unchanged",
            changed,
        )
        assert (claimed.id, claimed.target, claimed.attempts) == (2, "dev", 3)
        assert claimed.body == f"{OLD} -> {NEW}"
        assert (won, won_again) == (True, False)
        assert (recorded.previous_digest, recorded.notifications) == (NEW, 1)
        assert current is not None
        assert current.platforms == (
            PlatformManifest(Platform.parse("linux/amd64"), AMD64, MANIFEST),
        )
        assert (check.checked_at, check.duration_ms) == (now, 42)
