"""A real HTTP endpoint that records the notifications Apprise delivers to it.

Apprise's `json://host:port/path` target POSTs a JSON body such as
`{"version": "1.0", "title": ..., "message": ..., "type": "info"}` to
`http://host:port/path`. `Receiver` listens on 127.0.0.1 in a background thread and
keeps every request. It can also misbehave the way a slow or dying endpoint does:
fail requests (`fail_next`), take a request and sit on the answer (`hold_next`),
or accept a connection and never read it (`stall_next`). Imports nothing from
watcher.
"""

import dataclasses
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from tests.real.ports import LOOPBACK
from tests.real.waiting import wait_until

DEFAULT_WAIT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
_MAX_BODY_BYTES = 1024 * 1024
#: A held or stalled connection is closed unanswered after this long.
MAX_HOLD_SECONDS = 60.0
# How often a held or stalled connection looks for a release or a departed client.
_POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as received; `body` is the parsed JSON, or None if it was not JSON.

    Header names are lower-case. `status` is the answer given, or to be given;
    `answered` is False while a held request waits, and stays False when its
    client went away before the answer.
    """

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any
    status: int
    answered: bool = True


@dataclass(frozen=True, slots=True)
class _Hold:
    """A held request: its index in `requests`, and the release count it outlasts."""

    index: int
    released: int


class Receiver:
    """Records POSTs on 127.0.0.1; use as a context manager or call `stop()`.

    `messages` holds the requests answered 2xx (the deliveries that succeeded);
    `requests` holds every request, including those failed by `fail_next()` and
    those held by `hold_next()`. Connections stalled by `stall_next()` are never
    read, so they appear in neither; `stalled` counts them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[ReceivedRequest] = []
        self._failures: list[int] = []
        self._holds = 0
        self._held: list[int] = []
        self._stalls = 0
        self._stalled = 0
        self._released = 0
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://{LOOPBACK}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="receiver",
            daemon=True,
        )
        self._thread.start()

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Return every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def messages(self) -> list[ReceivedRequest]:
        """Return the requests answered with a 2xx status, oldest first."""
        with self._lock:
            return self._successful()

    @property
    def held(self) -> list[ReceivedRequest]:
        """Return every request `hold_next()` held, answered or not, oldest first."""
        with self._lock:
            return [self._requests[index] for index in self._held]

    @property
    def stalled(self) -> int:
        """Return how many connections `stall_next()` left unread."""
        with self._lock:
            return self._stalled

    def apprise_url(self, path: str = "/hook") -> str:
        """Return the Apprise URL that posts JSON to this receiver at `path`."""
        return f"json://{self.url.removeprefix('http://')}{path}"

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next `count` requests with `status` instead of 200."""
        with self._lock:
            self._failures.extend([status] * count)

    def hold_next(self, count: int) -> None:
        """Read the next `count` requests but answer none of them until `release()`.

        A held request is in `requests` at once, with `answered=False`. Its
        client may give up (time out, or die) first: then it is never answered.
        """
        with self._lock:
            self._holds += count

    def stall_next(self, count: int) -> None:
        """Accept the next `count` connections and read nothing until `release()`.

        `release()` then closes them unread: the request never arrives. The
        unread request hides a client's hang-up, so only `release()` (or
        `MAX_HOLD_SECONDS`) ends a stall.
        """
        with self._lock:
            self._stalls += count

    def release(self) -> None:
        """Answer the held requests whose clients still wait; close stalled ones."""
        with self._arrived:
            self._released += 1
            self._arrived.notify_all()

    def wait_for_held(
        self, count: int, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> list[ReceivedRequest]:
        """Block until `count` requests were held and return every held one.

        Raises:
            AssertionError: fewer were held within `timeout` seconds.
        """
        self._wait_until(
            lambda: len(self._held) >= count, f"{count} held request(s)", timeout
        )
        return self.held

    def wait_for_stalled(
        self, count: int, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> None:
        """Block until `count` connections were stalled.

        Raises:
            AssertionError: fewer were stalled within `timeout` seconds.
        """
        self._wait_until(
            lambda: self._stalled >= count, f"{count} stalled connection(s)", timeout
        )

    def wait_for(
        self, count: int, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> list[ReceivedRequest]:
        """Block until `count` messages (2xx) arrived and return them all.

        Raises:
            AssertionError: fewer arrived within `timeout` seconds; the message
                lists every request that did arrive.
        """
        self._wait_until(
            lambda: len(self._successful()) >= count, f"{count} message(s)", timeout
        )
        return self.messages

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread; safe to call twice.

        Held and stalled connections are released first.
        """
        if not self._thread.is_alive():
            return

        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT_SECONDS)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _successful(self) -> list[ReceivedRequest]:
        return [r for r in self._requests if r.answered and 200 <= r.status < 300]

    def _wait_until(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        """Wait, holding the lock between checks, until `done()` is true."""

        def failure() -> str:
            arrived = [
                (r.method, r.path, r.status, r.answered, r.body) for r in self._requests
            ]
            return f"expected {what} within {timeout} s; {self._stalled} stalled connection(s); requests: {arrived!r}"

        wait_until(self._arrived, done, lambda: None, timeout=timeout, failure=failure)

    def _record(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, _Hold | None]:
        """Keep the request; return its status and, if it is held, where it is."""
        with self._arrived:
            status = self._failures.pop(0) if self._failures else HTTPStatus.OK
            holding = self._holds > 0
            request = ReceivedRequest(
                method, path, headers, raw, _parse_json(raw), status, not holding
            )
            self._requests.append(request)
            hold = None
            if holding:
                self._holds -= 1
                hold = _Hold(len(self._requests) - 1, self._released)
                self._held.append(hold.index)
            self._arrived.notify_all()

        return status, hold

    def _take_stall(self) -> int | None:
        """Claim a stall for a new connection; the release count it must outlast."""
        with self._arrived:
            if self._stalls == 0:
                return None

            self._stalls -= 1
            self._stalled += 1
            self._arrived.notify_all()
            return self._released

    def _wait_for_release(self, released: int, connection: socket.socket) -> bool:
        """Block until `release()` (True), or the client hangs up (False).

        `released` is the release count when the hold began. After
        `MAX_HOLD_SECONDS` the hold ends as if the client had hung up.
        """
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        while time.monotonic() < deadline:
            with self._arrived:
                if self._released > released:
                    return True

                self._arrived.wait(_POLL_SECONDS)
            if _peer_closed(connection):
                return False

        return False

    def _answered(self, index: int) -> None:
        with self._arrived:
            request = self._requests[index]
            self._requests[index] = dataclasses.replace(request, answered=True)
            self._arrived.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        # HTTP/1.0 (the handler's default) closes each connection after its
        # response, so no keep-alive socket outlives stop().
        class Handler(BaseHTTPRequestHandler):
            def handle(self) -> None:
                released = receiver._take_stall()
                if released is None:
                    super().handle()
                    return

                # Stalled: wait without reading a byte; the server then closes
                # the connection with the request still unread in its buffer.
                receiver._wait_for_release(released, self.connection)

            def do_POST(self) -> None:
                length = min(
                    int(self.headers.get("Content-Length") or 0), _MAX_BODY_BYTES
                )
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, hold = receiver._record(self.command, self.path, headers, raw)
                if hold is not None and not receiver._wait_for_release(
                    hold.released, self.connection
                ):
                    self.close_connection = True
                    return

                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                if hold is not None:
                    self.wfile.flush()
                    receiver._answered(hold.index)

            def log_message(self, *args: Any) -> None:
                """Keep the test output clean; `requests` records everything."""

        return Handler


def _peer_closed(connection: socket.socket) -> bool:
    """Whether the client hung up: the socket reads as end of file, or was reset."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False

    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
