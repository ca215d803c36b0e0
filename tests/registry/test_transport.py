"""Http11Transport against small HTTP/1.1 servers on 127.0.0.1, in this event loop.

Each server reads requests with h11 and answers with bytes a test writes, so the
tests can send what a registry or a broken server sends: chunked and
close-delimited bodies, ``Connection: close``, stray bytes, a cut-off answer.
Last, RegistryClient as production builds it, through a forward proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import h11
import httpx
import pytest
import trustme

from tests.fakes.registry import FakeClock
from tests.real.ports import LOOPBACK, free_port
from tests.registry.tls_server import MEDIA_TYPE, digest_of, start_tls_registry
from watcher.config import RegistrySettings
from watcher.errors import RegistryUnavailable
from watcher.reference import Digest, Reference
from watcher.registry import HeadResult, RegistryClient
from watcher.registry import transport as transport_module
from watcher.registry.transport import Http11Transport

pytestmark = pytest.mark.anyio

#: How long a test waits for something the server should see, before failing.
WAIT_SECONDS = 5.0
#: Every request of these tests is bounded, so a transport that hangs fails.
CLIENT_TIMEOUT = httpx.Timeout(WAIT_SECONDS)


@dataclass(frozen=True)
class Seen:
    """A request as the server read it, and the accepted connection it came on."""

    connection: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class Peer:
    """One accepted connection, from the server's side."""

    def __init__(self, number: int, writer: asyncio.StreamWriter) -> None:
        self.number = number
        self.writer = writer
        #: Set when the client closed its side (the server read EOF or a reset).
        self.client_gone = asyncio.Event()
        self.finished = asyncio.Event()
        self.closed_by_server = False
        ssl_object = writer.get_extra_info("ssl_object")
        self.alpn = ssl_object.selected_alpn_protocol() if ssl_object else None

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.closed_by_server = True
        self.writer.close()


@dataclass(frozen=True)
class Exchange:
    """A request to answer; ``index`` counts requests across connections, from 1."""

    request: Seen
    peer: Peer
    index: int


Script: TypeAlias = Callable[[Exchange], Awaitable[None]]


@dataclass
class Server:
    """An HTTP/1.1 server whose ``script`` answers each request (or does not).

    A script writes its answer and returns at once; one that writes nothing
    leaves the request unanswered, and the server reads on, so it sees when the
    client gives up and closes.
    """

    script: Script
    peers: list[Peer] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    #: Set when the client closed any of the connections.
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def url(
        self, path: str = "/", *, host: str = LOOPBACK, scheme: str = "http"
    ) -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def accepted(self) -> int:
        return len(self.peers)

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, 0, ssl=tls)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for peer in self.peers:
            peer.writer.close()

        for peer in self.peers:
            await settled(peer.finished, f"the end of connection {peer.number}")

        await self.server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = Peer(len(self.peers) + 1, writer)
        self.peers.append(peer)
        parser = h11.Connection(h11.SERVER)
        try:
            while not peer.closed_by_server:
                request = await _read_request(parser, reader, peer.number)
                if request is None:
                    peer.client_gone.set()
                    self.client_gone.set()
                    break

                self.seen.append(request)
                await self.script(Exchange(request, peer, len(self.seen)))
                parser = _next_parser(parser)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            peer.finished.set()


async def _read_request(
    parser: h11.Connection, reader: asyncio.StreamReader, connection: int
) -> Seen | None:
    """The next request on the connection; None once the client closed it."""
    head: h11.Request | None = None
    body = bytearray()
    try:
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                headers = {k.decode(): v.decode() for k, v in head.headers}
                method, target = head.method.decode(), head.target.decode()
                return Seen(connection, method, target, headers, bytes(body))
            else:
                return None
    except (OSError, h11.RemoteProtocolError):
        return None


def _next_parser(parser: h11.Connection) -> h11.Connection:
    """A parser for the connection's next request, given what was read past this one.

    The server answers with raw bytes, past h11, so h11 cannot start a new cycle.
    """
    unread, closed = parser.trailing_data
    fresh = h11.Connection(h11.SERVER)
    if unread:
        fresh.receive_data(unread)
    if closed:
        fresh.receive_data(b"")
    return fresh


def answer(
    body: bytes = b"", *, status: str = "200 OK", headers: Sequence[str] = ()
) -> bytes:
    """An answer framed by Content-Length."""
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def numbered(exchange: Exchange) -> bytes:
    """``answer N`` for the server's Nth request: shows which request it answers."""
    return answer(f"answer {exchange.index}".encode())


async def answer_numbered(exchange: Exchange) -> None:
    exchange.peer.write(numbered(exchange))


def dropping_request(number: int) -> Script:
    """A server that closes the connection instead of answering its Nth request."""

    async def script(exchange: Exchange) -> None:
        if exchange.index == number:
            exchange.peer.close()
        else:
            exchange.peer.write(numbered(exchange))

    return script


async def settled(event: asyncio.Event, what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            await event.wait()
    except TimeoutError:
        msg = f"{what} did not happen within {WAIT_SECONDS} s"
        raise AssertionError(msg) from None


def client(transport: Http11Transport | None = None) -> httpx.AsyncClient:
    transport = transport or Http11Transport(True, max_idle=4)
    return httpx.AsyncClient(transport=transport, timeout=CLIENT_TIMEOUT)


ServerFactory: TypeAlias = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """Start servers running a script; all are stopped when the test ends."""
    servers: list[Server] = []

    async def start(script: Script, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(script)
        servers.append(server)
        await server.start(tls)
        return server

    yield start
    for server in servers:
        await server.stop()


class TestReuse:
    async def test_sequential_requests_share_one_connection(
        self, serve: ServerFactory
    ) -> None:
        server = await serve(answer_numbered)

        async with client() as http:
            bodies = [(await http.get(server.url())).content for _ in range(3)]

        assert bodies == [b"answer 1", b"answer 2", b"answer 3"]
        assert server.accepted == 1

    async def test_head_answer_is_complete_without_the_body_it_describes(
        self, serve: ServerFactory
    ) -> None:
        """A HEAD's Content-Length describes a GET's body: none follows it."""

        async def script(exchange: Exchange) -> None:
            body = f"answer {exchange.index}".encode()
            head = exchange.request.method == "HEAD"
            exchange.peer.write(answer(body)[: -len(body)] if head else answer(body))

        server = await serve(script)

        async with client() as http:
            head = await http.head(server.url())
            get = await http.get(server.url())

        assert (head.headers["content-length"], head.content) == ("8", b"")
        assert get.content == b"answer 2"
        assert server.accepted == 1

    async def test_connection_the_server_closed_while_idle_is_replaced(
        self, serve: ServerFactory
    ) -> None:
        async def script(exchange: Exchange) -> None:
            exchange.peer.write(numbered(exchange))
            exchange.peer.close()

        server = await serve(script)

        async with client() as http:
            first = await http.get(server.url())
            await settled(server.peers[0].finished, "the server's close")
            second = await http.get(server.url())

        assert (first.content, second.content) == (b"answer 1", b"answer 2")
        assert [seen.connection for seen in server.seen] == [1, 2]

    async def test_get_is_resent_once_when_a_reused_connection_drops_unanswered(
        self, serve: ServerFactory
    ) -> None:
        """The server closed the idle connection as the request went out."""

        server = await serve(dropping_request(2))

        async with client() as http:
            await http.get(server.url())
            second = await http.get(server.url())

        assert second.content == b"answer 3"
        assert [seen.connection for seen in server.seen] == [1, 1, 2]

    async def test_get_is_not_resent_once_part_of_the_answer_arrived(
        self, serve: ServerFactory
    ) -> None:
        """The server did act on it: the failure is the caller's to handle."""

        async def script(exchange: Exchange) -> None:
            if exchange.index == 1:
                exchange.peer.write(numbered(exchange))
            else:
                exchange.peer.write(b"HTTP/1.1 200 OK\r\nContent-")
                exchange.peer.close()

        server = await serve(script)

        async with client() as http:
            await http.get(server.url())
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(server.url())

        assert [seen.connection for seen in server.seen] == [1, 1]

    async def test_get_is_resent_only_once(self, serve: ServerFactory) -> None:
        async def script(exchange: Exchange) -> None:
            if exchange.index == 1:
                exchange.peer.write(numbered(exchange))
            else:
                exchange.peer.close()

        server = await serve(script)

        async with client() as http:
            await http.get(server.url())
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(server.url())

        assert [seen.connection for seen in server.seen] == [1, 1, 2]

    async def test_post_is_not_resent_when_a_reused_connection_drops(
        self, serve: ServerFactory
    ) -> None:
        """A POST may have been acted on: sending it twice is the caller's choice."""

        server = await serve(dropping_request(2))

        async with client() as http:
            await http.get(server.url())
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post(server.url(), content=b"once")

        assert [seen.method for seen in server.seen] == ["GET", "POST"]

    async def test_connection_close_answer_is_not_reused(
        self, serve: ServerFactory
    ) -> None:
        async def script(exchange: Exchange) -> None:
            body = f"answer {exchange.index}".encode()
            exchange.peer.write(answer(body, headers=["Connection: close"]))

        server = await serve(script)

        async with client() as http:
            await http.get(server.url())
            second = await http.get(server.url())
            await settled(server.peers[0].client_gone, "the client's close")

        assert second.content == b"answer 2"
        assert [seen.connection for seen in server.seen] == [1, 2]

    @pytest.mark.parametrize("server_act", ["stray answer", "close"])
    async def test_idle_connection_the_server_wrote_to_or_closed_is_not_reused(
        self, serve: ServerFactory, server_act: str
    ) -> None:
        """Even a POST, which is never resent, goes out on a fresh connection."""
        registry = await serve(answer_numbered)

        async def act_on_the_idle_connection(exchange: Exchange) -> None:
            # Sent before this answer, so the client notices while it waits for it.
            idle = registry.peers[0]
            if server_act == "close":
                idle.close()
                await idle.writer.wait_closed()
            else:
                idle.write(answer(status="408 Request Timeout"))
            exchange.peer.write(answer(b"other"))

        other = await serve(act_on_the_idle_connection)

        async with client() as http:
            await http.get(registry.url())
            await http.get(other.url())
            post = await http.post(registry.url(), content=b"body")

        assert (post.status_code, post.content) == (200, b"answer 2")
        assert [seen.connection for seen in registry.seen] == [1, 2]

    async def test_bytes_sent_after_an_answer_make_its_connection_unfit(
        self, serve: ServerFactory
    ) -> None:
        """A stray 408 must not be taken for the answer to the next request."""

        async def script(exchange: Exchange) -> None:
            stray = answer(status="408 Request Timeout") if exchange.index == 1 else b""
            exchange.peer.write(numbered(exchange) + stray)

        server = await serve(script)

        async with client() as http:
            await http.get(server.url())
            second = await http.get(server.url())

        assert (second.status_code, second.content) == (200, b"answer 2")
        assert [seen.connection for seen in server.seen] == [1, 2]

    @pytest.mark.parametrize(
        ("idle_seconds", "connections"),
        [pytest.param(4.9, [1, 1], id="within"), pytest.param(5.1, [1, 2], id="past")],
    )
    async def test_connection_idle_past_keepalive_expiry_is_replaced(
        self,
        serve: ServerFactory,
        monkeypatch: pytest.MonkeyPatch,
        idle_seconds: float,
        connections: list[int],
    ) -> None:
        clock = FakeClock()
        monkeypatch.setattr(transport_module, "monotonic", clock)
        server = await serve(answer_numbered)
        transport = Http11Transport(True, max_idle=4, keepalive_expiry=5.0)

        async with client(transport) as http:
            await http.get(server.url())
            clock.advance(idle_seconds)
            await http.get(server.url())

        assert [seen.connection for seen in server.seen] == connections

    async def test_at_most_max_idle_connections_are_kept(
        self, serve: ServerFactory
    ) -> None:
        server = await serve(answer_numbered)

        async with client(Http11Transport(True, max_idle=1)) as http:
            await asyncio.gather(http.get(server.url()), http.get(server.url()))
            await settled(server.client_gone, "the client's close of one")
            closed = [peer for peer in server.peers if peer.client_gone.is_set()]
            kept = [peer for peer in server.peers if peer not in closed]
            await http.get(server.url())

        assert (len(closed), len(kept)) == (1, 1)
        assert server.seen[-1].connection == kept[0].number

    async def test_aclose_closes_idle_connections(self, serve: ServerFactory) -> None:
        server = await serve(answer_numbered)
        transport = Http11Transport(True, max_idle=4)

        async with client(transport) as http:
            await http.get(server.url())

        await settled(server.peers[0].client_gone, "the client's close")


class TestBodies:
    async def test_chunked_body_is_read_whole_and_its_connection_reused(
        self, serve: ServerFactory
    ) -> None:
        async def script(exchange: Exchange) -> None:
            head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            exchange.peer.write(head.encode() + b"6\r\nhello \r\n")
            await exchange.peer.writer.drain()
            exchange.peer.write(b"5\r\nworld\r\n0\r\n\r\n")

        server = await serve(script)

        async with client() as http:
            first = await http.get(server.url())
            await http.get(server.url())

        assert first.content == b"hello world"
        assert server.accepted == 1

    async def test_close_delimited_body_is_read_to_the_end(
        self, serve: ServerFactory
    ) -> None:
        async def script(exchange: Exchange) -> None:
            exchange.peer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100_000)
            exchange.peer.close()

        server = await serve(script)

        async with client() as http:
            first = await http.get(server.url())
            await http.get(server.url())

        assert first.content == b"x" * 100_000
        assert server.accepted == 2

    async def test_body_closed_unread_closes_its_connection(
        self, serve: ServerFactory
    ) -> None:
        async def script(exchange: Exchange) -> None:
            exchange.peer.write(answer(b"x" * 1_000_000))

        server = await serve(script)

        async with client() as http:
            async with http.stream("GET", server.url()) as response:
                async for _chunk in response.aiter_raw():
                    break
            await settled(server.peers[0].client_gone, "the client's close")
            await http.get(server.url())

        assert [seen.connection for seen in server.seen] == [1, 2]

    async def test_informational_answers_are_skipped(
        self, serve: ServerFactory
    ) -> None:
        async def script(exchange: Exchange) -> None:
            hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
            exchange.peer.write(hints + answer(b"final"))

        server = await serve(script)

        async with client() as http:
            response = await http.get(server.url())

        assert (response.status_code, response.content) == (200, b"final")

    async def test_post_body_arrives_intact(self, serve: ServerFactory) -> None:
        server = await serve(answer_numbered)
        whole = bytes(range(256)) * 1000

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(whole), 70_000):
                yield whole[start : start + 70_000]

        async with client() as http:
            await http.post(server.url("/token"), content=whole)
            await http.post(server.url("/token"), content=pieces())

        sized, chunked = server.seen
        assert (sized.target, sized.body) == ("/token", whole)
        assert sized.headers["content-length"] == str(len(whole))
        assert chunked.body == whole
        assert chunked.headers["transfer-encoding"] == "chunked"


class TestFailures:
    async def test_unanswered_request_raises_read_timeout_and_closes(
        self, serve: ServerFactory
    ) -> None:
        async def silent(exchange: Exchange) -> None:
            """Never answers."""

        server = await serve(silent)

        async with client() as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(server.url(), timeout=httpx.Timeout(5.0, read=0.1))
            await settled(server.peers[0].client_gone, "the client's close")

    async def test_refused_port_raises_connect_error(self) -> None:
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://{LOOPBACK}:{free_port()}/")

    async def test_server_dying_mid_body_raises_instead_of_hanging(
        self, serve: ServerFactory
    ) -> None:
        async def script(exchange: Exchange) -> None:
            exchange.peer.write(answer(b"x" * 100)[:-90])
            exchange.peer.close()

        server = await serve(script)

        async with client() as http, asyncio.timeout(WAIT_SECONDS):
            with pytest.raises(httpx.RemoteProtocolError, match="before the end"):
                await http.get(server.url())

    async def test_server_closing_a_new_connection_unanswered_raises(
        self, serve: ServerFactory
    ) -> None:
        """Only a reused connection earns a second try: this one was fresh."""

        async def script(exchange: Exchange) -> None:
            exchange.peer.close()

        server = await serve(script)

        async with client() as http, asyncio.timeout(WAIT_SECONDS):
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(server.url())

        assert len(server.seen) == 1

    async def test_malformed_answer_raises_remote_protocol_error(
        self, serve: ServerFactory
    ) -> None:
        async def script(exchange: Exchange) -> None:
            exchange.peer.write(b"HTTP/1.1 two hundred\r\n\r\n")

        server = await serve(script)

        async with client() as http:
            with pytest.raises(httpx.RemoteProtocolError, match="is not valid HTTP"):
                await http.get(server.url())

        await settled(server.peers[0].client_gone, "the client's close")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class TLSServer:
    """A TLS context for ``Server``, and the server names clients asked for (SNI)."""

    context: ssl.SSLContext
    names: list[str | None]


@pytest.fixture
def tls(ca: trustme.CA) -> TLSServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", LOOPBACK).configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    names: list[str | None] = []

    def remember(_socket: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = remember
    return TLSServer(context, names)


def trusting(ca: trustme.CA, tmp_path: Path) -> ssl.SSLContext:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return ssl.create_default_context(cafile=str(bundle))


class TestTLS:
    async def test_ca_in_the_context_makes_the_server_trusted(
        self, serve: ServerFactory, tls: TLSServer, ca: trustme.CA, tmp_path: Path
    ) -> None:
        server = await serve(answer_numbered, tls.context)
        url = server.url(host="localhost", scheme="https")

        async with client(Http11Transport(trusting(ca, tmp_path), max_idle=4)) as http:
            bodies = [(await http.get(url)).content for _ in range(2)]

        assert bodies == [b"answer 1", b"answer 2"]
        assert server.accepted == 1
        assert tls.names == ["localhost"]
        assert server.peers[0].alpn == "http/1.1"

    async def test_unknown_ca_fails_with_connect_error_caused_by_tls(
        self, serve: ServerFactory, tls: TLSServer
    ) -> None:
        """watcher tells a TLS failure from others by the ssl error behind it."""
        server = await serve(answer_numbered, tls.context)

        async with client(Http11Transport(True, max_idle=4)) as http:
            with pytest.raises(httpx.ConnectError) as caught:
                await http.get(server.url(host="localhost", scheme="https"))

        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
        assert server.seen == []


@dataclass
class MuteServer:
    """Accepts connections and never answers: TLS handshakes hang on it."""

    spoke: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.writers.append(writer)
        with contextlib.suppress(OSError):
            if await reader.read(1):
                self.spoke.set()
                await reader.read()
        self.gone.set()
        writer.close()


@pytest.fixture
async def mute() -> AsyncIterator[tuple[MuteServer, int]]:
    """A mute server and its port."""
    mute = MuteServer()
    server = await asyncio.start_server(mute.serve, LOOPBACK, 0)
    yield mute, server.sockets[0].getsockname()[1]
    server.close()
    for writer in mute.writers:
        writer.close()
    await server.wait_closed()


class TestCancellation:
    async def test_cancelled_request_closes_its_connection(
        self, serve: ServerFactory
    ) -> None:
        arrived = asyncio.Event()

        async def script(exchange: Exchange) -> None:
            if exchange.index == 1:
                arrived.set()
            else:
                exchange.peer.write(numbered(exchange))

        server = await serve(script)

        async with client() as http:
            request = asyncio.create_task(http.get(server.url()))
            await settled(arrived, "the request")
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await settled(server.peers[0].client_gone, "the client's close")
            after = await http.get(server.url())

        assert after.content == b"answer 2"
        assert [seen.connection for seen in server.seen] == [1, 2]

    async def test_cancelled_body_read_closes_its_connection(
        self, serve: ServerFactory
    ) -> None:
        async def script(exchange: Exchange) -> None:
            exchange.peer.write(answer(b"x" * 100)[:-50])

        server = await serve(script)
        first_bytes = asyncio.Event()

        async def read_body(http: httpx.AsyncClient) -> None:
            async with http.stream("GET", server.url()) as response:
                async for _chunk in response.aiter_raw():
                    first_bytes.set()

        async with client() as http:
            reading = asyncio.create_task(read_body(http))
            await settled(first_bytes, "the first bytes of the body")
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            await settled(server.peers[0].client_gone, "the client's close")

    async def test_cancelled_tls_handshake_closes_its_socket(
        self, mute: tuple[MuteServer, int]
    ) -> None:
        server, port = mute

        async with client() as http:
            request = asyncio.create_task(http.get(f"https://{LOOPBACK}:{port}/"))
            await settled(server.spoke, "the TLS client hello")
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await settled(server.gone, "the client's close")

    async def test_slow_tls_handshake_raises_connect_timeout_and_closes(
        self, mute: tuple[MuteServer, int]
    ) -> None:
        server, port = mute

        async with client() as http:
            with pytest.raises(httpx.ConnectTimeout):
                await http.get(
                    f"https://{LOOPBACK}:{port}/",
                    timeout=httpx.Timeout(5.0, connect=0.1),
                )
            await settled(server.gone, "the client's close")


MANIFEST = b'{"schemaVersion": 2, "config": {}, "layers": []}'
API = Reference.parse("registry.test/acme/api:stable")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def manifest_head() -> bytes:
    """A registry's answer to a manifest HEAD: the manifest's headers, no body."""
    headers = [
        f"Content-Type: {MEDIA_TYPE}",
        f"Docker-Content-Digest: {digest_of(MANIFEST)}",
        "Connection: close",
    ]
    return answer(MANIFEST, headers=headers)[: -len(MANIFEST)]


@dataclass
class ForwardProxy:
    """A forward proxy: it answers plain-HTTP manifest HEADs itself, as the
    registry would, and tunnels CONNECT to the port asked for on 127.0.0.1."""

    requests: list[str] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    done: list[asyncio.Event] = field(default_factory=list)

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.writers.append(writer)
        finished = asyncio.Event()
        self.done.append(finished)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n")[0].decode().split(" ")
            self.requests.append(f"{method} {target}")
            if method == "CONNECT":
                await self._tunnel(reader, writer, int(target.rpartition(":")[2]))
            else:
                writer.write(manifest_head())
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            finished.set()

    async def _tunnel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        upstream_reader, upstream = await asyncio.open_connection(LOOPBACK, port)
        self.writers.append(upstream)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, upstream), _pipe(upstream_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[ForwardProxy, str]]:
    """A forward proxy and its URL, with no proxy variable set from outside."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    forward = ForwardProxy()
    server = await asyncio.start_server(forward.serve, LOOPBACK, 0)
    yield forward, f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    server.close()
    for writer in forward.writers:
        writer.close()
    for finished in forward.done:
        await settled(finished, "the proxy's close")
    await server.wait_closed()


async def head_through_client(**settings: Any) -> HeadResult:
    """HEAD API with RegistryClient as production builds it: no transport given."""
    registry_settings = RegistrySettings.model_validate(settings)
    async with RegistryClient(lambda name: registry_settings) as registry_client:
        return await registry_client.head_manifest(API)


class TestProxies:
    """RegistryClient keeps httpx's use of the proxy variables."""

    async def test_a_dead_proxy_is_named_as_what_cannot_be_reached(
        self, proxy: tuple[ForwardProxy, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Not the registry: the user must look at the proxy, or NO_PROXY."""
        from tests.real.ports import free_port

        monkeypatch.setenv("HTTP_PROXY", f"http://{LOOPBACK}:{free_port()}")

        with pytest.raises(RegistryUnavailable) as caught:
            await head_through_client(endpoint="http://registry.test", retries=0)

        assert caught.value.reason == "connect"
        assert "through the proxy named by HTTPS_PROXY, HTTP_PROXY" in str(caught.value)
        assert "NO_PROXY" in str(caught.value)

    async def test_http_proxy_carries_plain_http_requests(
        self, proxy: tuple[ForwardProxy, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        forward, url = proxy
        monkeypatch.setenv("HTTP_PROXY", url)

        result = await head_through_client(endpoint="http://registry.test")

        assert result.descriptor.digest == Digest.parse(digest_of(MANIFEST))
        assert forward.requests == [
            "HEAD http://registry.test/v2/acme/api/manifests/stable"
        ]

    async def test_https_proxy_tunnels_tls_with_connect(
        self,
        proxy: tuple[ForwardProxy, str],
        monkeypatch: pytest.MonkeyPatch,
        ca: trustme.CA,
        tmp_path: Path,
    ) -> None:
        forward, url = proxy
        monkeypatch.setenv("HTTPS_PROXY", url)
        registry = start_tls_registry(ca, tmp_path, {"acme/api:stable": MANIFEST})
        port = registry.url.rpartition(":")[2]
        try:
            result = await head_through_client(
                endpoint=f"https://localhost:{port}", ca_file=registry.ca_file
            )
        finally:
            registry.stop()

        assert result.descriptor.digest == Digest.parse(digest_of(MANIFEST))
        assert forward.requests == [f"CONNECT localhost:{port}"]

    async def test_no_proxy_hosts_are_reached_directly(
        self,
        proxy: tuple[ForwardProxy, str],
        monkeypatch: pytest.MonkeyPatch,
        serve: ServerFactory,
    ) -> None:
        forward, url = proxy
        monkeypatch.setenv("ALL_PROXY", url)
        monkeypatch.setenv("NO_PROXY", LOOPBACK)

        async def registry(exchange: Exchange) -> None:
            exchange.peer.write(manifest_head())

        direct = await serve(registry)

        result = await head_through_client(endpoint=direct.url(""))

        assert result.descriptor.digest == Digest.parse(digest_of(MANIFEST))
        assert [seen.method for seen in direct.seen] == ["HEAD"]
        assert forward.requests == []
