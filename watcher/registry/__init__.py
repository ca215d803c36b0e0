"""Talk to OCI/Docker registries: resolve references to descriptors over HTTP.

The only package that imports httpx; callers see ``watcher.errors`` exceptions and
the plain values below.
"""

from watcher.registry.auth import Challenge, format_challenge, parse_challenges
from watcher.registry.client import (
    Descriptor,
    HeadResult,
    RegistryClient,
    RequestObserver,
    Transport,
)
from watcher.registry.media_types import MANIFEST_ACCEPT, MANIFEST_TYPES, SCHEMA1_TYPES
from watcher.registry.ratelimit import RateLimit, parse_rate_limit

__all__ = [
    "MANIFEST_ACCEPT",
    "MANIFEST_TYPES",
    "SCHEMA1_TYPES",
    "Challenge",
    "Descriptor",
    "HeadResult",
    "RateLimit",
    "RegistryClient",
    "RequestObserver",
    "Transport",
    "format_challenge",
    "parse_challenges",
    "parse_rate_limit",
]
