"""Push small images to a real registry through the distribution HTTP API.

`push_image()` uploads config and layer blobs, then the manifests, and returns the
digest of the exact bytes it PUT, checked against the registry's
`Docker-Content-Digest`. Content is derived from `seed`, so the same seed gives the
same digest and another seed moves the tag. Imports nothing from watcher.
"""

import gzip
import hashlib
import io
import json
import secrets
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

ImageKind = Literal["oci-index", "docker-list", "oci-manifest", "docker-v2"]
IMAGE_KINDS: tuple[ImageKind, ...] = (
    "oci-index",
    "docker-list",
    "oci-manifest",
    "docker-v2",
)
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")
HTTP_TIMEOUT_SECONDS = 10.0

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"
MANIFEST_ACCEPT = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

KIND_MEDIA_TYPES: dict[ImageKind, str] = {
    "oci-index": OCI_INDEX,
    "docker-list": DOCKER_LIST,
    "oci-manifest": OCI_MANIFEST,
    "docker-v2": DOCKER_MANIFEST,
}

Auth = tuple[str, str] | httpx.Auth | None
Seed = int | str | None


@dataclass(frozen=True, slots=True)
class PushedImage:
    """What `push_image()` put under a tag.

    `digest` is the sha256 of `manifest` (the bytes PUT under the tag).
    `platform_digests` maps "os/arch[/variant]" to that platform's manifest digest;
    for a single manifest it holds the one platform it was built for.
    `attestation_digests` lists the BuildKit-style attestation manifests of an OCI
    index (they are not platforms).
    """

    repository: str
    tag: str
    digest: str
    media_type: str
    manifest: bytes = field(repr=False)
    platform_digests: dict[str, str]
    attestation_digests: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
        }


@dataclass(frozen=True, slots=True)
class _Formats:
    manifest: str
    config: str
    layer: str


_OCI = _Formats(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
_DOCKER = _Formats(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)


def sha256_digest(data: bytes) -> str:
    """Return the `sha256:<hex>` digest of `data`."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def push_image(
    base_url: str,
    repository: str,
    tag: str,
    kind: ImageKind,
    *,
    platforms: Iterable[str] = DEFAULT_PLATFORMS,
    seed: Seed = None,
    auth: Auth = None,
) -> PushedImage:
    """Push an image of `kind` under `repository:tag` and return what was pushed.

    Args:
        base_url: the registry, as "http://127.0.0.1:PORT".
        kind: "oci-index" and "docker-list" push one manifest per platform, then
            the index; "oci-index" also gets an attestation manifest
            (platform unknown/unknown). "oci-manifest" and "docker-v2" push one
            manifest for the first platform.
        seed: the same seed gives byte-identical content and so the same digest;
            None draws a fresh random seed.
        auth: HTTP basic credentials (or any httpx auth) for a protected registry.

    Raises:
        AssertionError: the registry refused a request, or its
            Docker-Content-Digest differs from the digest of the bytes sent.
    """
    platform_list = list(platforms)
    if not platform_list:
        msg = "push_image: platforms is empty; give at least one, e.g. 'linux/amd64'"
        raise ValueError(msg)

    seed_text = secrets.token_hex(8) if seed is None else str(seed)
    with httpx.Client(
        base_url=base_url, auth=auth, timeout=HTTP_TIMEOUT_SECONDS
    ) as client:
        pusher = _Pusher(client, repository, seed_text)
        match kind:
            case "oci-manifest":
                return pusher.single(tag, platform_list[0], _OCI)
            case "docker-v2":
                return pusher.single(tag, platform_list[0], _DOCKER)
            case "docker-list":
                return pusher.index(tag, platform_list, _DOCKER, DOCKER_LIST)
            case "oci-index":
                return pusher.index(tag, platform_list, _OCI, OCI_INDEX)


def head_manifest(
    base_url: str, repository: str, tag_or_digest: str, *, auth: Auth = None
) -> httpx.Response:
    """HEAD a manifest with all four manifest media types in Accept."""
    with httpx.Client(
        base_url=base_url, auth=auth, timeout=HTTP_TIMEOUT_SECONDS
    ) as client:
        return client.head(
            f"/v2/{repository}/manifests/{tag_or_digest}",
            headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
        )


def head_digest(
    base_url: str, repository: str, tag_or_digest: str, *, auth: Auth = None
) -> str:
    """Return the Docker-Content-Digest a HEAD with the full Accept list answers.

    Raises:
        AssertionError: the HEAD did not answer 200 with a digest header.
    """
    response = head_manifest(base_url, repository, tag_or_digest, auth=auth)
    digest: str | None = response.headers.get("Docker-Content-Digest")
    assert response.status_code == 200, _describe(response)
    assert digest, f"HEAD {response.request.url}: no Docker-Content-Digest header"
    return digest


class _Pusher:
    """Uploads blobs and manifests for one `push_image()` call."""

    def __init__(self, client: httpx.Client, repository: str, seed: str) -> None:
        self._client = client
        self._repository = repository
        self._seed = seed

    def single(self, tag: str, platform: str, formats: _Formats) -> PushedImage:
        manifest = self._image_manifest(platform, formats)
        digest = self._put_manifest(tag, formats.manifest, manifest)
        return PushedImage(
            repository=self._repository,
            tag=tag,
            digest=digest,
            media_type=formats.manifest,
            manifest=manifest,
            platform_digests={platform: digest},
        )

    def index(
        self, tag: str, platforms: list[str], formats: _Formats, media_type: str
    ) -> PushedImage:
        # distribution checks that every manifest an index lists exists in the
        # repository, so each one is PUT by digest before the index.
        entries: list[dict[str, Any]] = []
        platform_digests: dict[str, str] = {}
        for platform in platforms:
            manifest = self._image_manifest(platform, formats)
            digest = self._put_manifest(
                sha256_digest(manifest), formats.manifest, manifest
            )
            platform_digests[platform] = digest
            entries.append(
                _index_entry(formats.manifest, manifest, _platform(platform))
            )

        attestations: tuple[str, ...] = ()
        if media_type == OCI_INDEX:
            entry = self._attestation(platform_digests[platforms[0]])
            entries.append(entry)
            attestations = (entry["digest"],)

        body = _canonical(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
        )
        digest = self._put_manifest(tag, media_type, body)
        return PushedImage(
            repository=self._repository,
            tag=tag,
            digest=digest,
            media_type=media_type,
            manifest=body,
            platform_digests=platform_digests,
            attestation_digests=attestations,
        )

    def _image_manifest(self, platform: str, formats: _Formats) -> bytes:
        layer = _Blob(formats.layer, _layer_tar_gz(self._content(platform, "layer")))
        config = _Blob(formats.config, _image_config(platform, layer.data))
        self._upload(config)
        self._upload(layer)
        return _canonical(
            {
                "schemaVersion": 2,
                "mediaType": formats.manifest,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        )

    def _attestation(self, subject_digest: str) -> dict[str, Any]:
        # BuildKit's provenance attestation: an OCI manifest whose layer is an
        # in-toto statement, listed in the index as platform unknown/unknown.
        statement = _Blob(IN_TOTO, self._content("attestation", "statement"))
        config = _Blob(
            OCI_CONFIG, _canonical({"architecture": "unknown", "os": "unknown"})
        )
        self._upload(config)
        self._upload(statement)
        layer = statement.descriptor()
        layer["annotations"] = {
            "in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"
        }
        manifest = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer],
            }
        )
        self._put_manifest(sha256_digest(manifest), OCI_MANIFEST, manifest)
        entry = _index_entry(
            OCI_MANIFEST, manifest, {"architecture": "unknown", "os": "unknown"}
        )
        entry["annotations"] = {
            "vnd.docker.reference.digest": subject_digest,
            "vnd.docker.reference.type": "attestation-manifest",
        }
        return entry

    def _content(self, *labels: str) -> bytes:
        # 64 bytes that depend only on the seed and the labels: deterministic
        # without `random`, and distinct per platform and per blob.
        text = "\0".join((self._seed, self._repository, *labels))
        return hashlib.shake_256(text.encode()).digest(64)

    def _upload(self, blob: _Blob) -> None:
        started = self._client.post(f"/v2/{self._repository}/blobs/uploads/")
        assert started.status_code == 202, _describe(started)
        location = started.headers["Location"]
        separator = "&" if "?" in location else "?"
        url = f"{location}{separator}digest={blob.digest}"
        finished = self._client.put(
            url, content=blob.data, headers={"Content-Type": "application/octet-stream"}
        )
        assert finished.status_code == 201, _describe(finished)

    def _put_manifest(self, tag_or_digest: str, media_type: str, body: bytes) -> str:
        response = self._client.put(
            f"/v2/{self._repository}/manifests/{tag_or_digest}",
            content=body,
            headers={"Content-Type": media_type},
        )
        assert response.status_code == 201, _describe(response)
        digest = sha256_digest(body)
        answered = response.headers.get("Docker-Content-Digest")
        assert answered == digest, (
            f"PUT {response.request.url}: registry says {answered}, bytes hash to {digest}"
        )
        return digest


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _platform(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    if len(parts) not in (2, 3):
        msg = f"platform {platform!r}: expected os/architecture[/variant], e.g. 'linux/arm/v7'"
        raise ValueError(msg)

    result = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        result["variant"] = parts[2]

    return result


def _index_entry(
    media_type: str, manifest: bytes, platform: dict[str, str]
) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": sha256_digest(manifest),
        "size": len(manifest),
        "platform": platform,
    }


def _image_config(platform: str, layer_tar_gz: bytes) -> bytes:
    diff_id = sha256_digest(gzip.decompress(layer_tar_gz))
    return _canonical(
        {
            **_platform(platform),
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    )


def _layer_tar_gz(content: bytes) -> bytes:
    # A real tar.gz with fixed mtimes, so the layer is valid for any client that
    # unpacks it and still byte-identical for the same seed.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("seed.bin")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))

    return gzip.compress(buffer.getvalue(), mtime=0)


def _describe(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:500]}"
