"""An HTTP/1.1 transport for httpx: h11 over asyncio, idle connections kept per origin.

httpx's default transport (httpcore) spends most of a HEAD's CPU choosing a
connection: it weighs every queued request against every pooled connection on each
request. This one takes the connection last given back to the origin, or opens one.
Imports nothing from watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from time import monotonic
from typing import TypeAlias, cast

import h11
import httpx

# Private to httpx, and the function httpx itself reads the proxy variables with;
# a test routes requests through a proxy, so a move in httpx fails loudly there.
from httpx._utils import get_environment_proxies

#: httpx's own default for how long an idle connection is kept.
DEFAULT_KEEPALIVE_EXPIRY_SECONDS = 5.0
#: Bytes held from one connection before asyncio stops reading it until the
#: body's reader catches up, so a slow reader cannot fill memory.
READ_BUFFER_LIMIT = 256 * 1024

#: asyncio closes an aborted socket on its next turn; this only bounds the wait.
CLOSE_WAIT_SECONDS = 1.0

#: Methods sent again when a reused connection turns out closed (RFC 9110 9.2.2).
_RESENT_METHODS = frozenset({"GET", "HEAD"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Where a connection leads: scheme, host (IDNA-encoded), port.
Origin: TypeAlias = tuple[str, str, int]


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 for ``httpx.AsyncClient``, keeping idle connections per origin.

    A request takes the idle connection last given back to its origin, if the
    server has neither closed it nor sent anything unasked on it and it has been
    idle at most ``keepalive_expiry`` seconds; otherwise it opens a connection.
    A GET or HEAD whose reused connection fails before any byte of the answer
    (the server closed it as we sent) is sent once more, on a new connection.

    It caps connections nowhere: every watcher request goes through
    ``RegistryClient._send``, whose per-registry semaphore already holds them to
    the registry's ``concurrency``. So no request waits for a connection, and
    the ``pool`` timeout is not used; ``connect`` covers TCP and TLS, ``read``
    and ``write`` each wait for the network. It speaks neither HTTP/2 nor to
    proxies: ``proxy_mounts`` gives httpx's own transports for the proxies the
    environment names.

    Args:
        verify: the SSL context for https, or whether to check certificates as
            httpx does (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``). A context
            is used as given, but for its ALPN protocols, set to ``http/1.1``.
        max_idle: idle connections kept per origin; past it, the oldest is closed.
        keepalive_expiry: seconds a connection may stay idle and be reused.
    """

    def __init__(
        self,
        verify: ssl.SSLContext | bool,
        *,
        max_idle: int,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY_SECONDS,
    ) -> None:
        self._tls = httpx.create_ssl_context(verify=verify)
        self._tls.set_alpn_protocols(["http/1.1"])
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the answer, its body still to be read.

        Raises:
            httpx.ConnectError, httpx.ConnectTimeout: no connection (DNS, refused,
                TLS); the TLS fault is the ``__cause__``.
            httpx.WriteError, httpx.WriteTimeout: the request could not be sent.
            httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError: no
                usable answer came.
        """
        origin = _origin(request)
        timeouts = _Timeouts.of(request)
        connection = self._idle_connection(origin)
        if connection is not None:
            received = connection.wire.received
            try:
                return await self._exchange(origin, connection, request, timeouts)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                answered = connection.wire.received != received
                if answered or request.method not in _RESENT_METHODS:
                    raise

        connection = await self._connect(origin, request, timeouts.connect)
        return await self._exchange(origin, connection, request, timeouts)

    async def aclose(self) -> None:
        """Close every idle connection; one still in use closes with its answer.

        Waits, at most ``CLOSE_WAIT_SECONDS``, until asyncio has closed the sockets.
        """
        self._closed = True
        idle, self._idle = self._idle, {}
        connections = [connection for stack in idle.values() for connection in stack]
        for connection in connections:
            connection.close()

        if connections:
            lost = [connection.wire.lost for connection in connections]
            await asyncio.wait(lost, timeout=CLOSE_WAIT_SECONDS)

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        """The idle connection to reuse for ``origin``, closing unfit ones on top."""
        stack = self._idle.get(origin)
        now = monotonic()
        while stack:
            connection = stack.pop()
            if now - connection.idle_since > self._keepalive_expiry:
                # Every connection below it on the stack has been idle longer.
                connection.close()
                _close_all(stack)
                return None

            if connection.wire.clean:
                return connection

            connection.close()

        return None

    async def _connect(
        self, origin: Origin, request: httpx.Request, connect_timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._tls if scheme == "https" else None
        try:
            async with asyncio.timeout(connect_timeout):
                _, wire = await loop.create_connection(
                    lambda: _Wire(loop),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError as exc:
            msg = f"connecting to {host}:{port} timed out"
            raise httpx.ConnectTimeout(msg, request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(_describe(exc), request=request) from exc

        return _Connection(wire)

    async def _exchange(
        self,
        origin: Origin,
        connection: _Connection,
        request: httpx.Request,
        timeouts: _Timeouts,
    ) -> httpx.Response:
        """Send ``request`` on ``connection`` and read the answer's head.

        The connection is closed on any failure, cancellation included.
        """
        try:
            head = await _send_and_receive_head(connection, request, timeouts)
        except BaseException:
            connection.close()
            raise

        def release() -> None:
            self._release(origin, connection)

        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            stream=_Body(connection, request, timeouts.read, release),
            extensions={
                "http_version": b"HTTP/" + head.http_version,
                "reason_phrase": head.reason,
            },
        )

    def _release(self, origin: Origin, connection: _Connection) -> None:
        """Keep ``connection`` for the next request if its exchange ended cleanly."""
        state = connection.h11
        finished = state.our_state is h11.DONE and state.their_state is h11.DONE
        if self._closed or self._max_idle < 1 or not finished:
            connection.close()
            return

        state.start_next_cycle()
        if not connection.clean:
            connection.close()
            return

        connection.idle_since = monotonic()
        stack = self._idle.setdefault(origin, deque())
        if len(stack) >= self._max_idle:
            stack.popleft().close()

        stack.append(connection)


def proxy_mounts(
    verify: ssl.SSLContext | bool, limits: httpx.Limits
) -> dict[str, httpx.AsyncBaseTransport | None]:
    """httpx's transports for the proxies the environment names, as client mounts.

    httpx reads ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``
    only when given no ``transport``; a client given ours gets these as
    ``mounts=`` to keep that behaviour. Proxied requests go through httpx's own
    transport (httpcore: absolute URLs for http, CONNECT for https); a host
    ``NO_PROXY`` names maps to None, which is the client's own transport.
    """
    return {
        pattern: None
        if url is None
        else httpx.AsyncHTTPTransport(
            verify=verify, limits=limits, proxy=httpx.Proxy(url)
        )
        for pattern, url in get_environment_proxies().items()
    }


@dataclass(frozen=True, slots=True)
class _Timeouts:
    """Seconds from the request's ``timeout`` extension; None waits for ever."""

    connect: float | None = None
    read: float | None = None
    write: float | None = None

    @classmethod
    def of(cls, request: httpx.Request) -> _Timeouts:
        given = request.extensions.get("timeout", {})
        return cls(given.get("connect"), given.get("read"), given.get("write"))


class _TimedOut(Exception):
    """A read or write waited longer than its timeout."""


class _Wire(asyncio.Protocol):
    """One connection's bytes, as asyncio hands them over, and its writes.

    What arrives waits here until the answer's reader takes it, so an idle
    connection shows whether the server closed it or sent something unasked.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        #: Bytes received so far; a failed exchange that received none may be resent.
        self.received = 0
        #: The server closed its side, or the connection is gone.
        self.eof = False
        #: Done once asyncio has closed the socket.
        self.lost: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._error: Exception | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._reader: asyncio.Future[bool] | None = None
        self._writer: asyncio.Future[bool] | None = None

    @property
    def clean(self) -> bool:
        """Open, with nothing received that no one has read."""
        return not self._buffer and not self.eof

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection hands its protocol a TCP or TLS transport: both are
        # asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self.received += len(data)
        if len(self._buffer) > READ_BUFFER_LIMIT and not self._reading_paused:
            self._reading_paused = True
            self._ensure_transport().pause_reading()

        _wake(self._reader)

    def eof_received(self) -> bool:
        # False: asyncio closes the socket; HTTP/1.1 has no use for half-closed.
        self.eof = True
        _wake(self._reader)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._error = exc
        _wake(self._reader)
        _wake(self._writer)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        _wake(self._writer)

    async def read(self, read_timeout: float | None) -> bytes:
        """What has arrived, waiting up to ``read_timeout`` s for it; b"" at the end.

        Raises:
            _TimedOut: nothing arrived in time.
            OSError: the connection failed (reset, TLS error).
        """
        if not self._buffer and not self.eof:
            self._reader = self._loop.create_future()
            try:
                arrived = await _wait(self._reader, read_timeout)
            finally:
                self._reader = None

            if not arrived:
                raise _TimedOut

        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            if self._reading_paused:
                self._reading_paused = False
                self._ensure_transport().resume_reading()
            return data

        if self._error is not None:
            raise self._error

        return b""

    async def write(self, data: bytes, write_timeout: float | None) -> None:
        """Send ``data``, waiting up to ``write_timeout`` s while the buffer is full.

        Raises:
            _TimedOut: the buffer did not drain in time.
            OSError: the connection is closed or failed.
        """
        transport = self._ensure_transport()
        if transport.is_closing():
            raise self._error or ConnectionResetError(
                "the server closed the connection"
            )

        transport.write(data)
        if not self._writing_paused:
            return

        self._writer = self._loop.create_future()
        try:
            drained = await _wait(self._writer, write_timeout)
        finally:
            self._writer = None

        if not drained:
            raise _TimedOut

        if self.lost.done():
            raise self._error or ConnectionResetError(
                "the server closed the connection"
            )

    def abort(self) -> None:
        """Close the socket now, dropping unsent bytes; ``lost`` follows shortly."""
        if self._transport is not None:
            self._transport.abort()

    def _ensure_transport(self) -> asyncio.Transport:
        if self._transport is None:
            msg = "the connection is not made yet"
            raise RuntimeError(msg)

        return self._transport


class _Connection:
    """One HTTP/1.1 connection: its wire, h11's state of it, when it fell idle."""

    __slots__ = ("h11", "idle_since", "wire")

    def __init__(self, wire: _Wire) -> None:
        self.wire = wire
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    @property
    def clean(self) -> bool:
        """Open, with nothing received past the last answer."""
        unread, closed = self.h11.trailing_data
        return not unread and not closed and self.wire.clean

    async def send(self, event: h11.Event, write_timeout: float | None) -> None:
        data = self.h11.send(event)
        if data:
            await self.wire.write(data, write_timeout)

    async def next_event(self, read_timeout: float | None) -> object:
        """h11's next event from the server, reading as much as it needs."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event

            self.h11.receive_data(await self.wire.read(read_timeout))

    def close(self) -> None:
        self.wire.abort()


class _Body(httpx.AsyncByteStream):
    """An answer's body as it arrives; closing it gives the connection back.

    ``release`` keeps the connection only if both sides finished their message;
    a body left unread, a ``Connection: close`` or a failure closes it.
    """

    def __init__(
        self,
        connection: _Connection,
        request: httpx.Request,
        read_timeout: float | None,
        release: Callable[[], None],
    ) -> None:
        self._connection = connection
        self._request = request
        self._read_timeout = read_timeout
        self._release = release
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        with _reading(self._request, connection.wire, "body"):
            while True:
                event = await connection.next_event(self._read_timeout)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return
                else:
                    msg = f"unexpected {type(event).__name__} in the answer's body"
                    raise httpx.RemoteProtocolError(msg, request=self._request)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()


async def _send_and_receive_head(
    connection: _Connection, request: httpx.Request, timeouts: _Timeouts
) -> h11.Response:
    write_error: httpx.WriteError | None = None
    try:
        await _send_request(connection, request, timeouts.write)
    except httpx.WriteError as exc:
        write_error = exc

    if write_error is None:
        return await _receive_head(connection, request, timeouts.read)

    # A server may answer (401, 413) and close before it has taken the whole body.
    with contextlib.suppress(httpx.TransportError):
        return await _receive_head(connection, request, timeouts.read)

    raise write_error


async def _send_request(
    connection: _Connection, request: httpx.Request, write_timeout: float | None
) -> None:
    body = request.stream
    if not isinstance(body, httpx.AsyncByteStream):
        msg = "Http11Transport sends only async request bodies; use httpx.AsyncClient"
        raise TypeError(msg)

    head = h11.Request(
        method=request.method,
        target=request.url.raw_path,
        headers=request.headers.raw,
    )
    with _writing(request):
        await connection.send(head, write_timeout)
        async for chunk in body:
            if chunk:
                await connection.send(h11.Data(data=chunk), write_timeout)

        await connection.send(h11.EndOfMessage(), write_timeout)


async def _receive_head(
    connection: _Connection, request: httpx.Request, read_timeout: float | None
) -> h11.Response:
    """The answer's status line and headers, after any 1xx answers."""
    with _reading(request, connection.wire, "answer"):
        while True:
            event = await connection.next_event(read_timeout)
            if isinstance(event, h11.Response):
                return event

            if not isinstance(event, h11.InformationalResponse):
                msg = f"unexpected {type(event).__name__} instead of an answer"
                raise httpx.RemoteProtocolError(msg, request=request)


@contextlib.contextmanager
def _writing(request: httpx.Request) -> Iterator[None]:
    """Raise httpx's errors, with ``request``, for faults while sending it."""
    try:
        yield
    except _TimedOut as exc:
        msg = "sending the request timed out"
        raise httpx.WriteTimeout(msg, request=request) from exc
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc), request=request) from exc
    except OSError as exc:
        msg = f"sending the request failed: {_describe(exc)}"
        raise httpx.WriteError(msg, request=request) from exc


@contextlib.contextmanager
def _reading(request: httpx.Request, wire: _Wire, part: str) -> Iterator[None]:
    """Raise httpx's errors, with ``request``, for faults while reading ``part``."""
    try:
        yield
    except _TimedOut as exc:
        msg = f"reading the {part} timed out"
        raise httpx.ReadTimeout(msg, request=request) from exc
    except h11.RemoteProtocolError as exc:
        if wire.eof:
            msg = f"the server closed the connection before the end of the {part}"
        else:
            msg = f"the {part} is not valid HTTP/1.1: {exc}"
        raise httpx.RemoteProtocolError(msg, request=request) from exc
    except OSError as exc:
        msg = f"reading the {part} failed: {_describe(exc)}"
        raise httpx.ReadError(msg, request=request) from exc


async def _wait(waiter: asyncio.Future[bool], seconds: float | None) -> bool:
    """Whether ``waiter`` was woken before ``seconds`` passed (None: no limit)."""
    if seconds is None:
        return await waiter

    expiry = asyncio.get_running_loop().call_later(seconds, _wake, waiter, False)
    try:
        return await waiter
    finally:
        expiry.cancel()


def _wake(waiter: asyncio.Future[bool] | None, woken: bool = True) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(woken)


def _origin(request: httpx.Request) -> Origin:
    url = request.url
    port = _DEFAULT_PORTS.get(url.scheme)
    if port is None:
        msg = f"Http11Transport speaks http and https, not {url.scheme!r}"
        raise httpx.UnsupportedProtocol(msg, request=request)

    return url.scheme, url.raw_host.decode("ascii"), url.port or port


def _close_all(stack: deque[_Connection]) -> None:
    while stack:
        stack.pop().close()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
