"""A tiny HTTPS registry on 127.0.0.1, for the client's TLS settings.

Serves ``/v2/`` and the manifests it is given, over TLS with a certificate from a
throwaway ``trustme`` CA, on a thread of this process; ``stop()`` ends it. Imports
nothing from watcher.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme

LOOPBACK = "127.0.0.1"
MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
# How soon stop() is noticed; http.server's default makes each test wait 0.5 s.
_POLL_INTERVAL_SECONDS = 0.02


@dataclass
class TLSRegistry:
    """A running HTTPS registry: its base URL and the CA bundle that trusts it."""

    url: str
    ca_file: Path
    server: ThreadingHTTPServer = field(repr=False)
    thread: threading.Thread = field(repr=False)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def start_tls_registry(
    ca: trustme.CA, directory: Path, manifests: dict[str, bytes]
) -> TLSRegistry:
    """Serve ``manifests`` (keyed ``repository:tag``) over HTTPS on a free port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(LOOPBACK, "localhost").configure_cert(context)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    handler = type("Handler", (_Handler,), {"manifests": manifests})
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_INTERVAL_SECONDS},
        name="tls-registry",
    )
    thread.start()
    port = server.server_address[1]
    return TLSRegistry(f"https://{LOOPBACK}:{port}", ca_file, server, thread)


class _Handler(BaseHTTPRequestHandler):
    manifests: dict[str, bytes] = {}  # noqa: RUF012 - replaced per server

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def _answer(self, *, with_body: bool) -> None:
        name = self.path.removeprefix("/v2/")
        repository, _, tag = name.partition("/manifests/")
        body = self.manifests.get(f"{repository}:{tag}")
        if body is None:
            status, body, media_type = (
                (200 if name == "" else 404),
                b"{}",
                "application/json",
            )
        else:
            status, media_type = 200, MEDIA_TYPE

        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Content-Digest", digest_of(body))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet: the tests read the client's view, not the server's."""
