"""Tag lists: paged by ``n=`` and ``Link``, bounded, with the spec's errors."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.fakes.registry import FakeRegistry, RecordingSleep, client_for, error_body
from watcher.config import RegistrySettings
from watcher.errors import NotFound, ProtocolViolation
from watcher.reference import Reference
from watcher.registry import RegistryClient
from watcher.registry.client import MAX_TAG_PAGES
from watcher.registry.media_types import DOCKER_SCHEMA1
from watcher.registry.wire import (
    parse_error_codes,
    parse_next_link,
    parse_tags,
    sniff_media_type,
)

API = Reference.parse("ghcr.io/acme/api:stable")
TAGS = [f"1.{minor}" for minor in range(7)] + ["latest"]


@pytest.mark.anyio
class TestListTags:
    async def test_single_page_lists_every_tag(self) -> None:
        fake = FakeRegistry(auth="bearer", tags={"acme/api": TAGS})

        async with client_for(fake) as client:
            tags = await client.list_tags(API)

        assert tags == sorted(TAGS)
        (page,) = [r for r in fake.requests if r.url.path.endswith("/tags/list")][1:]
        assert page.url.params.get("n") is None
        assert page.headers["authorization"] == "Bearer tok-1"
        assert page.headers["accept"] == "application/json"

    @pytest.mark.parametrize("link_style", ["relative", "absolute"])
    async def test_pages_are_followed_through_the_link_header(
        self, link_style: str
    ) -> None:
        fake = FakeRegistry(tags={"acme/api": TAGS})
        fake.link_style = link_style  # type: ignore[assignment] # parametrized literal

        async with client_for(fake) as client:
            tags = await client.list_tags(API, page_size=3)

        assert tags == sorted(TAGS)
        pages = [request.url for request in fake.requests]
        assert [url.params.get("last") for url in pages] == [None, "1.2", "1.5"]
        assert {url.params["n"] for url in pages} == {"3"}
        assert {url.host for url in pages} == {"ghcr.io"}

    async def test_unknown_repository_is_not_found(self) -> None:
        fake = FakeRegistry(tags={"acme/other": ["1"]})

        async with client_for(fake) as client:
            with pytest.raises(NotFound) as caught:
                await client.list_tags(API)

        assert caught.value.codes == ("NAME_UNKNOWN",)
        assert str(caught.value).startswith(
            "list tags ghcr.io/acme/api: 404 not found (NAME_UNKNOWN); "
            "check that the repository exist"
        )

    async def test_repository_without_tags_lists_none(self) -> None:
        """The reference registry answers ``"tags": null`` once every tag is gone."""

        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"name": "acme/api", "tags": None})

        async with _client(answer) as client:
            assert await client.list_tags(API) == []

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b"<html>", id="not-json"),
            pytest.param(b'{"tags": "1.0"}', id="tags-not-a-list"),
            pytest.param(b'{"tags": [1, 2]}', id="tags-not-strings"),
        ],
    )
    async def test_page_that_is_not_a_tag_list_is_a_protocol_violation(
        self, body: bytes
    ) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=body)

        async with _client(answer) as client:
            with pytest.raises(ProtocolViolation, match=r"list tags ghcr\.io/acme/api"):
                await client.list_tags(API)

    async def test_link_that_never_ends_stops_after_1000_pages(self) -> None:
        seen: list[httpx.Request] = []

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            page = len(seen)
            link = f'</v2/acme/api/tags/list?n=1&last=t{page}>; rel="next"'
            body = {"tags": [f"t{page}"]}
            return httpx.Response(200, json=body, headers={"Link": link})

        async with _client(answer) as client:
            with pytest.raises(ProtocolViolation) as caught:
                await client.list_tags(API, page_size=1)

        assert len(seen) == MAX_TAG_PAGES
        assert f"more than {MAX_TAG_PAGES} pages" in str(caught.value)

    async def test_link_back_to_a_page_already_read_is_a_protocol_violation(
        self,
    ) -> None:
        seen: list[httpx.Request] = []

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            back = "last" in request.url.params
            query = "n=1" if back else "n=1&last=a"
            link = f'</v2/acme/api/tags/list?{query}>; rel="next"'
            return httpx.Response(200, json={"tags": ["a"]}, headers={"Link": link})

        async with _client(answer) as client:
            with pytest.raises(ProtocolViolation, match="leads back to a page"):
                await client.list_tags(API, page_size=1)

        assert len(seen) == 2

    async def test_link_to_another_host_is_followed_without_authorization(
        self,
    ) -> None:
        seen: list[httpx.Request] = []

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            if request.url.host != "ghcr.io":
                return httpx.Response(200, json={"tags": ["b"]})

            if "authorization" not in request.headers:
                challenge = {"WWW-Authenticate": 'Basic realm="ghcr"'}
                return httpx.Response(401, headers=challenge)

            link = '<https://mirror.test/v2/acme/api/tags/list?last=a>; rel="next"'
            return httpx.Response(200, json={"tags": ["a"]}, headers={"Link": link})

        async with _client(answer, username="alice") as client:
            tags = await client.list_tags(API)

        assert tags == ["a", "b"]
        assert [
            (request.url.host, "authorization" in request.headers) for request in seen
        ] == [("ghcr.io", False), ("ghcr.io", True), ("mirror.test", False)]

    @pytest.mark.parametrize("page_size", [0, -1])
    async def test_page_size_below_1_is_refused(self, page_size: int) -> None:
        async with client_for(FakeRegistry()) as client:
            with pytest.raises(ValueError, match="page_size must be at least 1"):
                await client.list_tags(API, page_size=page_size)


def _client(answer: object, *, username: str | None = None) -> RegistryClient:
    """A client whose every request is answered by ``answer``."""
    settings = RegistrySettings.model_validate(
        {"username": username, "password": "pw" if username else None}
    )
    return RegistryClient(
        lambda name: settings,
        transport=httpx.MockTransport(answer),  # type: ignore[arg-type] # handler
        sleep=RecordingSleep(),
    )


class TestWire:
    @pytest.mark.parametrize(
        ("header", "target"),
        [
            pytest.param(
                '</v2/a/tags/list?n=2&last=b>; rel="next"',
                "/v2/a/tags/list?n=2&last=b",
                id="distribution",
            ),
            pytest.param(
                "<https://r.test/v2/a/tags/list?last=b>; rel=next",
                "https://r.test/v2/a/tags/list?last=b",
                id="absolute-unquoted",
            ),
            pytest.param(
                '</first>; rel="first", </next>; REL="prev next"',
                "/next",
                id="several-links-and-relations",
            ),
            pytest.param('</p>; title="rel=next"', None, id="rel-inside-a-value"),
            pytest.param('</p>; rel="prev"', None, id="no-next"),
            pytest.param("", None, id="empty"),
            pytest.param("garbage <", None, id="garbage"),
        ],
    )
    def test_parse_next_link(self, header: str, target: str | None) -> None:
        assert parse_next_link(header) == target

    @pytest.mark.parametrize(
        ("body", "codes"),
        [
            pytest.param(
                error_body("MANIFEST_UNKNOWN"), ("MANIFEST_UNKNOWN",), id="one"
            ),
            pytest.param(
                json.dumps({"errors": [{"code": "A"}, {"code": 3}, "x", {}]}).encode(),
                ("A",),
                id="junk-skipped",
            ),
            pytest.param(b"<html>", (), id="not-json"),
            pytest.param(b"\xff\xfe", (), id="not-utf8"),
            pytest.param(b'{"errors": {}}', (), id="errors-not-a-list"),
        ],
    )
    def test_parse_error_codes(self, body: bytes, codes: tuple[str, ...]) -> None:
        assert parse_error_codes(body) == codes

    def test_parse_tags_reads_null_as_none(self) -> None:
        assert parse_tags(b'{"name": "a", "tags": null}') == []
        assert parse_tags(b'{"name": "a"}') == []

    @pytest.mark.parametrize(
        ("body", "media_type"),
        [
            pytest.param(
                b'{"mediaType": "Application/Vnd.OCI.Image.Index.v1+json"}',
                "application/vnd.oci.image.index.v1+json",
                id="declared",
            ),
            pytest.param(b'{"schemaVersion": 1}', DOCKER_SCHEMA1, id="schema1"),
            pytest.param(b'{"schemaVersion": 2}', None, id="undeclared"),
            pytest.param(b"[]", None, id="not-an-object"),
        ],
    )
    def test_sniff_media_type(self, body: bytes, media_type: str | None) -> None:
        assert sniff_media_type(body) == media_type
