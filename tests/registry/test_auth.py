from __future__ import annotations

import asyncio
import string
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.registry import Challenge, format_challenge, parse_challenges
from watcher.registry.auth import (
    AuthState,
    Credential,
    Token,
    parse_token_response,
    preferred_challenge,
    scope_names,
)

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def bearer(**params: str) -> Challenge:
    return Challenge("bearer", params)


class TestParseChallenges:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            pytest.param(
                'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"',
                [
                    bearer(
                        realm="https://auth.docker.io/token",
                        service="registry.docker.io",
                        scope="repository:library/nginx:pull",
                    )
                ],
                id="docker-hub",
            ),
            pytest.param(
                'Basic realm="x", Bearer realm="y",service="z"',
                [Challenge("basic", {"realm": "x"}), bearer(realm="y", service="z")],
                id="two-challenges",
            ),
            pytest.param(
                'Bearer realm="https://ghcr.io/token",scope="repository:a/b:pull,push"',
                [
                    bearer(
                        realm="https://ghcr.io/token", scope="repository:a/b:pull,push"
                    )
                ],
                id="comma-in-quoted-value",
            ),
            pytest.param(
                r'Bearer realm="say \"hi\" \\ bye"',
                [bearer(realm='say "hi" \\ bye')],
                id="escaped-quotes",
            ),
            pytest.param(
                'BEARER Realm="r", SERVICE="s"',
                [bearer(realm="r", service="s")],
                id="mixed-case",
            ),
            pytest.param(
                'Bearer realm = "r" ,  service= s',
                [bearer(realm="r", service="s")],
                id="blanks-around-equals",
            ),
            pytest.param(
                "Bearer realm=https://auth.example/token,service=reg",
                [bearer(realm="https://auth.example/token", service="reg")],
                id="unquoted-url",
            ),
            pytest.param(
                'Bearer realm="https://quay.io/v2/auth"',
                [bearer(realm="https://quay.io/v2/auth")],
                id="no-service-no-scope",
            ),
            pytest.param(
                'Bearer realm="r",error="insufficient_scope",scope="repository:a:pull"',
                [
                    bearer(
                        realm="r", error="insufficient_scope", scope="repository:a:pull"
                    )
                ],
                id="error-param",
            ),
            pytest.param(
                'Negotiate, Basic realm="x"',
                [Challenge("negotiate", {}), Challenge("basic", {"realm": "x"})],
                id="scheme-without-params",
            ),
            pytest.param(
                'Bearer realm="r", realm="second"',
                [bearer(realm="r")],
                id="repeated-param-keeps-first",
            ),
            pytest.param(
                'Bearer realm="unterminated',
                [bearer(realm="unterminated")],
                id="unterminated-quote",
            ),
            pytest.param("", [], id="empty"),
            pytest.param(' , ,"=@', [], id="garbage"),
            pytest.param(
                '=oops, Bearer realm="r"',
                [bearer(realm="r")],
                id="garbage-then-challenge",
            ),
        ],
    )
    def test_parse_challenges_reads_what_registries_send(
        self, header: str, expected: list[Challenge]
    ) -> None:
        assert parse_challenges(header) == expected

    @settings(database=None)
    @given(st.text())
    def test_parse_challenges_never_raises_on_any_text(self, header: str) -> None:
        challenges = parse_challenges(header)

        assert all(challenge.scheme for challenge in challenges)

    @settings(database=None)
    @given(
        st.lists(st.sampled_from('Bearer realm="r", service=s,\\ "=;\t'), max_size=40)
    )
    def test_parse_challenges_never_raises_on_header_like_text(
        self, pieces: list[str]
    ) -> None:
        parse_challenges("".join(pieces))


_TOKENS = st.text(
    alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1
)
# What a header may carry: printable ASCII, tabs and Latin-1 (no CR, LF or NUL).
_VALUES = st.text(
    alphabet=st.characters(
        min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"
    )
    | st.just("\t")
)
_CHALLENGES = st.builds(
    Challenge, _TOKENS, st.dictionaries(_TOKENS.map(str.lower), _VALUES, max_size=5)
)


class TestFormatChallenge:
    @pytest.mark.parametrize(
        ("challenge", "header"),
        [
            pytest.param(
                bearer(realm="https://a.test/token", service='say "hi"'),
                'Bearer realm="https://a.test/token",service="say \\"hi\\""',
                id="quoted-and-escaped",
            ),
            pytest.param(Challenge("negotiate", {}), "Negotiate", id="no-params"),
        ],
    )
    def test_format_challenge_quotes_every_value(
        self, challenge: Challenge, header: str
    ) -> None:
        assert format_challenge(challenge) == header

    @settings(database=None)
    @given(_CHALLENGES)
    def test_formatted_challenge_parses_back_to_itself(
        self, challenge: Challenge
    ) -> None:
        assert parse_challenges(format_challenge(challenge)) == [challenge]

    @settings(database=None)
    @given(st.lists(_CHALLENGES, max_size=4))
    def test_several_formatted_challenges_parse_back_in_order(
        self, challenges: list[Challenge]
    ) -> None:
        header = ", ".join(format_challenge(challenge) for challenge in challenges)

        assert parse_challenges(header) == challenges


class TestChallenge:
    def test_challenge_lowercases_scheme_and_names_when_built(self) -> None:
        challenge = Challenge("Bearer", {"Realm": "r", "SERVICE": "s"})

        assert (challenge.scheme, challenge.realm, challenge.service) == (
            "bearer",
            "r",
            "s",
        )
        assert challenge.scope is None

    def test_challenge_params_cannot_be_changed(self) -> None:
        params = {"realm": "r"}
        challenge = Challenge("bearer", params)
        params["realm"] = "changed"

        assert challenge.realm == "r"
        with pytest.raises(TypeError):
            challenge.params["realm"] = "x"  # type: ignore[index] # proving it fails

    def test_equal_challenges_hash_alike(self) -> None:
        assert {bearer(realm="r"), Challenge("BEARER", {"REALM": "r"})} == {
            bearer(realm="r")
        }

    @pytest.mark.parametrize(
        ("offered", "scheme"),
        [
            pytest.param(["basic", "bearer"], "bearer", id="bearer-wins"),
            pytest.param(["negotiate", "basic"], "basic", id="basic-over-unknown"),
            pytest.param(["negotiate", "hoba"], "negotiate", id="else-first"),
            pytest.param([], None, id="none"),
        ],
    )
    def test_preferred_challenge_picks_bearer_then_basic(
        self, offered: list[str], scheme: str | None
    ) -> None:
        chosen = preferred_challenge(Challenge(name, {}) for name in offered)

        assert (chosen.scheme if chosen else None) == scheme


class TestScope:
    @pytest.mark.parametrize(
        ("scope", "expected"),
        [
            pytest.param("repository:acme/api:pull", True, id="exact"),
            pytest.param("repository:acme/api:pull,push", True, id="more-actions"),
            pytest.param("repository:acme/other:pull", False, id="other-repository"),
            pytest.param("repository:acme/api-2:pull", False, id="prefix-only"),
            pytest.param(
                "repository:x:pull repository:acme/api:pull", True, id="second-item"
            ),
            pytest.param("registry:catalog:*", False, id="other-type"),
            pytest.param("", False, id="empty"),
        ],
    )
    def test_scope_names_matches_the_repository_exactly(
        self, scope: str, expected: bool
    ) -> None:
        assert scope_names(scope, "acme/api") is expected


class TestCredential:
    def test_credential_repr_hides_the_password(self) -> None:
        credential = Credential("alice", "planted-password")

        assert "planted-password" not in repr(credential)
        assert (
            credential.basic_authorization() == "Basic YWxpY2U6cGxhbnRlZC1wYXNzd29yZA=="
        )


class TestParseTokenResponse:
    @pytest.mark.parametrize(
        ("data", "value", "lifetime"),
        [
            pytest.param({"token": "t", "expires_in": 300}, "t", 300, id="token"),
            pytest.param({"access_token": "a"}, "a", 60, id="access-token-default-60"),
            pytest.param({"token": "t", "access_token": "a"}, "t", 60, id="token-wins"),
            pytest.param(
                {"token": "", "access_token": "a"}, "a", 60, id="empty-token-skipped"
            ),
            pytest.param(
                {"token": "t", "expires_in": 300, "issued_at": "2026-05-01T11:59:40Z"},
                "t",
                280,
                id="issued-20s-ago",
            ),
            pytest.param(
                {
                    "token": "t",
                    "expires_in": 300,
                    "issued_at": "2026-05-01T11:59:40.123456789Z",
                },
                "t",
                pytest.approx(280.123456),
                id="nanosecond-issued-at",
            ),
            pytest.param(
                {"token": "t", "expires_in": 300, "issued_at": "2026-05-01T12:10:00Z"},
                "t",
                300,
                id="future-issued-at-is-skew",
            ),
            pytest.param(
                {"token": "t", "expires_in": 300, "issued_at": "2026-05-01T10:00:00Z"},
                "t",
                300,
                id="issued-before-lifetime-is-skew",
            ),
            pytest.param(
                {"token": "t", "issued_at": "yesterday"}, "t", 60, id="bad-issued-at"
            ),
        ],
    )
    def test_parse_token_response_reads_token_and_lifetime(
        self, data: dict[str, object], value: str, lifetime: float
    ) -> None:
        token = parse_token_response(data, scope="s", now=100.0, wall_now=NOW)

        assert (token.value, token.lifetime_seconds) == (value, lifetime)
        assert token.expires_at == pytest.approx(100.0 + token.lifetime_seconds)

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param([], id="not-an-object"),
            pytest.param({}, id="no-token"),
            pytest.param({"token": 12345}, id="token-not-a-string"),
            pytest.param(
                {"token": "planted", "expires_in": "soon"}, id="bad-expires-in"
            ),
            pytest.param(
                {"token": "planted", "expires_in": True}, id="bool-expires-in"
            ),
        ],
    )
    def test_parse_token_response_refuses_unusable_answers_without_quoting_them(
        self, data: object
    ) -> None:
        with pytest.raises(ValueError, match="the answer") as caught:
            parse_token_response(data, scope="s", now=0.0, wall_now=NOW)

        assert "planted" not in str(caught.value)
        assert "12345" not in str(caught.value)

    def test_token_repr_hides_the_value(self) -> None:
        token = parse_token_response({"token": "planted-token"}, scope="s", now=0.0)

        assert "planted-token" not in repr(token)


class TestTokenFreshness:
    @pytest.mark.parametrize(
        ("lifetime", "elapsed", "fresh"),
        [
            pytest.param(300, 269, True, id="300s-31s-left"),
            pytest.param(300, 271, False, id="300s-under-10pct-left"),
            pytest.param(60, 54, True, id="60s-6s-left"),
            pytest.param(60, 55, False, id="60s-5s-left"),
            pytest.param(30, 24, True, id="30s-6s-left"),
            pytest.param(30, 26, False, id="30s-under-5s-left"),
            pytest.param(3, 0, False, id="shorter-than-margin"),
        ],
    )
    def test_token_is_renewed_under_10_percent_or_5_seconds_left(
        self, lifetime: float, elapsed: float, fresh: bool
    ) -> None:
        token = Token("t", "s", lifetime, 1000.0 + lifetime)

        assert token.is_fresh(1000.0 + elapsed) is fresh


class TestAuthState:
    @pytest.mark.anyio
    async def test_cancelled_caller_does_not_cancel_the_shared_fetch(self) -> None:
        """A check cancelled mid-fetch leaves the token to the checks still waiting."""
        state = AuthState()
        release = asyncio.Event()

        async def fetch(scope: str) -> Token:
            await release.wait()
            return parse_token_response({"token": "shared"}, scope=scope)

        first = asyncio.create_task(state.token("s", fetch))
        second = asyncio.create_task(state.token("s", fetch))
        await asyncio.sleep(0)
        first.cancel()
        release.set()
        token, cached = await second

        assert (token.value, cached) == ("shared", False)
        assert first.cancelled()

    @pytest.mark.anyio
    async def test_failed_fetch_is_shared_and_not_cached(self) -> None:
        state = AuthState()
        attempts: list[str] = []

        async def fetch(scope: str) -> Token:
            attempts.append(scope)
            await asyncio.sleep(0)
            if len(attempts) == 1:
                msg = "token endpoint down"
                raise RuntimeError(msg)

            return parse_token_response({"token": "second"}, scope=scope)

        results = await asyncio.gather(
            state.token("s", fetch), state.token("s", fetch), return_exceptions=True
        )
        token, _ = await state.token("s", fetch)

        assert [str(result) for result in results] == ["token endpoint down"] * 2
        assert token.value == "second"

    @pytest.mark.anyio
    async def test_dropping_a_replaced_token_keeps_its_replacement(self) -> None:
        state = AuthState()
        values = iter(["old", "new"])

        async def fetch(scope: str) -> Token:
            return parse_token_response({"token": next(values)}, scope=scope)

        old, _ = await state.token("s", fetch)
        state.drop(old)
        new, _ = await state.token("s", fetch)
        state.drop(old)
        again, cached = await state.token("s", fetch)

        assert (old.value, new.value, again.value, cached) == (
            "old",
            "new",
            "new",
            True,
        )


def test_parse_token_response_uses_the_wall_clock_by_default() -> None:
    issued = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()

    token = parse_token_response(
        {"token": "t", "expires_in": 300, "issued_at": issued}, scope="s"
    )

    assert 265 < token.lifetime_seconds <= 270
