"""Reading manifest documents: which platforms an index lists. Pure, no I/O.

An OCI index and a Docker manifest list share one shape: a ``manifests`` array
of descriptors, each with a ``platform``. BuildKit adds attestation manifests to
that array (platform ``unknown/unknown``, annotation
``vnd.docker.reference.type``); they are not platforms and are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from watcher.reference import Digest, Platform

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"


@dataclass(frozen=True, slots=True, order=True)
class PlatformManifest:
    """One platform's manifest inside an index."""

    platform: Platform
    digest: Digest
    media_type: str


def is_index(media_type: str | None) -> bool:
    """True for the OCI index and Docker manifest list media types."""
    return media_type in INDEX_TYPES


def platforms_of(body: bytes) -> list[PlatformManifest]:
    """The platform manifests an index lists, sorted, attestations left out.

    Raises:
        ValueError: the body is not an index document; the message says why.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"index is not JSON: {exc}"
        raise ValueError(msg) from exc

    entries = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        msg = "index has no 'manifests' array"
        raise ValueError(msg)  # noqa: TRY004 - a bad document, reported as a value

    found = [_entry(entry) for entry in entries if not _is_attestation(entry)]
    return _first_per_platform(entry for entry in found if entry is not None)


def _first_per_platform(entries: Iterable[PlatformManifest]) -> list[PlatformManifest]:
    """One manifest per platform, the first listed, sorted by platform.

    Windows images list one ``windows/amd64`` manifest per OS build, told apart
    only by ``os.version``, which watcher does not track: the first is taken.
    """
    chosen: dict[Platform, PlatformManifest] = {}
    for entry in entries:
        chosen.setdefault(entry.platform, entry)
    return [chosen[platform] for platform in sorted(chosen)]


def _is_attestation(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    annotations = entry.get("annotations") or {}
    platform = entry.get("platform") or {}
    unknown = (
        platform.get("os") == "unknown" and platform.get("architecture") == "unknown"
    )
    return unknown or _ATTESTATION_ANNOTATION in annotations


def _entry(entry: object) -> PlatformManifest | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("platform"), dict):
        return None
    platform = entry["platform"]
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    try:
        text = "/".join(part for part in parts if isinstance(part, str) and part)
        return PlatformManifest(
            Platform.parse(text),
            Digest.parse(str(entry.get("digest"))),
            str(entry.get("mediaType", "")),
        )
    except ValueError:
        return None
