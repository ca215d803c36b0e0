"""Reading the platforms an index lists."""

from __future__ import annotations

import json

import pytest

from watcher.manifests import is_index, platforms_of
from watcher.reference import Platform

AMD64 = "sha256:" + "1" * 64
ARM = "sha256:" + "2" * 64
ATTESTATION = "sha256:" + "3" * 64
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def index(*entries):
    return json.dumps({"schemaVersion": 2, "manifests": list(entries)}).encode()


def entry(digest, platform=None, **extra):
    body = {"mediaType": OCI_MANIFEST, "digest": digest, "size": 100, **extra}
    if platform is not None:
        body["platform"] = platform
    return body


def test_lists_each_platform_with_variant_sorted():
    body = index(
        entry(ARM, {"os": "linux", "architecture": "arm", "variant": "v7"}),
        entry(AMD64, {"os": "linux", "architecture": "amd64"}),
    )

    found = [(str(e.platform), str(e.digest)) for e in platforms_of(body)]

    assert found == [("linux/amd64", AMD64), ("linux/arm/v7", ARM)]


@pytest.mark.parametrize(
    "attestation",
    [
        pytest.param(
            entry(ATTESTATION, {"os": "unknown", "architecture": "unknown"}),
            id="unknown-platform",
        ),
        pytest.param(
            entry(
                ATTESTATION,
                {"os": "linux", "architecture": "amd64"},
                annotations={"vnd.docker.reference.type": "attestation-manifest"},
            ),
            id="annotation",
        ),
    ],
)
def test_attestation_entries_are_not_platforms(attestation):
    body = index(entry(AMD64, {"os": "linux", "architecture": "amd64"}), attestation)

    assert [str(e.digest) for e in platforms_of(body)] == [AMD64]


def test_entries_without_platform_or_with_bad_digest_are_skipped():
    body = index(
        entry(AMD64), entry("sha256:nothex", {"os": "linux", "architecture": "arm64"})
    )

    assert platforms_of(body) == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(b"not json", "not JSON", id="garbage"),
        pytest.param(
            b'{"schemaVersion": 2}', "no 'manifests' array", id="no-manifests"
        ),
        pytest.param(b"[1, 2]", "no 'manifests' array", id="array"),
    ],
)
def test_a_body_that_is_no_index_says_why(body, why):
    with pytest.raises(ValueError, match=why):
        platforms_of(body)


def test_index_media_types():
    assert is_index("application/vnd.oci.image.index.v1+json")
    assert is_index("application/vnd.docker.distribution.manifest.list.v2+json")
    assert not is_index(OCI_MANIFEST)
    assert not is_index(None)


def test_a_platform_listed_twice_is_taken_once_the_first():
    """Windows images list one windows/amd64 manifest per OS build."""
    body = index(
        entry(
            AMD64,
            {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763"},
        ),
        entry(
            ARM, {"os": "WINDOWS", "architecture": "amd64", "os.version": "10.0.20348"}
        ),
        entry(ATTESTATION, {"os": "linux", "architecture": "arm64"}),
    )

    found = [(str(e.platform), str(e.digest)) for e in platforms_of(body)]

    assert found == [("linux/arm64", ATTESTATION), ("windows/amd64", AMD64)]


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        pytest.param("linux/arm64/v8", "linux/arm64", id="arm64-v8-implied"),
        pytest.param("linux/arm", "linux/arm/v7", id="arm-v7-implied"),
        pytest.param("linux/arm/v6", "linux/arm/v6", id="arm-v6-kept"),
        pytest.param("linux/x86_64", "linux/amd64", id="x86_64"),
        pytest.param("Linux/AArch64", "linux/arm64", id="aarch64-any-case"),
    ],
)
def test_platforms_are_normalised_as_docker_does(written, normal):
    assert str(Platform.parse(written)) == normal
