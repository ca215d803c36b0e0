"""Credentials: settings, then Docker's config.json and its helpers, then anonymous.

Credential helpers are real programs: small shell scripts written to ``tmp_path``,
which is put on PATH, as ``docker-credential-<name>`` would be.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fakes.registry import REALM, FakeRegistry, basic, client_for
from watcher.errors import AuthError
from watcher.reference import Reference
from watcher.registry.auth import Credential
from watcher.registry.credentials import (
    DOCKER_HUB_CONFIG_KEY,
    FoundCredential,
    config_key_registry,
    find_credential,
)

pytestmark = pytest.mark.anyio

SECRET = "planted-secret-5d1e"
ALICE = Credential("alice", SECRET)

#: Installs ``docker-credential-<name>`` running ``script``; returns its directory.
InstallHelper = Callable[[str, str], Path]


def auth_entry(username: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.fixture
def docker_config(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Writes a Docker config.json and gives its path."""

    def write(data: dict[str, Any]) -> Path:
        path = tmp_path / "docker" / "config.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(data), encoding="utf-8")
        return path

    return write


@pytest.fixture
def install_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InstallHelper:
    """Puts helper scripts in ``tmp_path/bin``, which goes first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    def install(name: str, script: str) -> Path:
        path = bin_dir / f"docker-credential-{name}"
        path.write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return bin_dir

    return install


def answering(username: str, secret: str, asked: str = "asked") -> str:
    """A helper script that records what it was asked and answers a credential."""
    answer = json.dumps({"ServerURL": "x", "Username": username, "Secret": secret})
    return f'cat > "$(dirname "$0")/{asked}"\necho \'{answer}\''


def events(logs: Iterable[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [log for log in logs if log["event"] == name]


class TestConfigKeys:
    @pytest.mark.parametrize(
        ("key", "registry"),
        [
            pytest.param("ghcr.io", "ghcr.io", id="host"),
            pytest.param("https://ghcr.io", "ghcr.io", id="https-url"),
            pytest.param("http://ghcr.io/v2/", "ghcr.io", id="url-with-path"),
            pytest.param("GHCR.IO", "ghcr.io", id="upper-case"),
            pytest.param(DOCKER_HUB_CONFIG_KEY, "docker.io", id="hub-index-url"),
            pytest.param("registry-1.docker.io", "docker.io", id="hub-api-host"),
            pytest.param("localhost:5000", "localhost:5000", id="host-port"),
        ],
    )
    def test_config_key_names_the_registry_as_references_do(
        self, key: str, registry: str
    ) -> None:
        assert config_key_registry(key) == registry


class TestFindCredential:
    async def test_settings_credential_wins_over_docker_config(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        helpers = install_helper("store", answering("bob", "other"))
        path = docker_config(
            {"auths": {"ghcr.io": auth_entry("bob", "other")}, "credsStore": "store"}
        )

        found = await find_credential("ghcr.io", ALICE, path)

        assert found == FoundCredential(ALICE, "config")
        assert not (helpers / "asked").exists()

    @pytest.mark.parametrize(
        ("key", "registry"),
        [
            pytest.param("ghcr.io", "ghcr.io", id="by-host"),
            pytest.param("https://ghcr.io", "ghcr.io", id="by-url"),
            pytest.param(DOCKER_HUB_CONFIG_KEY, "docker.io", id="docker-hub"),
            pytest.param("localhost:5000", "localhost:5000", id="host-port"),
        ],
    )
    async def test_auths_entry_with_base64_auth_is_used(
        self, docker_config: Callable[..., Path], key: str, registry: str
    ) -> None:
        path = docker_config({"auths": {key: auth_entry("alice", SECRET)}})

        found = await find_credential(registry, None, path)

        assert found == FoundCredential(ALICE, "docker-config")

    async def test_auths_entry_with_username_and_password_is_used(
        self, docker_config: Callable[..., Path]
    ) -> None:
        path = docker_config(
            {"auths": {"quay.io": {"username": "alice", "password": SECRET}}}
        )

        found = await find_credential("quay.io", None, path)

        assert found == FoundCredential(ALICE, "docker-config")

    async def test_password_may_hold_colons(
        self, docker_config: Callable[..., Path]
    ) -> None:
        path = docker_config({"auths": {"ghcr.io": auth_entry("alice", "a:b:c")}})

        found = await find_credential("ghcr.io", None, path)

        assert found.credential == Credential("alice", "a:b:c")

    @pytest.mark.parametrize(
        "config",
        [
            pytest.param({"auths": {"quay.io": auth_entry("a", "b")}}, id="other"),
            pytest.param({"auths": {"ghcr.io": {}}}, id="empty-entry"),
            pytest.param({}, id="empty-config"),
            pytest.param({"auths": "nonsense"}, id="auths-not-a-table"),
        ],
    )
    async def test_no_entry_for_the_registry_is_anonymous(
        self, docker_config: Callable[..., Path], config: dict[str, Any]
    ) -> None:
        path = docker_config(config)

        with capture_logs() as logs:
            found = await find_credential("ghcr.io", None, path)

        assert found == FoundCredential(None, "anonymous")
        assert [log["log_level"] for log in logs] == ["info"]

    async def test_missing_config_file_is_anonymous_without_warning(
        self, tmp_path: Path
    ) -> None:
        with capture_logs() as logs:
            found = await find_credential("ghcr.io", None, tmp_path / "none.json")

        assert found.source == "anonymous"
        assert events(logs, "credential.docker_config_unreadable") == []

    async def test_unreadable_config_file_warns_and_is_anonymous(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "config.json"
        path.write_text('{"auths": {"ghcr.io": {"auth": "' + SECRET, encoding="utf-8")

        with capture_logs() as logs:
            found = await find_credential("ghcr.io", None, path)

        assert found.source == "anonymous"
        (warning,) = events(logs, "credential.docker_config_unreadable")
        assert warning["path"] == str(path)
        assert warning["error_msg"] == "the file is not valid JSON"
        assert SECRET not in repr(logs)

    async def test_garbled_auth_warns_and_is_anonymous(
        self, docker_config: Callable[..., Path]
    ) -> None:
        path = docker_config({"auths": {"ghcr.io": {"auth": "not base64!"}}})

        with capture_logs() as logs:
            found = await find_credential("ghcr.io", None, path)

        assert found.source == "anonymous"
        (warning,) = events(logs, "credential.docker_config_invalid")
        assert "docker login ghcr.io" in warning["error_msg"]

    async def test_identity_token_is_not_supported_and_says_so(
        self, docker_config: Callable[..., Path]
    ) -> None:
        entry = {"identitytoken": SECRET, **auth_entry("0000", "")}
        path = docker_config({"auths": {"myacr.azurecr.io": entry}})

        with capture_logs() as logs:
            found = await find_credential("myacr.azurecr.io", None, path)

        assert found == FoundCredential(None, "anonymous")
        (warning,) = events(logs, "credential.identity_token_unsupported")
        assert warning["log_level"] == "warning"
        assert "identity token" in warning["error_msg"]
        assert '[registries."myacr.azurecr.io"]' in warning["error_msg"]
        assert SECRET not in repr(logs)

    async def test_source_is_logged_at_info_without_the_secret(
        self, docker_config: Callable[..., Path]
    ) -> None:
        path = docker_config({"auths": {"ghcr.io": auth_entry("alice", SECRET)}})

        with capture_logs() as logs:
            await find_credential("ghcr.io", None, path)

        assert logs == [
            {
                "event": "credential.source",
                "log_level": "info",
                "registry": "ghcr.io",
                "source": "docker-config",
            }
        ]


class TestHelpers:
    async def test_cred_helper_is_asked_for_the_registry_host(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        helpers = install_helper("gcr", answering("alice", SECRET))
        path = docker_config({"credHelpers": {"gcr.io": "gcr"}})

        with capture_logs() as logs:
            found = await find_credential("gcr.io", None, path)

        assert found == FoundCredential(ALICE, "helper:gcr")
        assert (helpers / "asked").read_text() == "gcr.io"
        assert SECRET not in repr(logs)

    async def test_docker_hub_helper_is_asked_for_the_index_url(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        helpers = install_helper("desktop", answering("alice", SECRET))
        path = docker_config({"credsStore": "desktop"})

        found = await find_credential("docker.io", None, path)

        assert found.source == "helper:desktop"
        assert (helpers / "asked").read_text() == DOCKER_HUB_CONFIG_KEY

    async def test_creds_store_serves_every_registry(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        install_helper("pass", answering("alice", SECRET))
        path = docker_config({"credsStore": "pass"})

        found = [
            await find_credential(name, None, path)
            for name in ("ghcr.io", "localhost:5000")
        ]

        assert found == [FoundCredential(ALICE, "helper:pass")] * 2

    async def test_cred_helper_wins_over_creds_store_and_auths(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        """As in the Docker CLI: a registry's helper, then the store, then auths."""
        helpers = install_helper("ecr", answering("alice", SECRET, "asked-ecr"))
        install_helper("store", answering("bob", "x", "asked-store"))
        path = docker_config(
            {
                "auths": {"ecr.test": auth_entry("carol", "y")},
                "credHelpers": {"ecr.test": "ecr"},
                "credsStore": "store",
            }
        )

        found = await find_credential("ecr.test", None, path)

        assert found == FoundCredential(ALICE, "helper:ecr")
        assert not (helpers / "asked-store").exists()

    async def test_creds_store_wins_over_inline_auths(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        install_helper("store", answering("alice", SECRET))
        path = docker_config(
            {"auths": {"ghcr.io": auth_entry("bob", "old")}, "credsStore": "store"}
        )

        found = await find_credential("ghcr.io", None, path)

        assert found == FoundCredential(ALICE, "helper:store")

    @pytest.mark.parametrize(
        ("helper", "script", "reason", "text"),
        [
            pytest.param(
                "absent", None, "missing", "docker-credential-absent is not on PATH"
            ),
            pytest.param(
                "../evil",
                None,
                "missing",
                "docker-credential-../evil is not on PATH",
                id="path-in-name",
            ),
            pytest.param(
                "broken",
                "echo 'keychain locked' >&2\nexit 3",
                "exit",
                "exit status 3: keychain locked",
            ),
            pytest.param(
                "half-done",
                f'echo \'{{"Username": "alice", "Secret": "{SECRET}"}}\'\nexit 1',
                "exit",
                "exit status 1: (JSON output withheld)",
            ),
            pytest.param("garbled", "echo 'not json'", "bad_output", "not a JSON"),
            pytest.param(
                "partial", 'echo \'{"Username": "alice"}\'', "bad_output", "Secret"
            ),
        ],
    )
    async def test_failing_helper_warns_and_goes_anonymous(
        self,
        docker_config: Callable[..., Path],
        install_helper: InstallHelper,
        helper: str,
        script: str | None,
        reason: str,
        text: str,
    ) -> None:
        if script is not None:
            install_helper(helper, script)
        path = docker_config({"credHelpers": {"ghcr.io": helper}})

        with capture_logs() as logs:
            found = await find_credential("ghcr.io", None, path)

        assert found == FoundCredential(None, "anonymous")
        (warning,) = events(logs, "credential.helper_failed")
        assert (warning["registry"], warning["reason"]) == ("ghcr.io", reason)
        assert warning["helper"] == f"docker-credential-{helper}"
        assert text in warning["error_msg"]
        assert warning["error_msg"].endswith("going anonymous")
        assert SECRET not in repr(logs)

    async def test_helper_name_cannot_name_a_path(
        self,
        docker_config: Callable[..., Path],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A config naming ``x/../evil`` must not run ./evil from the working dir."""
        monkeypatch.chdir(tmp_path)
        (tmp_path / "docker-credential-x").mkdir()
        evil = tmp_path / "evil"
        evil.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n", encoding="utf-8")
        evil.chmod(0o755)
        path = docker_config({"credsStore": "x/../evil"})

        found = await find_credential("ghcr.io", None, path)

        assert found.source == "anonymous"
        assert not (tmp_path / "ran").exists()

    async def test_helper_without_credentials_means_anonymous_quietly(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        """docker-credential-helpers say "not found" with exit 1: not logged in."""
        install_helper(
            "osxkeychain", "echo 'credentials not found in native keychain'\nexit 1"
        )
        path = docker_config({"credsStore": "osxkeychain"})

        with capture_logs() as logs:
            found = await find_credential("ghcr.io", None, path)

        assert found == FoundCredential(None, "anonymous")
        assert [log["event"] for log in logs] == ["credential.source"]

    async def test_hung_helper_is_stopped_after_the_timeout(
        self,
        docker_config: Callable[..., Path],
        install_helper: InstallHelper,
        tmp_path: Path,
    ) -> None:
        install_helper("slow", f'echo $$ > "{tmp_path}/pid"\nexec sleep 30')
        path = docker_config({"credsStore": "slow"})
        started = time.monotonic()

        with capture_logs() as logs:
            found = await find_credential("ghcr.io", None, path, helper_timeout=0.5)

        assert time.monotonic() - started < 5
        assert found.source == "anonymous"
        (warning,) = events(logs, "credential.helper_failed")
        assert warning["reason"] == "timeout"
        pid = int((tmp_path / "pid").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    async def test_hung_helper_script_is_stopped_with_its_children(
        self,
        docker_config: Callable[..., Path],
        install_helper: InstallHelper,
        tmp_path: Path,
    ) -> None:
        """A shell helper whose child holds the pipes open: pass, gcloud wrappers."""
        install_helper("wrapper", f'sleep 30 &\necho $! > "{tmp_path}/pid"\nwait')
        path = docker_config({"credsStore": "wrapper"})
        started = time.monotonic()

        found = await find_credential("ghcr.io", None, path, helper_timeout=0.5)

        assert time.monotonic() - started < 5
        assert found.source == "anonymous"
        assert not running(int((tmp_path / "pid").read_text()))

    async def test_helper_identity_token_is_not_supported(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        install_helper("acr", answering("<token>", SECRET))
        path = docker_config({"credHelpers": {"myacr.azurecr.io": "acr"}})

        with capture_logs() as logs:
            found = await find_credential("myacr.azurecr.io", None, path)

        assert found.source == "anonymous"
        (warning,) = events(logs, "credential.identity_token_unsupported")
        assert warning["source"] == "helper:acr"
        assert SECRET not in repr(logs)


class TestClientCredentials:
    async def test_docker_config_credential_answers_a_basic_challenge(
        self, docker_config: Callable[..., Path]
    ) -> None:
        fake = FakeRegistry(auth="basic", credentials=("alice", SECRET))
        for tag in ("1", "2", "3"):
            fake.add(f"acme/api:{tag}")
        path = docker_config({"auths": {"ghcr.io": auth_entry("alice", SECRET)}})

        with capture_logs() as logs:
            async with client_for(fake, docker_config=path) as client:
                for tag in ("1", "2", "3"):
                    await client.head_manifest(
                        Reference.parse(f"ghcr.io/acme/api:{tag}")
                    )

        assert fake.heads[-1].headers["authorization"] == basic("alice", SECRET)
        assert [
            (log["registry"], log["source"])
            for log in events(logs, "credential.source")
        ] == [("ghcr.io", "docker-config")]
        assert SECRET not in repr(logs)

    async def test_helper_credential_is_traded_for_a_token(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        install_helper("store", answering("alice", SECRET))
        fake = FakeRegistry(auth="bearer", credentials=("alice", SECRET))
        fake.add("acme/api:stable")
        path = docker_config({"credsStore": "store"})

        async with client_for(fake, docker_config=path) as client:
            await client.head_manifest(Reference.parse("ghcr.io/acme/api:stable"))

        assert fake.token_requests[0].headers["authorization"] == basic("alice", SECRET)

    async def test_burst_of_checks_runs_the_helper_once(
        self,
        docker_config: Callable[..., Path],
        install_helper: InstallHelper,
        tmp_path: Path,
    ) -> None:
        answer = json.dumps({"Username": "alice", "Secret": SECRET})
        install_helper("store", f"echo run >> {tmp_path}/runs\necho '{answer}'")
        fake = FakeRegistry(auth="basic", credentials=("alice", SECRET))
        tags = [str(number) for number in range(10)]
        for tag in tags:
            fake.add(f"acme/api:{tag}")
        path = docker_config({"credsStore": "store"})

        async with client_for(fake, docker_config=path) as client:
            await asyncio.gather(
                *(
                    client.head_manifest(Reference.parse(f"ghcr.io/acme/api:{tag}"))
                    for tag in tags
                )
            )

        assert (tmp_path / "runs").read_text().splitlines() == ["run"]
        assert fake.heads[-1].headers["authorization"] == basic("alice", SECRET)

    async def test_settings_credential_is_used_before_docker_config(
        self, docker_config: Callable[..., Path]
    ) -> None:
        fake = FakeRegistry(auth="basic", credentials=("alice", SECRET))
        fake.add("acme/api:stable")
        path = docker_config({"auths": {"ghcr.io": auth_entry("bob", "wrong")}})

        async with client_for(
            fake, docker_config=path, username="alice", password=SECRET
        ) as client:
            await client.head_manifest(Reference.parse("ghcr.io/acme/api:stable"))

        assert fake.heads[-1].headers["authorization"] == basic("alice", SECRET)

    async def test_registry_without_a_challenge_never_runs_a_helper(
        self, docker_config: Callable[..., Path], install_helper: InstallHelper
    ) -> None:
        helpers = install_helper("store", answering("alice", SECRET))
        fake = FakeRegistry()
        fake.add("acme/api:stable")
        path = docker_config({"credsStore": "store"})

        with capture_logs() as logs:
            async with client_for(fake, docker_config=path) as client:
                await client.head_manifest(Reference.parse("ghcr.io/acme/api:stable"))

        assert not (helpers / "asked").exists()
        assert events(logs, "credential.source") == []

    async def test_refused_docker_config_credential_points_at_docker_login(
        self, docker_config: Callable[..., Path]
    ) -> None:
        fake = FakeRegistry(auth="basic", credentials=("alice", "right"))
        path = docker_config({"auths": {"ghcr.io": auth_entry("alice", SECRET)}})

        async with client_for(fake, docker_config=path) as client:
            with pytest.raises(AuthError) as caught:
                await client.head_manifest(Reference.parse("ghcr.io/acme/api:stable"))

        assert "401 with basic credentials" in str(caught.value)
        assert "docker login stored in Docker's config.json for ghcr.io" in str(
            caught.value
        )
        assert SECRET not in str(caught.value)


class TestRealmHosts:
    async def test_credential_is_not_sent_to_a_realm_on_a_host_not_allowed(
        self,
    ) -> None:
        fake = FakeRegistry(auth="bearer")
        fake.add("acme/api:stable")

        async with client_for(
            fake, username="alice", password=SECRET, realm_hosts=None
        ) as client:
            with pytest.raises(AuthError) as caught:
                await client.head_manifest(Reference.parse("ghcr.io/acme/api:stable"))

        message = str(caught.value)
        assert "token realm on auth.fake.test, not ghcr.io" in message
        assert (
            'add realm_hosts = ["auth.fake.test"] to [registries."ghcr.io"]' in message
        )
        assert (caught.value.method, caught.value.url) == ("GET", REALM)
        assert fake.token_requests == []

    async def test_credential_is_sent_to_a_realm_host_allowed_in_settings(
        self,
    ) -> None:
        fake = FakeRegistry(auth="bearer", credentials=("alice", SECRET))
        fake.add("acme/api:stable")

        async with client_for(
            fake, username="alice", password=SECRET, realm_hosts=["AUTH.fake.test"]
        ) as client:
            await client.head_manifest(Reference.parse("ghcr.io/acme/api:stable"))

        assert fake.token_requests[0].headers["authorization"] == basic("alice", SECRET)

    async def test_anonymous_token_is_fetched_from_any_realm_host(self) -> None:
        fake = FakeRegistry(auth="bearer")
        fake.add("acme/api:stable")

        async with client_for(fake, realm_hosts=None) as client:
            await client.head_manifest(Reference.parse("ghcr.io/acme/api:stable"))

        assert "authorization" not in fake.token_requests[0].headers

    async def test_docker_hub_credential_goes_to_auth_docker_io_by_default(
        self,
    ) -> None:
        fake = FakeRegistry(
            auth="bearer",
            realm="https://auth.docker.io/token",
            credentials=("alice", SECRET),
        )
        fake.add("library/nginx:1.27")

        async with client_for(
            fake, username="alice", password=SECRET, realm_hosts=None
        ) as client:
            await client.head_manifest(Reference.parse("nginx:1.27"))

        (token_request,) = fake.token_requests
        assert token_request.url.host == "auth.docker.io"
        assert token_request.headers["authorization"] == basic("alice", SECRET)

    async def test_realm_on_another_port_of_the_registry_host_is_allowed(
        self,
    ) -> None:
        fake = FakeRegistry(
            auth="bearer",
            realm="http://localhost:5001/token",
            credentials=("alice", SECRET),
        )
        fake.add("acme/api:1")

        async with client_for(
            fake, username="alice", password=SECRET, realm_hosts=None
        ) as client:
            await client.head_manifest(Reference.parse("localhost:5000/acme/api:1"))

        assert fake.token_requests[0].headers["authorization"] == basic("alice", SECRET)

    async def test_realm_hosts_entry_may_name_a_port(self) -> None:
        fake = FakeRegistry(
            auth="bearer",
            realm="https://tokens.test:8443/token",
            credentials=("alice", SECRET),
        )
        fake.add("acme/api:stable")

        async with client_for(
            fake, username="alice", password=SECRET, realm_hosts=["tokens.test:8443"]
        ) as client:
            await client.head_manifest(Reference.parse("ghcr.io/acme/api:stable"))

        assert fake.token_requests[0].url.port == 8443


def running(pid: int) -> bool:
    """Whether ``pid`` runs; an orphan killed but not yet reaped (a zombie) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
