"""Serve a plain ASGI app with uvicorn on 127.0.0.1 in a background thread.

`ThreadedServer` is the lifecycle the token server and the Hub double share: start
on a free port, return once uvicorn accepts connections, stop with `should_exit`
(then `force_exit`) and join the thread. Also the ASGI type aliases and the small
request helpers both apps use. Imports nothing from watcher.
"""

import asyncio
import base64
import binascii
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any, Self

import uvicorn

from tests.real.ports import LOOPBACK

START_TIMEOUT_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 5.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ThreadedServer:
    """An ASGI app that serves itself with uvicorn in a daemon thread.

    Subclasses define the ASGI `__call__`, call `super().__init__()` and may
    override `_serve()`. `name` labels the errors. Use as a context manager, or
    call `start()` and `stop()`.
    """

    def __init__(self, *, name: str, thread_name: str) -> None:
        self.url = ""
        self._label = name
        self._thread_name = thread_name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Serve on a free 127.0.0.1 port; return once it accepts connections."""
        config = uvicorn.Config(
            self,
            host=LOOPBACK,
            port=0,
            loop="asyncio",
            http="h11",
            ws="none",
            interface="asgi3",
            lifespan="off",
            proxy_headers=False,
            log_level="warning",
            # None keeps uvicorn from installing handlers on the root logger; its
            # warnings still reach pytest's log capture by propagation. access_log
            # off keeps query strings (a token request's scopes) out of the logs.
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(self._server,), name=self._thread_name, daemon=True
        )
        self._thread.start()
        self.url = f"http://{LOOPBACK}:{self._wait_started(self._server, self._thread)}"
        return self

    def stop(self) -> None:
        """Stop serving and join the server thread; safe to call twice."""
        if self._server is None or self._thread is None:
            return

        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(STOP_TIMEOUT_SECONDS)

        alive = self._thread.is_alive()
        self._server = None
        self._thread = None
        if alive:
            msg = f"{self._label} at {self.url} did not stop within {2 * STOP_TIMEOUT_SECONDS} s"
            raise RuntimeError(msg)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self, server: uvicorn.Server) -> None:
        """Run `server` in the server thread's event loop; override to wrap it."""
        await server.serve()

    def _run(self, server: uvicorn.Server) -> None:
        asyncio.run(self._serve(server))

    def _wait_started(self, server: uvicorn.Server, thread: threading.Thread) -> int:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(STOP_TIMEOUT_SECONDS)
                msg = f"{self._label}: uvicorn did not start within {START_TIMEOUT_SECONDS} s; see the uvicorn.error log"
                raise RuntimeError(msg)

            time.sleep(0.01)

        port: int = server.servers[0].sockets[0].getsockname()[1]
        return port


async def drain(receive: Receive) -> None:
    """Read the request body to its end and drop it.

    Bodies are ignored, but reading them keeps the connection reusable.
    """
    more = True
    while more:
        message = await receive()
        more = message.get("type") == "http.request" and message.get("more_body", False)


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """Return the user and password of a `Basic` Authorization value, else None."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None

    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None

    username, _, password = decoded.partition(":")
    return (username, password)
