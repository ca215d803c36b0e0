from __future__ import annotations

import watcher.registry
from watcher.registry import (
    auth,
    client,
    credentials,
    media_types,
    ratelimit,
    retry,
    wire,
)


def test_package_exports_the_public_api_and_nothing_missing() -> None:
    """Callers import from ``watcher.registry``; each name there is really defined."""
    expected = {
        "Challenge",
        "Descriptor",
        "HeadResult",
        "MANIFEST_ACCEPT",
        "MAX_MANIFEST_BYTES",
        "Manifest",
        "Sleep",
        "MANIFEST_TYPES",
        "RateLimit",
        "RegistryClient",
        "RequestObserver",
        "SCHEMA1_TYPES",
        "Transport",
        "format_challenge",
        "parse_challenges",
        "parse_rate_limit",
    }

    assert set(watcher.registry.__all__) == expected
    for name in expected:
        defined_in = (auth, client, media_types, ratelimit)
        assert any(getattr(module, name, None) is not None for module in defined_in)
        assert getattr(watcher.registry, name) is not None


def test_httpx_is_imported_by_the_client_alone() -> None:
    """httpx stays behind one module, so replacing it touches one file."""
    for module in (auth, credentials, media_types, ratelimit, retry, wire):
        assert "httpx" not in vars(module)

    assert "httpx" in vars(client)
