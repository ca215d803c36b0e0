"""The test components are real and behave: registry, image pusher, hub double, receiver."""

import json
import time

import apprise
import httpx
import pytest

from tests.fakes.hub import HubDouble
from tests.real.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IMAGE_KINDS,
    KIND_MEDIA_TYPES,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    ImageKind,
    head_digest,
    head_manifest,
    push_image,
)
from tests.real.receiver import Receiver
from tests.real.registry import RegistryServer, start_registry

ACCEPT_ALL = {"Accept": ", ".join(MANIFEST_ACCEPT)}


class TestRegistry:
    def test_registry_answers_the_v2_ping(self, registry: RegistryServer) -> None:
        """The session registry is a running distribution server on 127.0.0.1."""
        response = httpx.get(f"{registry.url}/v2/")

        assert response.status_code == 200
        assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
        assert registry.host.startswith("127.0.0.1:")

    @pytest.mark.parametrize("kind", IMAGE_KINDS, ids=IMAGE_KINDS)
    def test_pushed_image_heads_back_with_its_digest_and_media_type(
        self, registry: RegistryServer, repository_name: str, kind: ImageKind
    ) -> None:
        pushed = push_image(registry.url, repository_name, "1.0", kind)

        response = head_manifest(registry.url, repository_name, "1.0")

        assert response.status_code == 200
        assert response.headers["Docker-Content-Digest"] == pushed.digest
        assert response.headers["Content-Type"] == KIND_MEDIA_TYPES[kind]
        assert int(response.headers["Content-Length"]) == len(pushed.manifest)

    def test_another_seed_moves_the_tag_and_the_first_seed_moves_it_back(
        self, registry: RegistryServer, repository_name: str
    ) -> None:
        first = push_image(registry.url, repository_name, "latest", "oci-index", seed=1)
        second = push_image(
            registry.url, repository_name, "latest", "oci-index", seed=2
        )
        moved = head_digest(registry.url, repository_name, "latest")
        third = push_image(registry.url, repository_name, "latest", "oci-index", seed=1)

        assert second.digest != first.digest
        assert moved == second.digest
        assert third.digest == first.digest
        assert head_digest(registry.url, repository_name, "latest") == first.digest

    @pytest.mark.parametrize("kind", ["oci-index", "docker-list"])
    def test_index_lists_each_platform_manifest_by_digest(
        self, registry: RegistryServer, repository_name: str, kind: ImageKind
    ) -> None:
        platforms = ("linux/amd64", "linux/arm/v7")
        pushed = push_image(
            registry.url, repository_name, "v1", kind, platforms=platforms
        )

        body = httpx.get(
            f"{registry.url}/v2/{repository_name}/manifests/v1", headers=ACCEPT_ALL
        ).json()
        listed = {
            _platform_key(entry["platform"]): entry["digest"]
            for entry in body["manifests"]
            if entry["platform"]["os"] != "unknown"
        }

        assert listed == pushed.platform_digests
        assert set(listed) == set(platforms)
        for digest in listed.values():
            assert head_digest(registry.url, repository_name, digest) == digest

    def test_oci_index_carries_one_buildkit_attestation_entry(
        self, registry: RegistryServer, repository_name: str
    ) -> None:
        pushed = push_image(registry.url, repository_name, "v1", "oci-index")

        body = json.loads(pushed.manifest)
        attestations = [
            e for e in body["manifests"] if e["platform"]["os"] == "unknown"
        ]

        assert [e["digest"] for e in attestations] == list(pushed.attestation_digests)
        assert attestations[0]["platform"] == {
            "architecture": "unknown",
            "os": "unknown",
        }
        assert attestations[0]["annotations"] == {
            "vnd.docker.reference.digest": pushed.platform_digests["linux/amd64"],
            "vnd.docker.reference.type": "attestation-manifest",
        }
        assert head_digest(registry.url, repository_name, pushed.attestation_digests[0])

    def test_registry_rejects_oci_index_head_without_index_type_in_accept(
        self, registry: RegistryServer, repository_name: str
    ) -> None:
        """distribution 2.8 answers 404 rather than pick a platform from an OCI index."""
        push_image(registry.url, repository_name, "v1", "oci-index")

        response = httpx.head(
            f"{registry.url}/v2/{repository_name}/manifests/v1",
            headers={"Accept": DOCKER_MANIFEST},
        )

        assert response.status_code == 404

    def test_registry_converts_docker_list_to_amd64_manifest_for_narrow_accept(
        self, registry: RegistryServer, repository_name: str
    ) -> None:
        """distribution 2.8 serves the linux/amd64 manifest, not the list's digest."""
        pushed = push_image(registry.url, repository_name, "v1", "docker-list")

        response = httpx.head(
            f"{registry.url}/v2/{repository_name}/manifests/v1",
            headers={"Accept": DOCKER_MANIFEST},
        )

        assert response.status_code == 200
        assert response.headers["Content-Type"] == DOCKER_MANIFEST
        assert response.headers["Docker-Content-Digest"] != pushed.digest
        digest = response.headers["Docker-Content-Digest"]
        assert digest == pushed.platform_digests["linux/amd64"]

    def test_stop_ends_the_process_and_removes_its_storage(self) -> None:
        server = start_registry()
        try:
            push_image(server.url, "test/stop", "v1", "docker-v2")
            stored = any(server.root.rglob("data"))
        finally:
            server.stop()

        assert stored
        assert server.process.poll() is not None
        assert not server.root.exists()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/v2/", timeout=1.0)

    def test_basic_auth_registry_demands_its_credential(
        self, basic_auth_registry: RegistryServer, repository_name: str
    ) -> None:
        credential = basic_auth_registry.credential
        assert credential is not None

        refused = httpx.get(f"{basic_auth_registry.url}/v2/")
        pushed = push_image(
            basic_auth_registry.url,
            repository_name,
            "v1",
            "docker-v2",
            auth=credential.as_auth(),
        )
        digest = head_digest(
            basic_auth_registry.url, repository_name, "v1", auth=credential.as_auth()
        )

        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert digest == pushed.digest


def _platform_key(platform: dict[str, str]) -> str:
    parts = [platform["os"], platform["architecture"], platform.get("variant", "")]
    return "/".join(p for p in parts if p)


def _fetch_token(client: httpx.Client, hub: HubDouble, repository: str) -> str:
    response = client.get(
        hub.realm,
        params={
            "service": "registry.docker.io",
            "scope": f"repository:{repository}:pull",
        },
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def _manifest_url(hub: HubDouble, repository: str, tag: str) -> str:
    return f"{hub.url}/v2/{repository}/manifests/{tag}"


class TestHubDouble:
    def test_ping_without_token_gets_bearer_challenge_without_scope(
        self, hub: HubDouble
    ) -> None:
        response = httpx.get(f"{hub.url}/v2/")

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer realm="{hub.url}/token",service="registry.docker.io"'
        )
        assert hub.counts["unauthorized"] == 1

    def test_manifest_without_token_gets_challenge_with_pull_scope(
        self, hub: HubDouble, repository_name: str
    ) -> None:
        response = httpx.head(_manifest_url(hub, repository_name, "v1"))

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer realm="{hub.url}/token",service="registry.docker.io",'
            f'scope="repository:{repository_name}:pull"'
        )

    def test_token_response_holds_token_access_token_and_expiry(
        self, hub: HubDouble, repository_name: str
    ) -> None:
        hub.behaviour.token_ttl = 42
        scope = f"repository:{repository_name}:pull"

        response = httpx.get(
            hub.realm, params={"service": "registry.docker.io", "scope": scope}
        )

        body = response.json()
        assert response.status_code == 200
        assert body["token"] == body["access_token"]
        assert len(body["token"]) >= 16
        assert body["expires_in"] == 42
        assert body["issued_at"].endswith("Z")
        assert hub.tokens_by_scope == {scope: 1}

    def test_head_with_token_proxies_digest_and_adds_ratelimit_headers(
        self, hub: HubDouble, registry: RegistryServer, repository_name: str
    ) -> None:
        pushed = push_image(registry.url, repository_name, "3", "oci-index")
        hub.behaviour.source = "203.0.113.7"

        with httpx.Client() as client:
            token = _fetch_token(client, hub, repository_name)
            response = client.head(
                _manifest_url(hub, repository_name, "3"),
                headers={**ACCEPT_ALL, "Authorization": f"Bearer {token}"},
            )

        assert response.status_code == 200
        assert response.headers["Docker-Content-Digest"] == pushed.digest
        assert response.headers["Content-Type"] == OCI_INDEX
        assert int(response.headers["Content-Length"]) == len(pushed.manifest)
        assert response.headers["ratelimit-limit"] == "100;w=21600"
        assert response.headers["ratelimit-remaining"] == "100;w=21600"
        assert response.headers["docker-ratelimit-source"] == "203.0.113.7"
        assert hub.requests[-1].path == f"/v2/{repository_name}/manifests/3"

    def test_get_spends_a_pull_and_head_does_not(
        self, hub: HubDouble, registry: RegistryServer, repository_name: str
    ) -> None:
        pushed = push_image(registry.url, repository_name, "v1", "docker-list")
        url = _manifest_url(hub, repository_name, "v1")

        with httpx.Client() as client:
            token = _fetch_token(client, hub, repository_name)
            headers = {**ACCEPT_ALL, "Authorization": f"Bearer {token}"}
            head = client.head(url, headers=headers)
            get = client.get(url, headers=headers)
            head_after = client.head(url, headers=headers)

        assert head.headers["ratelimit-remaining"] == "100;w=21600"
        assert get.headers["ratelimit-remaining"] == "99;w=21600"
        assert head_after.headers["ratelimit-remaining"] == "99;w=21600"
        assert get.content == pushed.manifest
        assert get.headers["Content-Type"] == DOCKER_LIST
        assert hub.behaviour.remaining == 99
        assert hub.counts["get_manifest"] == 1
        assert hub.counts["head_manifest"] == 2

    def test_get_with_no_pulls_left_gets_429_while_head_still_answers(
        self, hub: HubDouble, registry: RegistryServer, repository_name: str
    ) -> None:
        pushed = push_image(registry.url, repository_name, "v1", "docker-v2")
        hub.behaviour.remaining = 1
        hub.behaviour.retry_after = 30
        url = _manifest_url(hub, repository_name, "v1")

        with httpx.Client() as client:
            token = _fetch_token(client, hub, repository_name)
            headers = {**ACCEPT_ALL, "Authorization": f"Bearer {token}"}
            last_pull = client.get(url, headers=headers)
            refused = client.get(url, headers=headers)
            head = client.head(url, headers=headers)

        assert last_pull.status_code == 200
        assert refused.status_code == 429
        assert refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert refused.headers["Retry-After"] == "30"
        assert refused.headers["ratelimit-remaining"] == "0;w=21600"
        assert refused.headers["docker-ratelimit-source"] == "127.0.0.1"
        assert head.status_code == 200
        assert head.headers["Docker-Content-Digest"] == pushed.digest
        assert hub.counts["rate_limited"] == 1

    def test_ratelimit_headers_can_be_switched_off(
        self, hub: HubDouble, registry: RegistryServer, repository_name: str
    ) -> None:
        push_image(registry.url, repository_name, "v1", "docker-v2")
        hub.behaviour.send_ratelimit_headers = False

        with httpx.Client() as client:
            token = _fetch_token(client, hub, repository_name)
            response = client.get(
                _manifest_url(hub, repository_name, "v1"),
                headers={**ACCEPT_ALL, "Authorization": f"Bearer {token}"},
            )

        assert response.status_code == 200
        assert "ratelimit-limit" not in response.headers
        assert "docker-ratelimit-source" not in response.headers

    def test_token_for_one_repository_does_not_open_another(
        self, hub: HubDouble, registry: RegistryServer, repository_name: str
    ) -> None:
        other = f"{repository_name}-other"
        push_image(registry.url, other, "v1", "docker-v2")

        with httpx.Client() as client:
            token = _fetch_token(client, hub, repository_name)
            response = client.head(
                _manifest_url(hub, other, "v1"),
                headers={**ACCEPT_ALL, "Authorization": f"Bearer {token}"},
            )

        assert response.status_code == 401
        challenge = response.headers["WWW-Authenticate"]
        assert f'scope="repository:{other}:pull"' in challenge
        assert 'error="insufficient_scope"' in challenge

    def test_expired_token_gets_invalid_token_challenge(
        self, hub: HubDouble, registry: RegistryServer, repository_name: str
    ) -> None:
        push_image(registry.url, repository_name, "v1", "docker-v2")
        hub.behaviour.token_ttl = 0

        with httpx.Client() as client:
            token = _fetch_token(client, hub, repository_name)
            response = client.head(
                _manifest_url(hub, repository_name, "v1"),
                headers={**ACCEPT_ALL, "Authorization": f"Bearer {token}"},
            )

        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]

    def test_token_endpoint_with_credentials_refuses_a_wrong_password(
        self, hub: HubDouble, repository_name: str
    ) -> None:
        hub.behaviour.credentials = ("watcher", "right")
        params = {
            "service": "registry.docker.io",
            "scope": f"repository:{repository_name}:pull",
        }

        wrong = httpx.get(hub.realm, params=params, auth=("watcher", "wrong"))
        anonymous = httpx.get(hub.realm, params=params)
        right = httpx.get(hub.realm, params=params, auth=("watcher", "right"))

        assert wrong.status_code == 401
        assert anonymous.status_code == 401
        assert right.status_code == 200
        assert hub.counts["token_denied"] == 2
        assert hub.tokens_by_scope == {params["scope"]: 1}

    def test_latency_delays_every_response(self, hub: HubDouble) -> None:
        hub.behaviour.latency = 0.2
        started = time.monotonic()

        httpx.get(f"{hub.url}/v2/")

        assert time.monotonic() - started >= 0.2

    def test_reset_counts_forgets_requests_but_keeps_tokens(
        self, hub: HubDouble, registry: RegistryServer, repository_name: str
    ) -> None:
        push_image(registry.url, repository_name, "v1", "docker-v2")

        with httpx.Client() as client:
            token = _fetch_token(client, hub, repository_name)
            hub.reset_counts()
            response = client.head(
                _manifest_url(hub, repository_name, "v1"),
                headers={**ACCEPT_ALL, "Authorization": f"Bearer {token}"},
            )

        assert response.status_code == 200
        assert hub.counts == {"head_manifest": 1}
        assert hub.tokens_by_scope == {}


class TestReceiver:
    def test_records_posted_json_with_path_and_headers(
        self, receiver: Receiver
    ) -> None:
        document = {"version": "1.0", "title": "t", "message": "m", "type": "info"}

        response = httpx.post(f"{receiver.url}/hook", json=document)

        (message,) = receiver.wait_for(1, timeout=2)
        assert response.status_code == 200
        assert message.path == "/hook"
        assert message.body == document
        assert message.headers["content-type"] == "application/json"

    def test_fail_next_answers_the_status_then_recovers(
        self, receiver: Receiver
    ) -> None:
        receiver.fail_next(1, status=503)

        failed = httpx.post(f"{receiver.url}/hook", json={"n": 1})
        delivered = httpx.post(f"{receiver.url}/hook", json={"n": 2})

        assert failed.status_code == 503
        assert delivered.status_code == 200
        assert [m.body for m in receiver.messages] == [{"n": 2}]
        assert [r.status for r in receiver.requests] == [503, 200]

    def test_wait_for_raises_with_what_arrived_on_timeout(
        self, receiver: Receiver
    ) -> None:
        httpx.post(f"{receiver.url}/hook", json={"n": 1})

        with pytest.raises(AssertionError, match=r"expected 2 message\(s\).*'n': 1"):
            receiver.wait_for(2, timeout=0.2)

    # Apprise 2.3 imports the stdlib's deprecated imghdr while loading its email
    # plugin; the warning is Apprise's, not ours, and Python 3.11 still ships it.
    @pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
    def test_apprise_json_url_delivers_to_the_receiver(
        self, receiver: Receiver
    ) -> None:
        """Apprise's own json:// plugin posts title, message and type here."""
        notifier = apprise.Apprise()
        assert notifier.add(receiver.apprise_url("/watch"))

        delivered = notifier.notify(title="digest changed", body="sha256:abc")

        (message,) = receiver.wait_for(1, timeout=5)
        assert delivered
        assert message.path == "/watch"
        assert message.body["title"] == "digest changed"
        assert message.body["message"] == "sha256:abc"
        assert message.body["type"] == "info"

    def test_stop_closes_the_port(self) -> None:
        receiver = Receiver()
        url = receiver.url

        receiver.stop()

        with pytest.raises(httpx.TransportError):
            httpx.post(f"{url}/hook", json={}, timeout=1.0)
