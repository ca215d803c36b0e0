"""The token-auth registry is real: distribution 2.8 checks our token server's JWTs.

Plain httpx shows the registry's side of the token dance, then watcher's own
RegistryClient runs against it. The registry and its token server are the session's
`token_registry` (tests/fixtures.py); each test pushes to its own `repository_name`.
"""

import asyncio
import time

import httpx
import pytest
from pydantic import SecretStr

from tests.real.images import MANIFEST_ACCEPT, push_image
from tests.real.token_server import (
    Access,
    TokenRegistry,
    TokenServer,
    bearer_challenge,
)
from watcher.config import RegistrySettings
from watcher.errors import AuthError
from watcher.reference import Digest, Reference
from watcher.registry import RegistryClient

ACCEPT_ALL = {"Accept": ", ".join(MANIFEST_ACCEPT)}
# Past distribution's 60 s leeway on exp: issued 10 min ago, valid for 5.
EXPIRED_ISSUED_AGO_SECONDS = 600
CONCURRENT_HEADS = 10


def fetch_token(
    token_registry: TokenRegistry,
    scope: str,
    auth: tuple[str, str] | None = None,
) -> httpx.Response:
    server = token_registry.token_server
    return httpx.get(
        server.realm, params={"service": server.service, "scope": scope}, auth=auth
    )


def anonymous_token(token_registry: TokenRegistry, scope: str) -> str:
    response = fetch_token(token_registry, scope)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def head(
    token_registry: TokenRegistry, repository: str, tag: str, token: str | None
) -> httpx.Response:
    headers = dict(ACCEPT_ALL)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"

    return httpx.head(
        f"{token_registry.url}/v2/{repository}/manifests/{tag}", headers=headers
    )


def pull(repository: str) -> str:
    return f"repository:{repository}:pull"


class TestTokenRegistry:
    def test_anonymous_ping_is_challenged_with_the_token_servers_realm(
        self, token_registry: TokenRegistry
    ) -> None:
        response = httpx.get(f"{token_registry.url}/v2/")

        assert response.status_code == 401
        assert bearer_challenge(response) == {
            "realm": token_registry.token_server.realm,
            "service": token_registry.token_server.service,
        }

    def test_manifest_challenge_asks_pull_on_its_repository(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        response = head(token_registry, repository_name, "1.0", token=None)

        assert response.status_code == 401
        challenge = bearer_challenge(response)
        assert challenge is not None
        assert challenge["scope"] == pull(repository_name)

    def test_anonymous_token_opens_a_head_with_the_pushed_digest(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        pushed = push_image(
            token_registry.url,
            repository_name,
            "1.0",
            "oci-index",
            auth=token_registry.push_auth,
        )
        token = anonymous_token(token_registry, pull(repository_name))

        response = head(token_registry, repository_name, "1.0", token)

        assert response.status_code == 200
        assert response.headers["Docker-Content-Digest"] == pushed.digest

    def test_token_for_one_repository_is_refused_on_another(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        other = f"{repository_name}/other"
        token = anonymous_token(token_registry, pull(other))

        response = head(token_registry, repository_name, "1.0", token)

        assert response.status_code == 401
        challenge = bearer_challenge(response)
        assert challenge is not None
        assert challenge["error"] == "insufficient_scope"

    def test_expired_token_is_refused_where_a_fresh_one_is_taken(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        """Both tokens differ only in their times: the expiry is what is refused."""
        push_image(
            token_registry.url,
            repository_name,
            "1.0",
            "docker-v2",
            auth=token_registry.push_auth,
        )
        server = token_registry.token_server
        access = [Access.repository(repository_name)]
        issued_long_ago = time.time() - EXPIRED_ISSUED_AGO_SECONDS
        expired = server.mint(access, issued_at=issued_long_ago)
        fresh = server.mint(access)

        refused = head(token_registry, repository_name, "1.0", expired)
        taken = head(token_registry, repository_name, "1.0", fresh)

        assert refused.status_code == 401
        challenge = bearer_challenge(refused)
        assert challenge is not None
        assert challenge["error"] == "invalid_token"
        assert taken.status_code == 200

    def test_token_signed_by_an_untrusted_key_is_refused(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        """A well-formed token from another server: its x5c chains to no root."""
        stranger = TokenServer(
            service=token_registry.token_server.service,
            issuer=token_registry.token_server.issuer,
        )
        token = stranger.mint([Access.repository(repository_name)])

        response = head(token_registry, repository_name, "1.0", token)

        assert response.status_code == 401
        challenge = bearer_challenge(response)
        assert challenge is not None
        assert challenge["error"] == "invalid_token"

    def test_anonymous_token_cannot_start_an_upload(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        token = anonymous_token(
            token_registry, f"repository:{repository_name}:pull,push"
        )

        response = httpx.post(
            f"{token_registry.url}/v2/{repository_name}/blobs/uploads/",
            headers={"Authorization": f"Bearer {token}"},
        )

        assert response.status_code == 401
        challenge = bearer_challenge(response)
        assert challenge is not None
        assert challenge["error"] == "insufficient_scope"


class TestTokenServer:
    def test_credential_gets_pull_and_push_anonymous_only_pull(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        scope = f"repository:{repository_name}:pull,push"
        credential = token_registry.credential

        fetch_token(token_registry, scope, auth=credential.as_auth())
        fetch_token(token_registry, scope)

        granted = {
            request.username: request.granted
            for request in token_registry.token_server.requests_for(repository_name)
        }
        assert granted == {
            credential.username: (Access.repository(repository_name, "pull", "push"),),
            None: (Access.repository(repository_name, "pull"),),
        }

    def test_wrong_password_is_denied_and_counted(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        server = token_registry.token_server
        before = server.counts
        username = token_registry.credential.username

        response = fetch_token(
            token_registry, pull(repository_name), auth=(username, "wrong")
        )

        assert response.status_code == 401
        assert "token" not in response.json()
        assert server.counts - before == {"token": 1, "token_denied": 1}

    def test_push_auth_pushes_with_the_credential(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        push_image(
            token_registry.url,
            repository_name,
            "1.0",
            "docker-v2",
            auth=token_registry.push_auth,
        )

        requests = token_registry.token_server.requests_for(repository_name)
        assert [(r.username, r.status) for r in requests] == [
            (token_registry.credential.username, 200)
        ]


class RecordingTransport(httpx.AsyncBaseTransport):
    """The network, noting each request's method, path and answer status."""

    def __init__(self) -> None:
        self._network = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[str, str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._network.handle_async_request(request)
        self.seen.append((request.method, request.url.path, response.status_code))
        return response

    async def aclose(self) -> None:
        await self._network.aclose()


def reference(token_registry: TokenRegistry, repository: str, tag: str) -> Reference:
    return Reference.parse(f"{token_registry.host}/{repository}:{tag}")


class TestWatcherClientOnTokenRegistry:
    @pytest.mark.anyio
    async def test_concurrent_heads_pay_one_challenge_and_one_token_per_repository(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        repositories = [f"{repository_name}/a", f"{repository_name}/b"]
        digests = {
            repository: push_image(
                token_registry.url,
                repository,
                "1.0",
                "oci-index",
                auth=token_registry.push_auth,
            ).digest
            for repository in repositories
        }
        settings = RegistrySettings(endpoint=token_registry.url)
        transport = RecordingTransport()
        wanted = [repositories[i % 2] for i in range(CONCURRENT_HEADS)]

        async def burst(client: RegistryClient) -> list[str]:
            results = await asyncio.gather(
                *(
                    client.head_manifest(reference(token_registry, name, "1.0"))
                    for name in wanted
                )
            )
            return [str(result.descriptor.digest) for result in results]

        async with RegistryClient(lambda name: settings, transport=transport) as client:
            first = await burst(client)
            # The second burst must ride on the tokens the first one fetched.
            second = await burst(client)

        expected = [digests[name] for name in wanted]
        assert first == expected
        assert second == expected
        statuses = [status for method, _, status in transport.seen if method == "HEAD"]
        assert sorted(statuses) == [200] * 2 * CONCURRENT_HEADS + [401]
        token_gets = [path for method, path, _ in transport.seen if method == "GET"]
        assert token_gets == ["/token", "/token"]
        server = token_registry.token_server
        for repository in repositories:
            asked = [request.scopes for request in server.requests_for(repository)]
            # push_auth's token request asked pull,push; watcher's asks pull only.
            assert asked.count((pull(repository),)) == 1

    @pytest.mark.anyio
    async def test_configured_credential_goes_to_the_token_server(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        pushed = push_image(
            token_registry.url,
            repository_name,
            "1.0",
            "docker-v2",
            auth=token_registry.push_auth,
        )
        credential = token_registry.credential
        settings = RegistrySettings(
            endpoint=token_registry.url,
            username=credential.username,
            password=SecretStr(credential.password),
        )
        server = token_registry.token_server
        before = server.counts

        async with RegistryClient(lambda name: settings) as client:
            result = await client.head_manifest(
                reference(token_registry, repository_name, "1.0")
            )

        assert result.descriptor.digest == Digest.parse(pushed.digest)
        assert server.counts - before == {"token": 1, "token_authenticated": 1}
        watcher_requests = [
            request
            for request in server.requests_for(repository_name)
            if request.scopes == (pull(repository_name),)
        ]
        assert [request.username for request in watcher_requests] == [
            credential.username
        ]

    @pytest.mark.anyio
    async def test_wrong_password_fails_with_auth_error(
        self, token_registry: TokenRegistry, repository_name: str
    ) -> None:
        settings = RegistrySettings(
            endpoint=token_registry.url,
            username=token_registry.credential.username,
            password=SecretStr("wrong"),
        )
        server = token_registry.token_server
        before = server.counts

        async with RegistryClient(lambda name: settings) as client:
            with pytest.raises(AuthError) as caught:
                await client.head_manifest(
                    reference(token_registry, repository_name, "1.0")
                )

        assert caught.value.status == 401
        assert server.counts - before == {"token": 1, "token_denied": 1}
