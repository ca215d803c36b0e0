"""Retries: Retry-After honoured up to 60 s, backoff with full jitter, bounded."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.fakes.registry import (
    FakeRegistry,
    Fault,
    RecordingObserver,
    RecordingSleep,
    client_for,
)
from watcher.errors import RateLimited, RegistryError, RegistryUnavailable
from watcher.reference import Reference
from watcher.registry import HeadResult
from watcher.registry import retry as retry_policy
from watcher.registry.retry import (
    MAX_RETRY_AFTER_SECONDS,
    Retry,
    backoff_ceiling,
    backoff_delay,
    retry_for_fault,
    retry_for_status,
)

API = Reference.parse("ghcr.io/acme/api:stable")


@pytest.fixture
def top_of_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jitter draws its maximum, so each backoff is exactly its ceiling."""
    monkeypatch.setattr(retry_policy, "random", SimpleNamespace(random=lambda: 1.0))


def faulty(*faults: Fault) -> FakeRegistry:
    fake = FakeRegistry(faults=list(faults))
    fake.add("acme/api:stable")
    return fake


async def head(
    fake: FakeRegistry, sleep: RecordingSleep, **settings: Any
) -> HeadResult:
    async with client_for(fake, sleep=sleep, **settings) as client:
        return await client.head_manifest(API)


async def head_error(
    fake: FakeRegistry, sleep: RecordingSleep, **settings: Any
) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        await head(fake, sleep, **settings)

    return caught.value


class TestPolicy:
    def test_backoff_ceiling_doubles_from_half_a_second_up_to_10(self) -> None:
        ceilings = [backoff_ceiling(retry) for retry in range(1, 9)]

        assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]

    @pytest.mark.parametrize(
        ("retry_number", "fraction", "delay"),
        [
            pytest.param(1, 0.0, 0.0, id="bottom"),
            pytest.param(1, 0.5, 0.25, id="middle-of-first"),
            pytest.param(3, 0.25, 0.5, id="quarter-of-third"),
            pytest.param(9, 0.5, 5.0, id="capped"),
        ],
    )
    def test_backoff_delay_is_the_fraction_of_the_ceiling(
        self, retry_number: int, fraction: float, delay: float
    ) -> None:
        assert backoff_delay(retry_number, fraction) == delay

    @given(st.integers(min_value=1, max_value=50))
    def test_random_backoff_stays_under_its_ceiling(self, retry_number: int) -> None:
        delay = backoff_delay(retry_number)

        assert 0.0 <= delay <= backoff_ceiling(retry_number)

    @pytest.mark.parametrize(
        ("status", "retry_after", "expected"),
        [
            pytest.param(429, 3.0, Retry("rate_limited", 3.0), id="429-advised"),
            pytest.param(503, 0.0, Retry("server_error", 0.0), id="503-now"),
            pytest.param(
                429,
                MAX_RETRY_AFTER_SECONDS,
                Retry("rate_limited", 60.0),
                id="429-at-the-limit",
            ),
            pytest.param(429, 60.5, None, id="429-past-the-limit"),
            pytest.param(503, 3600.0, None, id="503-an-hour"),
            pytest.param(429, None, Retry("rate_limited", 0.5), id="429-unadvised"),
            pytest.param(503, None, Retry("server_error", 0.5), id="503-unadvised"),
            pytest.param(500, 3600.0, Retry("server_error", 0.5), id="500-backs-off"),
            pytest.param(502, None, Retry("server_error", 0.5), id="502"),
            pytest.param(400, None, None, id="400"),
            pytest.param(401, None, None, id="401"),
            pytest.param(403, None, None, id="403"),
            pytest.param(404, 5.0, None, id="404"),
            pytest.param(200, None, None, id="200"),
        ],
    )
    def test_retry_for_status(
        self,
        status: int,
        retry_after: float | None,
        expected: Retry | None,
        top_of_jitter: None,
    ) -> None:
        assert retry_for_status(status, retry_after, 1) == expected

    @pytest.mark.parametrize(
        ("reason", "retried"),
        [
            pytest.param("connect", True, id="connect"),
            pytest.param("timeout", True, id="timeout"),
            pytest.param("tls", False, id="tls"),
            pytest.param("dns", False, id="dns"),
        ],
    )
    def test_retry_for_fault(self, reason: str, retried: bool) -> None:
        assert (retry_for_fault(reason, 2) is not None) is retried


@pytest.mark.anyio
@pytest.mark.usefixtures("top_of_jitter")
class TestClientRetries:
    async def test_5xx_is_retried_with_doubling_delays_until_it_passes(
        self, observer: RecordingObserver
    ) -> None:
        fake = faulty(500, 502, 504)
        sleep = RecordingSleep()

        with capture_logs() as logs:
            result = await head(fake, sleep, observer=observer)

        assert result.method == "HEAD"
        assert sleep.delays == [0.5, 1.0, 2.0]
        assert len(fake.heads) == 4
        assert observer.retries == [("ghcr.io", "server_error")] * 3
        scheduled = [log for log in logs if log["event"] == "retry.scheduled"]
        assert [
            (log["log_level"], log["registry"], log["reason"], log["attempt"])
            for log in scheduled
        ] == [("warning", "ghcr.io", "server_error", attempt) for attempt in (1, 2, 3)]
        assert [log["delay_s"] for log in scheduled] == [0.5, 1.0, 2.0]

    async def test_backoff_is_capped_at_10_seconds(self) -> None:
        fake = faulty(*[503] * 7)
        sleep = RecordingSleep()

        await head(fake, sleep, retries=7)

        assert sleep.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]

    @pytest.mark.parametrize("retries", [0, 1, 3])
    async def test_retries_stop_at_the_configured_number(self, retries: int) -> None:
        fake = faulty(*[500] * 10)
        sleep = RecordingSleep()

        error = await head_error(fake, sleep, retries=retries)

        assert isinstance(error, RegistryUnavailable)
        assert error.status == 500
        assert len(fake.requests) == retries + 1
        assert len(sleep.delays) == retries

    @pytest.mark.parametrize("status", [429, 503])
    @pytest.mark.parametrize(
        ("retry_after", "delay"),
        [
            pytest.param(lambda: "7", 7.0, id="seconds"),
            pytest.param(lambda: "60", 60.0, id="sixty-seconds"),
            pytest.param(
                lambda: format_datetime(
                    datetime.now(UTC) + timedelta(seconds=30), usegmt=True
                ),
                pytest.approx(30, abs=5),
                id="http-date",
            ),
        ],
    )
    async def test_retry_after_up_to_60_seconds_is_waited_out(
        self, status: int, retry_after: Callable[[], str], delay: object
    ) -> None:
        fake = faulty((status, {"Retry-After": retry_after()}))
        sleep = RecordingSleep()

        result = await head(fake, sleep)

        assert result.method == "HEAD"
        assert sleep.delays == [delay]

    async def test_429_past_60_seconds_gives_up_at_once_with_the_advice(
        self, observer: RecordingObserver
    ) -> None:
        fake = faulty((429, {"Retry-After": "61"}))
        sleep = RecordingSleep()

        error = await head_error(fake, sleep, observer=observer)

        assert isinstance(error, RateLimited)
        assert error.retry_after == 61.0
        assert "retry in 61 s" in str(error)
        assert (len(fake.requests), sleep.delays, observer.retries) == (1, [], [])

    async def test_503_past_60_seconds_gives_up_at_once(self) -> None:
        fake = faulty((503, {"Retry-After": "3600"}))
        sleep = RecordingSleep()

        error = await head_error(fake, sleep)

        assert isinstance(error, RegistryUnavailable)
        assert (error.reason, error.status) == ("server_error", 503)
        assert "try again in 3600 s" in str(error)
        assert (len(fake.requests), sleep.delays) == (1, [])

    async def test_503_past_60_seconds_carries_retry_after(self) -> None:
        fake = faulty((503, {"Retry-After": "3600"}))

        error = await head_error(fake, RecordingSleep())

        assert getattr(error, "retry_after", None) == 3600.0

    async def test_backoff_draws_its_delay_below_the_ceiling(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Full jitter: clients that failed together do not retry together."""
        monkeypatch.setattr(
            retry_policy, "random", SimpleNamespace(random=lambda: 0.25)
        )
        fake = faulty(500, httpx.ConnectError("refused"), 503)
        sleep = RecordingSleep()

        await head(fake, sleep)

        assert sleep.delays == [0.125, 0.25, 0.5]

    async def test_429_without_advice_backs_off(self) -> None:
        fake = faulty(429, 429)
        sleep = RecordingSleep()

        await head(fake, sleep)

        assert sleep.delays == [0.5, 1.0]

    @pytest.mark.parametrize("status", [400, 403, 404, 405, 409, 410])
    async def test_4xx_is_never_retried(self, status: int) -> None:
        fake = FakeRegistry(faults=[status, 500, 500])
        fake.add("acme/api:stable")
        sleep = RecordingSleep()

        async with client_for(fake, sleep=sleep) as client:
            with pytest.raises(RegistryError) as caught:
                await client.get_manifest(API)

        assert caught.value.status == status
        assert (len(fake.requests), sleep.delays) == (1, [])

    @pytest.mark.parametrize(
        ("fault", "reason"),
        [
            pytest.param(httpx.ConnectError("refused"), "connect", id="connect"),
            pytest.param(httpx.ReadTimeout("timed out"), "timeout", id="timeout"),
        ],
    )
    async def test_connection_fault_is_retried_with_backoff(
        self, fault: Exception, reason: str, observer: RecordingObserver
    ) -> None:
        fake = faulty(fault)
        sleep = RecordingSleep()

        result = await head(fake, sleep, observer=observer)

        assert result.method == "HEAD"
        assert sleep.delays == [0.5]
        assert observer.retries == [("ghcr.io", reason)]
        assert observer.requests == [
            ("ghcr.io", "HEAD", None),
            ("ghcr.io", "HEAD", 200),
        ]

    async def test_token_request_is_retried_too(
        self, observer: RecordingObserver
    ) -> None:
        fake = FakeRegistry(auth="bearer", token_faults=[503])
        fake.add("acme/api:stable")
        sleep = RecordingSleep()

        result = await head(fake, sleep, observer=observer)

        assert result.method == "HEAD"
        assert len(fake.token_requests) == 2
        assert sleep.delays == [0.5]
        assert observer.tokens == [("ghcr.io", True)]

    async def test_manifest_get_retries_count_as_gets(
        self, observer: RecordingObserver
    ) -> None:
        """Each GET sent may cost a pull, so each is counted."""
        fake = FakeRegistry(faults=[502])
        fake.add("acme/api:stable")

        async with client_for(fake, observer=observer) as client:
            await client.get_manifest(API)

        assert observer.fetched == ["ghcr.io", "ghcr.io"]
