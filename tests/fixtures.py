"""pytest fixtures giving the real components and doubles of tests/real and tests/fakes.

Loaded through `pytest_plugins = ["tests.fixtures"]` in tests/conftest.py. The registries
are shared by the session, so tests keep apart by pushing to their own
`repository_name`; the hub double and the receiver are fresh for each test.
"""

import re
import secrets
from collections.abc import Callable, Iterator

import pytest

from tests.fakes.hub import HubDouble
from tests.real import ports, prometheus
from tests.real.mqtt import BrokerUnavailableError, MqttSubscriber
from tests.real.receiver import Receiver
from tests.real.registry import (
    BasicCredential,
    RegistryServer,
    ToolMissingError,
    start_registry,
)
from tests.real.smtp import SmtpServer
from tests.real.token_server import BearerAuth, TokenRegistry, TokenServer

_REPOSITORY_COMPONENT_MAX = 40


@pytest.fixture(scope="session")
def registry() -> Iterator[RegistryServer]:
    """Give a real `docker-registry` on 127.0.0.1, without auth, for the session.

    Fails (not skips) when the binary is missing: CI installs it, so a missing
    registry is a broken environment, not an optional feature.
    """
    try:
        server = start_registry()
    except ToolMissingError as exc:
        pytest.fail(f"{exc}; integration tests need a real registry", pytrace=False)

    with server:
        yield server


@pytest.fixture(scope="session")
def basic_auth_registry() -> Iterator[RegistryServer]:
    """Give a real `docker-registry` that demands HTTP basic auth (htpasswd).

    `.credential` holds the accepted user and password. Skips when Apache's
    `htpasswd` is missing; fails when the registry itself is.
    """
    credential = BasicCredential("watcher", secrets.token_urlsafe(12))
    try:
        server = start_registry(credential=credential)
    except ToolMissingError as exc:
        if exc.tool == "htpasswd":
            pytest.skip(f"{exc}; it writes the bcrypt htpasswd file")

        pytest.fail(f"{exc}; integration tests need a real registry", pytrace=False)

    with server:
        yield server


@pytest.fixture(scope="session")
def token_registry() -> Iterator[TokenRegistry]:
    """Give a real `docker-registry` with token auth, behind our own token server.

    Anyone gets a pull token; `.credential` also gets push, and `.push_auth` does
    the token dance with it for `push_image(..., auth=...)`. The token server
    (`.token_server`, with `.counts` and `.requests_for()`) lives for the session:
    compare counts before and after, or look at your own repository's requests.
    """
    credential = BasicCredential("pusher", secrets.token_urlsafe(12))
    with TokenServer(credential=credential) as token_server:
        try:
            server = start_registry(token_auth=token_server.token_auth())
        except ToolMissingError as exc:
            pytest.fail(f"{exc}; integration tests need a real registry", pytrace=False)

        with server:
            yield TokenRegistry(
                registry=server,
                token_server=token_server,
                credential=credential,
                push_auth=BearerAuth(credential),
            )


@pytest.fixture
def repository_name(request: pytest.FixtureRequest) -> str:
    """Give a repository name no other test uses: `test/<test name>-<random hex>`."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    slug = slug[:_REPOSITORY_COMPONENT_MAX].strip("-") or "repository"
    return f"test/{slug}-{secrets.token_hex(4)}"


@pytest.fixture
def hub(registry: RegistryServer) -> Iterator[HubDouble]:
    """Give a Docker-Hub-like double (tokens, rate limits) before the session registry.

    Push images to `registry.url` (the double is read-only); read through `hub.url`.
    """
    with HubDouble(registry.url) as double:
        yield double


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Give a running HTTP receiver; `receiver.apprise_url()` is the Apprise target."""
    with Receiver() as running:
        yield running


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """Give a running SMTP server (aiosmtpd, no TLS) that accepts one user's AUTH.

    `smtp_server.apprise_url()` is the `mailto://` target, password included;
    `.messages` holds the mail accepted and `.fail_next(n)` refuses some.
    """
    with SmtpServer("watcher", f"smtp-pw-{secrets.token_hex(8)}") as running:
        yield running


@pytest.fixture
def mqtt_subscriber(request: pytest.FixtureRequest) -> Iterator[MqttSubscriber]:
    """Give a subscriber on the Mosquitto broker at 127.0.0.1:1883, on a fresh topic.

    `mqtt_subscriber.apprise_url()` is the `mqtt://` target. Fails (not skips)
    when no broker answers: CI runs one, so its absence is a broken environment.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    topic = f"watcher-tests/{slug[:_REPOSITORY_COMPONENT_MAX]}-{secrets.token_hex(4)}"
    try:
        subscriber = MqttSubscriber(topic)
    except BrokerUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)

    with subscriber:
        yield subscriber


@pytest.fixture
def free_port() -> int:
    """Give a TCP port on 127.0.0.1 that was free a moment ago."""
    return ports.free_port()


@pytest.fixture
def start_prometheus() -> Iterator[Callable[..., prometheus.PrometheusServer]]:
    """Give `tests.real.prometheus.start_prometheus`; what it starts stops after the test.

    Fails (not skips) when Debian's `prometheus` is missing: CI installs it.
    """
    started: list[prometheus.PrometheusServer] = []

    def start(
        config: str, files: dict[str, str] | None = None
    ) -> prometheus.PrometheusServer:
        try:
            server = prometheus.start_prometheus(config, files)
        except ToolMissingError as exc:
            pytest.fail(f"{exc}; the Prometheus tests need it", pytrace=False)

        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
