"""A real HTTP endpoint that records the notifications Apprise delivers to it.

Apprise's `json://host:port/path` target POSTs a JSON body such as
`{"version": "1.0", "title": ..., "message": ..., "type": "info"}` to
`http://host:port/path`. `Receiver` listens on 127.0.0.1 in a background thread and
keeps every request. Imports nothing from watcher.
"""

import json
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from tests.real.ports import LOOPBACK

DEFAULT_WAIT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as received; `body` is the parsed JSON, or None if it was not JSON.

    Header names are lower-case.
    """

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any
    status: int


class Receiver:
    """Records POSTs on 127.0.0.1; use as a context manager or call `stop()`.

    `messages` holds the requests answered 2xx (the deliveries that succeeded);
    `requests` holds every request, including those failed by `fail_next()`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[ReceivedRequest] = []
        self._failures: list[int] = []
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
            return [r for r in self._requests if 200 <= r.status < 300]

    def apprise_url(self, path: str = "/hook") -> str:
        """Return the Apprise URL that posts JSON to this receiver at `path`."""
        return f"json://{self.url.removeprefix('http://')}{path}"

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next `count` requests with `status` instead of 200."""
        with self._lock:
            self._failures.extend([status] * count)

    def wait_for(
        self, count: int, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> list[ReceivedRequest]:
        """Block until `count` messages (2xx) arrived and return them all.

        Raises:
            AssertionError: fewer arrived within `timeout` seconds; the message
                lists every request that did arrive.
        """
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._successful()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    arrived = [
                        (r.method, r.path, r.status, r.body) for r in self._requests
                    ]
                    msg = f"expected {count} message(s) within {timeout} s, got {len(self._successful())}; requests: {arrived!r}"
                    raise AssertionError(msg)

                self._arrived.wait(left)

            return self._successful()

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread; safe to call twice."""
        if not self._thread.is_alive():
            return

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
        return [r for r in self._requests if 200 <= r.status < 300]

    def _record(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> int:
        with self._arrived:
            status = self._failures.pop(0) if self._failures else HTTPStatus.OK
            self._requests.append(
                ReceivedRequest(method, path, headers, raw, _parse_json(raw), status)
            )
            self._arrived.notify_all()

        return status

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        # HTTP/1.0 (the handler's default) closes each connection after its
        # response, so no keep-alive socket outlives stop().
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(
                    int(self.headers.get("Content-Length") or 0), _MAX_BODY_BYTES
                )
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._record(self.command, self.path, headers, raw)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                """Keep the test output clean; `requests` records everything."""

        return Handler


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
