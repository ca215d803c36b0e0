"""Check records: one per check, newest first, pruned without touching history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from watcher.reference import Digest, Platform, Reference
from watcher.store import CheckRecord, Outcome, OwedMessage

ALPINE = Reference.parse("alpine:3")
NGINX = Reference.parse("nginx:1.27")
ARM64 = Platform.parse("linux/arm64")
DIGEST_A = Digest.parse("sha256:" + "a" * 64)
DIGEST_B = Digest.parse("sha256:" + "b" * 64)
INDEX = "application/vnd.oci.image.index.v1+json"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def one_message(change):
    return [OwedMessage("ops", "changed", f"{change.new_digest}")]


def record(store, digest, hours, reference=ALPINE, messages_for=one_message, **kw):
    at = T0 + timedelta(hours=hours)
    return store.record_digest(reference, digest, INDEX, at, messages_for, **kw)


class TestCheckRecords:
    def test_every_check_leaves_a_record_newest_first(self, store):
        record(store, DIGEST_A, 0, duration_ms=120)
        record(store, DIGEST_A, 1, duration_ms=95)
        record(store, DIGEST_B, 2)
        store.record_failure(
            ALPINE,
            T0 + timedelta(hours=3),
            "timeout",
            "HEAD timed out",
            duration_ms=5000,
        )

        assert store.check_records(ALPINE) == [
            CheckRecord(T0 + timedelta(hours=3), Outcome.ERROR, "timeout", 5000),
            CheckRecord(T0 + timedelta(hours=2), Outcome.CHANGED, None, None),
            CheckRecord(T0 + timedelta(hours=1), Outcome.UNCHANGED, None, 95),
            CheckRecord(T0, Outcome.FIRST_SEEN, None, 120),
        ]

    def test_records_belong_to_their_watch_and_platform(self, store):
        record(store, DIGEST_A, 0)
        record(store, DIGEST_A, 1, platform=ARM64)
        record(store, DIGEST_B, 2, reference=NGINX)
        store.record_failure(NGINX, T0 + timedelta(hours=3), "not_found", "404", ARM64)

        assert [r.checked_at for r in store.check_records(ALPINE)] == [T0]
        assert [r.checked_at for r in store.check_records(ALPINE, ARM64)] == [
            T0 + timedelta(hours=1)
        ]
        assert [r.outcome for r in store.check_records(NGINX, ARM64)] == [Outcome.ERROR]
        assert store.check_records(Reference.parse("redis:7")) == []

    def test_limit_keeps_the_newest(self, store):
        for hours in range(5):
            record(store, DIGEST_A, hours)

        records = store.check_records(ALPINE, limit=2)

        assert [r.checked_at for r in records] == [
            T0 + timedelta(hours=4),
            T0 + timedelta(hours=3),
        ]

    def test_a_failed_write_leaves_no_record(self, store):
        """The record is part of the check's transaction: no history, no record."""

        def broken_messages(change):
            msg = "template failed"
            raise RuntimeError(msg)

        record(store, DIGEST_A, 0)
        with pytest.raises(RuntimeError, match="template failed"):
            record(store, DIGEST_B, 1, messages_for=broken_messages)

        assert [r.outcome for r in store.check_records(ALPINE)] == [Outcome.FIRST_SEEN]


class TestPruneChecks:
    def test_prune_deletes_records_older_than_the_cutoff(self, store):
        for hours in range(4):
            record(store, DIGEST_A, hours)
        store.record_failure(NGINX, T0, "timeout", "HEAD timed out")

        pruned = store.prune_checks(T0 + timedelta(hours=2))

        assert pruned == 3
        assert [r.checked_at for r in store.check_records(ALPINE)] == [
            T0 + timedelta(hours=3),
            T0 + timedelta(hours=2),
        ]
        assert store.check_records(NGINX) == []
        assert store.prune_checks(T0 + timedelta(hours=2)) == 0

    def test_prune_cutoff_in_another_zone_means_the_same_instant(self, store):
        for hours in range(4):
            record(store, DIGEST_A, hours)
        plus_five = timezone(timedelta(hours=5))

        pruned = store.prune_checks((T0 + timedelta(hours=2)).astimezone(plus_five))

        assert pruned == 2
        assert len(store.check_records(ALPINE)) == 2

    def test_prune_keeps_digest_periods_and_owed_messages(self, store):
        """Only check records go, however old the history and the outbox are."""
        record(store, DIGEST_A, 0)
        record(store, DIGEST_B, 1)
        record(store, DIGEST_A, 2)
        first, second = store.due_notifications(T0 + timedelta(hours=2))
        store.mark_delivered(first.id, T0 + timedelta(hours=2))

        store.prune_checks(T0 + timedelta(days=365))

        assert store.check_records(ALPINE) == []
        assert [p.digest for p in store.history(ALPINE)] == [
            DIGEST_A,
            DIGEST_B,
            DIGEST_A,
        ]
        assert store.count_pending() == 1
        assert store.due_notifications(T0 + timedelta(days=365)) == [second]
        (status,) = store.statuses()
        assert (status.digest, status.last_outcome) == (DIGEST_A, Outcome.CHANGED)
