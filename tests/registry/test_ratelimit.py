from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.registry import RateLimit, parse_rate_limit


class TestParseRateLimit:
    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            pytest.param(
                {
                    "ratelimit-limit": "100;w=21600",
                    "ratelimit-remaining": "97;w=21600",
                    "docker-ratelimit-source": "1.2.3.4",
                },
                RateLimit(100, 97, 21600, "1.2.3.4"),
                id="docker-hub",
            ),
            pytest.param(
                {"RateLimit-Limit": "200;w=3600", "RATELIMIT-REMAINING": "0;w=3600"},
                RateLimit(200, 0, 3600, None),
                id="any-case",
            ),
            pytest.param(
                {"docker-ratelimit-source": "b0a1c9d2-account"},
                RateLimit(None, None, None, "b0a1c9d2-account"),
                id="source-only",
            ),
            pytest.param(
                {"ratelimit-limit": "", "ratelimit-remaining": " "},
                RateLimit(None, None, None, None),
                id="empty-values",
            ),
            pytest.param(
                {"ratelimit-limit": "lots;w=x", "ratelimit-remaining": "-1;w=21600"},
                RateLimit(None, None, 21600, None),
                id="garbled-values",
            ),
            pytest.param(
                {"ratelimit-limit": "100"},
                RateLimit(100, None, None, None),
                id="no-window",
            ),
            pytest.param(
                {"ratelimit-limit": "100, 100;w=21600"},
                RateLimit(100, None, 21600, None),
                id="ietf-list",
            ),
            pytest.param(
                {"ratelimit-remaining": "5 ; W = 60"},
                RateLimit(None, 5, 60, None),
                id="blanks-and-case-in-value",
            ),
            pytest.param(
                {"ratelimit-limit": "²;w=²"},
                RateLimit(None, None, None, None),
                id="non-ascii-digits",
            ),
        ],
    )
    def test_parse_rate_limit_reads_count_window_and_source(
        self, headers: dict[str, str], expected: RateLimit
    ) -> None:
        assert parse_rate_limit(headers) == expected

    def test_parse_rate_limit_is_none_without_rate_limit_headers(self) -> None:
        assert parse_rate_limit({"content-type": "application/json"}) is None

    def test_parse_rate_limit_reads_httpx_headers(self) -> None:
        headers = httpx.Headers([("RateLimit-Limit", "100;w=21600")])

        assert parse_rate_limit(headers) == RateLimit(100, None, 21600, None)

    @settings(database=None)
    @given(
        st.dictionaries(
            st.sampled_from(
                ["ratelimit-limit", "RateLimit-Remaining", "docker-ratelimit-source"]
            ),
            st.text(),
        )
    )
    def test_parse_rate_limit_never_raises_on_any_value(
        self, headers: dict[str, str]
    ) -> None:
        rate_limit = parse_rate_limit(headers)

        assert (rate_limit is None) == (not headers)
