"""TLS settings against a real HTTPS registry on 127.0.0.1: ca_file and insecure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from structlog.testing import capture_logs

from tests.fakes.registry import RecordingSleep
from tests.registry.tls_server import TLSRegistry, digest_of, start_tls_registry
from watcher.config import RegistrySettings
from watcher.errors import RegistryError, RegistryUnavailable
from watcher.reference import Digest, Reference
from watcher.registry import HeadResult, RegistryClient

pytestmark = pytest.mark.anyio

BODY = b'{"schemaVersion": 2, "config": {}, "layers": []}'
API = Reference.parse("registry.test/acme/api:stable")


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[TLSRegistry]:
    server = start_tls_registry(trustme.CA(), tmp_path, {"acme/api:stable": BODY})
    yield server
    server.stop()


async def head(sleep: RecordingSleep | None = None, **settings: Any) -> HeadResult:
    """HEAD API; its registry's endpoint and TLS come from ``settings``."""
    registry_settings = RegistrySettings.model_validate(settings)
    async with RegistryClient(
        lambda name: registry_settings, sleep=sleep or RecordingSleep()
    ) as client:
        return await client.head_manifest(API)


class TestTLS:
    async def test_unknown_ca_fails_with_reason_tls_and_no_retry(
        self, tls_registry: TLSRegistry
    ) -> None:
        sleep = RecordingSleep()

        with pytest.raises(RegistryUnavailable) as caught:
            await head(sleep, endpoint=tls_registry.url)

        assert caught.value.reason == "tls"
        assert 'set ca_file in [registries."registry.test"]' in str(caught.value)
        assert sleep.delays == []

    async def test_ca_file_makes_the_registry_trusted(
        self, tls_registry: TLSRegistry
    ) -> None:
        result = await head(endpoint=tls_registry.url, ca_file=tls_registry.ca_file)

        assert result.descriptor.digest == Digest.parse(digest_of(BODY))

    async def test_ca_file_of_another_ca_fails_with_reason_tls(
        self, tls_registry: TLSRegistry, tmp_path: Path
    ) -> None:
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))

        with pytest.raises(RegistryUnavailable) as caught:
            await head(endpoint=tls_registry.url, ca_file=other)

        assert caught.value.reason == "tls"

    async def test_insecure_skips_verification_and_warns_once(
        self, tls_registry: TLSRegistry
    ) -> None:
        settings = RegistrySettings(endpoint=tls_registry.url, insecure=True)

        with capture_logs() as logs:
            async with RegistryClient(lambda name: settings) as client:
                first = await client.head_manifest(API)
                second = await client.head_manifest(API.with_tag("stable"))

        assert first.descriptor.digest == second.descriptor.digest
        warnings = [e for e in logs if e["event"] == "tls.verification_disabled"]
        assert [(w["log_level"], w["registry"]) for w in warnings] == [
            ("warning", "registry.test")
        ]
        assert "ca_file" in warnings[0]["detail"]

    async def test_ca_file_that_is_not_pem_is_a_registry_error_naming_it(
        self, tmp_path: Path
    ) -> None:
        garbage = tmp_path / "ca.pem"
        garbage.write_text("not a certificate", encoding="utf-8")

        with pytest.raises(RegistryError) as caught:
            await head(endpoint="https://127.0.0.1:1", ca_file=garbage)

        assert f"cannot load the CA bundle {garbage}" in str(caught.value)
        assert 'set ca_file in [registries."registry.test"]' in str(caught.value)
