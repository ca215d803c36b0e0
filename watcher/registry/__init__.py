"""Talk to OCI/Docker registries: resolve tags to digests, fetch manifests, list tags.

The only package that imports httpx; callers see ``watcher.errors`` exceptions and
the plain values below.
"""

from watcher.registry.auth import Challenge, format_challenge, parse_challenges
from watcher.registry.client import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    HeadResult,
    Manifest,
    RegistryClient,
    RequestObserver,
    Sleep,
    Transport,
)
from watcher.registry.media_types import MANIFEST_ACCEPT, MANIFEST_TYPES, SCHEMA1_TYPES
from watcher.registry.ratelimit import RateLimit, parse_rate_limit

__all__ = [
    "MANIFEST_ACCEPT",
    "MANIFEST_TYPES",
    "MAX_MANIFEST_BYTES",
    "SCHEMA1_TYPES",
    "Challenge",
    "Descriptor",
    "HeadResult",
    "Manifest",
    "RateLimit",
    "RegistryClient",
    "RequestObserver",
    "Sleep",
    "Transport",
    "format_challenge",
    "parse_challenges",
    "parse_rate_limit",
]
