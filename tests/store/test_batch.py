"""The batched paths of a pass: every current read at once, unchanged checks grouped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import event

from watcher.manifests import PlatformManifest
from watcher.reference import Digest, Platform, Reference, watch_name
from watcher.store import AsyncStore, FirstSeen, Outcome, Unchanged, open_store

ALPINE = Reference.parse("alpine:3")
DIGEST_A = Digest.parse("sha256:" + "a" * 64)
DIGEST_B = Digest.parse("sha256:" + "b" * 64)
DIGEST_C = Digest.parse("sha256:" + "c" * 64)
INDEX = "application/vnd.oci.image.index.v1+json"
ARM64 = Platform.parse("linux/arm64")
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def silent(change):
    return []


def tags(count):
    return [
        Reference.parse(f"registry.test/batch/r{i // 100}:t{i}") for i in range(count)
    ]


class TestCurrents:
    def test_many_watches_read_at_once_match_reading_each(self, store):
        # More names than one IN list holds, so the chunks must join up.
        references = tags(620)
        for reference in references:
            store.record_digest(reference, DIGEST_A, INDEX, T0, silent)
        moved = references[7]
        store.record_digest(moved, DIGEST_B, INDEX, T0 + timedelta(hours=1), silent)
        platforms = [
            PlatformManifest(
                ARM64, DIGEST_C, "application/vnd.oci.image.manifest.v1+json"
            )
        ]
        store.add_platforms(references[9], DIGEST_A, platforms)
        never_seen = Reference.parse("registry.test/batch/never:1")

        names = [watch_name(reference, None) for reference in [*references, never_seen]]
        known = store.currents(names)

        assert watch_name(never_seen, None) not in known
        assert len(known) == len(references)
        for reference in references:
            assert known[watch_name(reference, None)] == store.current(reference)
        assert known[watch_name(moved, None)].digest == DIGEST_B
        # Moved to an index whose platforms were never read: wanted later.
        assert known[watch_name(moved, None)].platforms_wanted
        assert known[watch_name(references[9], None)].platforms == tuple(platforms)


class TestRecordUnchanged:
    def test_moves_last_seen_and_leaves_a_check_record(self, store):
        store.record_digest(ALPINE, DIGEST_A, INDEX, T0, silent)
        current = store.current(ALPINE)
        later = T0 + timedelta(hours=3)

        assert store.record_unchanged([Unchanged(current, later, duration_ms=42)]) == [
            True
        ]

        (period,) = store.history(ALPINE)
        assert (period.digest, period.first_seen, period.last_seen) == (
            DIGEST_A,
            T0,
            later,
        )
        (status,) = store.statuses()
        assert (status.last_check_at, status.last_outcome) == (later, Outcome.UNCHANGED)
        newest = store.check_records(ALPINE)[0]
        assert (newest.checked_at, newest.outcome, newest.duration_ms) == (
            later,
            Outcome.UNCHANGED,
            42,
        )

    def test_clears_the_error_of_a_failed_check(self, store):
        store.record_digest(ALPINE, DIGEST_A, INDEX, T0, silent)
        store.record_failure(
            ALPINE, T0 + timedelta(hours=1), "timeout", "HEAD timed out"
        )

        store.record_unchanged(
            [Unchanged(store.current(ALPINE), T0 + timedelta(hours=2))]
        )

        (status,) = store.statuses()
        assert (status.last_outcome, status.last_error, status.last_error_reason) == (
            Outcome.UNCHANGED,
            None,
            None,
        )

    def test_a_change_recorded_meanwhile_is_not_overwritten(self, store):
        # `current` was read, then another process recorded a change.
        store.record_digest(ALPINE, DIGEST_A, INDEX, T0, silent)
        stale = store.current(ALPINE)
        store.record_digest(ALPINE, DIGEST_B, INDEX, T0 + timedelta(hours=1), silent)
        other = Reference.parse("alpine:edge")
        store.record_digest(other, DIGEST_C, INDEX, T0, silent)

        applied = store.record_unchanged(
            [
                Unchanged(stale, T0 + timedelta(hours=2)),
                Unchanged(store.current(other), T0 + timedelta(hours=2)),
            ]
        )

        assert applied == [False, True]
        old, new = store.history(ALPINE)  # oldest first
        assert old.digest == DIGEST_A
        assert old.ended_at == T0 + timedelta(hours=1)
        assert old.last_seen == T0
        assert new.digest == DIGEST_B
        assert new.last_seen == T0 + timedelta(hours=1)
        assert [r.outcome for r in store.check_records(ALPINE)] == [
            Outcome.CHANGED,
            Outcome.FIRST_SEEN,
        ]


class TestRecordFirstSeen:
    def test_writes_what_record_digest_writes(self, store, new_database_url):
        watches = [(ALPINE, None), (ALPINE, ARM64)]
        batch = [
            FirstSeen(ALPINE, None, DIGEST_A, INDEX, T0, duration_ms=7),
            FirstSeen(ALPINE, ARM64, DIGEST_B, MANIFEST, T0, DIGEST_A, duration_ms=9),
        ]

        assert store.record_first_seen(batch) == [True, True]

        slow = open_store(new_database_url())
        try:
            for item in batch:
                slow.record_digest(
                    item.reference,
                    item.digest,
                    item.media_type,
                    item.at,
                    silent,
                    platform=item.platform,
                    source_digest=item.source_digest,
                    duration_ms=item.duration_ms,
                )
            for reference, platform in watches:
                assert store.history(reference, platform) == slow.history(
                    reference, platform
                )
                assert store.check_records(reference, platform) == slow.check_records(
                    reference, platform
                )
                fast_current = store.current(reference, platform)
                slow_current = slow.current(reference, platform)
                assert fast_current is not None
                assert slow_current is not None
                assert (fast_current.digest, fast_current.source_digest) == (
                    slow_current.digest,
                    slow_current.source_digest,
                )
            assert store.statuses() == slow.statuses()
        finally:
            slow.close()

    def test_a_watch_with_a_row_already_is_left_to_the_slow_path(self, store):
        # A failed first check leaves an image row without a period.
        store.record_failure(ALPINE, T0, "timeout", "HEAD timed out")
        other = Reference.parse("alpine:edge")

        applied = store.record_first_seen(
            [
                FirstSeen(ALPINE, None, DIGEST_A, INDEX, T0 + timedelta(hours=1)),
                FirstSeen(other, None, DIGEST_B, INDEX, T0 + timedelta(hours=1)),
            ]
        )

        assert applied == [False, True]
        assert store.history(ALPINE) == []
        assert [r.outcome for r in store.check_records(ALPINE)] == [Outcome.ERROR]
        assert [p.digest for p in store.history(other)] == [DIGEST_B]


async def record_concurrently(async_store, currents, at):
    return await asyncio.gather(
        *(async_store.record_unchanged(Unchanged(current, at)) for current in currents)
    )


class TestGroupCommit:
    def test_checks_ending_together_share_transactions(self, database_url):
        store = open_store(database_url)
        references = tags(300)
        for reference in references:
            store.record_digest(reference, DIGEST_A, INDEX, T0, silent)
        currents = list(
            store.currents([watch_name(r, None) for r in references]).values()
        )
        commits = []
        event.listen(
            store._database.engine, "commit", lambda connection: commits.append(1)
        )
        async_store = AsyncStore(store)
        try:
            later = T0 + timedelta(hours=1)
            applied = asyncio.run(record_concurrently(async_store, currents, later))

            assert applied == [True] * len(currents)
            assert 1 <= len(commits) < len(currents) // 10
            assert {s.last_check_at for s in store.statuses()} == {later}
            assert all(len(store.check_records(r)) == 2 for r in references[:20])
        finally:
            async_store.close()


class TestReplicas:
    def test_two_processes_writing_overlapping_batches_do_not_deadlock(
        self, database_url
    ):
        """Replicas on one database check the same watches, in any order."""
        import threading

        first, second = open_store(database_url), open_store(database_url)
        try:
            references = tags(200)
            for reference in references:
                first.record_digest(reference, DIGEST_A, INDEX, T0, silent)
            names = [watch_name(reference, None) for reference in references]
            currents = list(first.currents(names).values())
            start = threading.Barrier(2)
            failures: list[BaseException] = []
            applied: list[list[bool]] = []

            def replica(store, order):
                start.wait()
                try:
                    for hour in range(1, 6):
                        at = T0 + timedelta(hours=hour)
                        batch = [Unchanged(current, at) for current in order]
                        applied.append(store.record_unchanged(batch))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)

            threads = [
                threading.Thread(target=replica, args=(first, currents)),
                threading.Thread(target=replica, args=(second, currents[::-1])),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)

            assert failures == []
            assert applied == [[True] * len(currents)] * 10
            assert len(first.check_records(references[0])) == 11
        finally:
            first.close()
            second.close()
