"""Image references are read the way `docker pull` reads them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.errors import InvalidReference
from watcher.reference import Digest, Reference

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64


class TestParse:
    @pytest.mark.parametrize(
        ("text", "expected", "api_host"),
        [
            pytest.param(
                "alpine",
                "docker.io/library/alpine:latest",
                "registry-1.docker.io",
                id="official-image",
            ),
            pytest.param(
                "python:3.12-slim",
                "docker.io/library/python:3.12-slim",
                "registry-1.docker.io",
                id="official-with-tag",
            ),
            pytest.param(
                "grafana/grafana:11.0.0",
                "docker.io/grafana/grafana:11.0.0",
                "registry-1.docker.io",
                id="hub-user-repo",
            ),
            pytest.param(
                "docker.io/nginx",
                "docker.io/library/nginx:latest",
                "registry-1.docker.io",
                id="explicit-docker-io",
            ),
            pytest.param(
                "index.docker.io/library/nginx:1",
                "docker.io/library/nginx:1",
                "registry-1.docker.io",
                id="index-alias",
            ),
            pytest.param(
                "registry-1.docker.io/org/app:2",
                "docker.io/org/app:2",
                "registry-1.docker.io",
                id="api-host-alias",
            ),
            pytest.param(
                "ghcr.io/org/app:1.4", "ghcr.io/org/app:1.4", "ghcr.io", id="ghcr"
            ),
            pytest.param(
                "quay.io/prometheus/prometheus",
                "quay.io/prometheus/prometheus:latest",
                "quay.io",
                id="quay-default-tag",
            ),
            pytest.param(
                "localhost/app",
                "localhost/app:latest",
                "localhost",
                id="localhost-no-port",
            ),
            pytest.param(
                "localhost:5000/app:1",
                "localhost:5000/app:1",
                "localhost:5000",
                id="localhost-port",
            ),
            pytest.param(
                "127.0.0.1:5000/a/b/c:v",
                "127.0.0.1:5000/a/b/c:v",
                "127.0.0.1:5000",
                id="ip-port-nested",
            ),
            pytest.param(
                "[::1]:5000/app:1", "[::1]:5000/app:1", "[::1]:5000", id="ipv6"
            ),
            pytest.param(
                "Registry.Example.com/app",
                "registry.example.com/app:latest",
                "registry.example.com",
                id="host-lowercased",
            ),
            pytest.param(
                "europe-docker.pkg.dev/p/r/img:t",
                "europe-docker.pkg.dev/p/r/img:t",
                "europe-docker.pkg.dev",
                id="artifact-registry",
            ),
            pytest.param(
                "a__b/c-d.e_f:T_1.x-Y",
                "docker.io/a__b/c-d.e_f:T_1.x-Y",
                "registry-1.docker.io",
                id="separators",
            ),
        ],
    )
    def test_normalises_like_docker_pull(self, text, expected, api_host):
        reference = Reference.parse(text)

        assert str(reference) == expected
        assert reference.api_host == api_host

    def test_digest_only_reference_has_no_tag(self):
        reference = Reference.parse(f"alpine@{SHA_A}")

        assert reference.tag is None
        assert reference.tag_or_digest == SHA_A
        assert str(reference) == f"docker.io/library/alpine@{SHA_A}"

    def test_tag_and_digest_keep_both(self):
        reference = Reference.parse(f"ghcr.io/org/app:1.4@{SHA_B}")

        assert reference.tag == "1.4"
        assert str(reference.digest) == SHA_B
        assert reference.tag_or_digest == "1.4"

    def test_first_component_without_dot_or_port_is_a_hub_namespace(self):
        reference = Reference.parse("myorg/app:1")

        assert reference.registry == "docker.io"
        assert reference.repository == "myorg/app"

    @pytest.mark.parametrize(
        ("text", "why"),
        [
            pytest.param(
                "Nginx:1.27",
                "repository must be lowercase; try 'nginx:1.27'",
                id="uppercase",
            ),
            pytest.param(
                "ghcr.io/Org/App:1",
                "repository must be lowercase; try 'ghcr.io/org/app:1'",
                id="uppercase-path",
            ),
            pytest.param(
                "alpine:.hidden", "tag '.hidden' is invalid", id="tag-leading-dot"
            ),
            pytest.param("alpine:" + "x" * 129, "is invalid", id="tag-too-long"),
            pytest.param("alpine:a b", "tag 'a b' is invalid", id="space-in-tag"),
            pytest.param(" alpine", "without spaces", id="leading-space"),
            pytest.param("alpine:", "tag '' is invalid", id="empty-tag"),
            pytest.param("", "non-empty", id="empty"),
            pytest.param("a//b", "path component '' is invalid", id="empty-component"),
            pytest.param("-a/b", "path component '-a' is invalid", id="leading-dash"),
            pytest.param(
                "alpine@sha256:abc",
                "has 3 hex digits; sha256 has 64",
                id="short-digest",
            ),
            pytest.param(
                "alpine@md5:" + "a" * 32,
                "only sha256 and sha512",
                id="unknown-algorithm",
            ),
            pytest.param(
                "alpine@sha256:" + "A" * 64, "lowercase hex", id="uppercase-digest"
            ),
            pytest.param(
                "bad_host.io:x/app", "not a valid registry host", id="bad-port"
            ),
            pytest.param("ghcr.io/", "repository name is empty", id="no-repository"),
            pytest.param(
                "localhost:99999/app",
                "port 99999 of 'localhost:99999' is not in 1-65535",
                id="port-too-big",
            ),
            pytest.param("localhost:0/app", "port 0", id="port-zero"),
        ],
    )
    def test_rejects_with_quoted_input_and_reason(self, text, why):
        with pytest.raises(InvalidReference) as caught:
            Reference.parse(text)

        assert repr(text) in str(caught.value)
        assert why in str(caught.value)

    def test_rejects_names_longer_than_255(self):
        with pytest.raises(InvalidReference, match="longer than 255"):
            Reference.parse("ghcr.io/" + "a" * 250)


class TestDigest:
    def test_short_form_is_twelve_hex_digits(self):
        assert Digest.parse(SHA_A).short == "a" * 12

    def test_sha512_is_accepted(self):
        assert str(Digest.parse("sha512:" + "c" * 128)) == "sha512:" + "c" * 128


_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_host = st.sampled_from(
    ["ghcr.io", "quay.io", "localhost:5000", "docker.io", "r.example.com:8443"]
)
_digest = st.from_regex(r"[a-f0-9]{64}", fullmatch=True).map(lambda h: f"sha256:{h}")


class TestProperties:
    @given(
        host=_host,
        path=st.lists(_component, min_size=1, max_size=3),
        tag=st.none() | _tag,
        digest=st.none() | _digest,
    )
    def test_format_then_parse_round_trips(self, host, path, tag, digest):
        text = f"{host}/{'/'.join(path)}"
        if tag is not None:
            text += f":{tag}"
        if digest is not None:
            text += f"@{digest}"

        reference = Reference.parse(text)

        assert Reference.parse(str(reference)) == reference
        assert reference.tag == (
            tag if tag is not None or digest is not None else "latest"
        )

    @given(st.text(max_size=80))
    def test_arbitrary_text_parses_or_raises_invalid_reference(self, text):
        try:
            reference = Reference.parse(text)
        except InvalidReference as exc:
            error = str(exc)
            reference = None
        if reference is None:
            assert repr(text) in error
        else:
            assert Reference.parse(str(reference)) == reference
