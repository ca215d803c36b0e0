"""Digest history and outbox, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from watcher.reference import Digest, Reference
from watcher.store import Outcome, OwedMessage, open_store

ALPINE = Reference.parse("alpine:3")
DIGEST_A = Digest.parse("sha256:" + "a" * 64)
DIGEST_B = Digest.parse("sha256:" + "b" * 64)
INDEX = "application/vnd.oci.image.index.v1+json"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def one_message(change):
    return [
        OwedMessage(
            "json-abc", "changed", f"{change.old_digest} -> {change.new_digest}"
        )
    ]


def record(store, digest, at, messages_for=one_message, **kwargs):
    return store.record_digest(ALPINE, digest, INDEX, at, messages_for, **kwargs)


class TestRecordDigest:
    def test_first_digest_is_a_silent_baseline(self, store):
        recorded = record(store, DIGEST_A, T0)

        assert recorded.outcome is Outcome.FIRST_SEEN
        assert recorded.notifications == 0
        assert store.due_notifications(T0) == []
        (period,) = store.history(ALPINE)
        assert (period.digest, period.first_seen, period.ended_at) == (
            DIGEST_A,
            T0,
            None,
        )

    def test_first_digest_notifies_when_asked(self, store):
        recorded = record(store, DIGEST_A, T0, notify_first_seen=True)

        assert recorded.notifications == 1
        assert [n.body for n in store.due_notifications(T0)] == [f"None -> {DIGEST_A}"]

    def test_unchanged_digest_moves_last_seen_and_adds_no_row(self, store):
        record(store, DIGEST_A, T0)
        for hours in range(1, 5):
            recorded = record(store, DIGEST_A, T0 + timedelta(hours=hours))
            assert recorded.outcome is Outcome.UNCHANGED

        (period,) = store.history(ALPINE)
        assert period.first_seen == T0
        assert period.last_seen == T0 + timedelta(hours=4)

    def test_change_closes_the_old_period_and_opens_a_new_one(self, store):
        record(store, DIGEST_A, T0)
        record(store, DIGEST_A, T0 + timedelta(hours=1))
        changed_at = T0 + timedelta(hours=2)

        recorded = record(store, DIGEST_B, changed_at)

        assert recorded.outcome is Outcome.CHANGED
        assert recorded.previous_digest == DIGEST_A
        old, new = store.history(ALPINE)
        assert (old.digest, old.last_seen, old.ended_at) == (
            DIGEST_A,
            T0 + timedelta(hours=1),
            changed_at,
        )
        assert (new.digest, new.first_seen, new.ended_at) == (
            DIGEST_B,
            changed_at,
            None,
        )
        (status,) = store.statuses()
        assert (status.digest, status.last_change_at) == (DIGEST_B, changed_at)

    def test_change_and_its_messages_are_one_transaction(self, store):
        record(store, DIGEST_A, T0)

        def broken(change):
            msg = "template failed"
            raise RuntimeError(msg)

        with pytest.raises(RuntimeError):
            record(store, DIGEST_B, T0 + timedelta(hours=1), messages_for=broken)

        assert [p.digest for p in store.history(ALPINE)] == [DIGEST_A]
        assert (
            record(store, DIGEST_B, T0 + timedelta(hours=2)).outcome is Outcome.CHANGED
        )
        assert len(store.due_notifications(T0 + timedelta(hours=2))) == 1

    def test_flip_back_to_an_old_digest_is_a_new_change(self, store):
        record(store, DIGEST_A, T0)
        record(store, DIGEST_B, T0 + timedelta(hours=1))
        recorded = record(store, DIGEST_A, T0 + timedelta(hours=2))

        assert recorded.outcome is Outcome.CHANGED
        assert [p.digest for p in store.history(ALPINE)] == [
            DIGEST_A,
            DIGEST_B,
            DIGEST_A,
        ]
        assert len(store.due_notifications(T0 + timedelta(hours=2))) == 2

    def test_failure_is_recorded_without_touching_history(self, store):
        record(store, DIGEST_A, T0)

        store.record_failure(
            ALPINE, T0 + timedelta(hours=1), "timeout", "HEAD timed out"
        )

        (status,) = store.statuses()
        assert status.last_outcome is Outcome.ERROR
        assert (status.last_error_reason, status.last_error) == (
            "timeout",
            "HEAD timed out",
        )
        assert status.digest == DIGEST_A
        assert len(store.history(ALPINE)) == 1

    def test_racing_writers_record_one_change_and_one_message(
        self, store, database_url
    ):
        """Two `watcher check` runs at once must not announce the same change twice."""
        record(store, DIGEST_A, T0)
        stores = [open_store(database_url) for _ in range(6)]
        outcomes = []
        start = threading.Barrier(len(stores))

        def race(other):
            start.wait()
            outcomes.append(record(other, DIGEST_B, T0 + timedelta(hours=1)).outcome)

        threads = [threading.Thread(target=race, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for other in stores:
            other.close()

        assert sorted(outcomes) == sorted([Outcome.CHANGED] + [Outcome.UNCHANGED] * 5)
        assert [p.digest for p in store.history(ALPINE)] == [DIGEST_A, DIGEST_B]
        assert len(store.due_notifications(T0 + timedelta(hours=2))) == 1


class TestOutbox:
    def test_delivered_message_is_never_due_again(self, store):
        record(store, DIGEST_A, T0)
        record(store, DIGEST_B, T0 + timedelta(hours=1))
        (due,) = store.due_notifications(T0 + timedelta(hours=1))

        store.mark_delivered(due.id, T0 + timedelta(hours=1))

        assert store.due_notifications(T0 + timedelta(days=30)) == []
        assert store.count_pending() == 0

    def test_failed_attempt_waits_until_its_retry_time(self, store):
        record(store, DIGEST_A, T0)
        record(store, DIGEST_B, T0 + timedelta(hours=1))
        (due,) = store.due_notifications(T0 + timedelta(hours=1))
        retry_at = T0 + timedelta(hours=2)

        store.mark_attempt_failed(due.id, "HTTP 500", retry_at)

        assert store.due_notifications(retry_at - timedelta(seconds=1)) == []
        (again,) = store.due_notifications(retry_at)
        assert again.attempts == 1
        assert store.count_pending() == 1

    def test_given_up_message_stops_being_due(self, store):
        record(store, DIGEST_A, T0)
        record(store, DIGEST_B, T0 + timedelta(hours=1))
        (due,) = store.due_notifications(T0 + timedelta(hours=1))

        store.mark_attempt_failed(due.id, "HTTP 500", None)

        assert store.due_notifications(T0 + timedelta(days=30)) == []
        assert store.count_pending() == 0


class TestClaims:
    def test_a_claimed_message_is_won_by_one_deliverer_only(self, store, database_url):
        record(store, DIGEST_A, T0)
        record(store, DIGEST_B, T0 + timedelta(hours=1))
        other = open_store(database_url)
        now, lease = T0 + timedelta(hours=1), timedelta(minutes=5)

        (due,) = store.due_notifications(now)

        mine = store.claim(due.id, now, now + lease)
        theirs = other.claim(due.id, now, now + lease)
        due_to_them = other.due_notifications(now)
        after_lease = other.claim(due.id, now + lease, now + 2 * lease)
        other.close()

        assert (mine, theirs, after_lease) == (True, False, True)
        assert due_to_them == []

    def test_a_failed_attempt_releases_its_claim(self, store):
        record(store, DIGEST_A, T0)
        record(store, DIGEST_B, T0 + timedelta(hours=1))
        now = T0 + timedelta(hours=1)
        (claimed,) = store.due_notifications(now)
        assert store.claim(claimed.id, now, now + timedelta(hours=5))

        store.mark_attempt_failed(claimed.id, "HTTP 500", now + timedelta(minutes=1))

        later = now + timedelta(minutes=1)
        assert store.claim(claimed.id, later, later + timedelta(hours=1))
