"""Every Prometheus metric watcher exports, and the HTTP server that serves them.

The only module that imports prometheus-client. Metrics are built against a
``CollectorRegistry`` handed in, so tests build their own and read samples back.
Label values come from configuration or closed sets, never from responses:
no digest or error text is ever a label. Naming follows
https://prometheus.io/docs/practices/naming/.
"""

from __future__ import annotations

import platform
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)

from watcher import __version__
from watcher.errors import ERROR_REASONS, ListenError

#: Check outcomes, the values of the ``result`` label.
CHECK_RESULTS = ("first_seen", "unchanged", "changed", "error")

# Registry round trips on a LAN take milliseconds; Docker Hub from far away and
# token exchanges take seconds.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The metric objects, and the hooks the registry client and checks call.

    Example:
        >>> registry = CollectorRegistry()
        >>> metrics = Metrics(registry)
        >>> metrics.request_done("ghcr.io", "HEAD", 200, 0.05)
        >>> registry.get_sample_value(
        ...     "watcher_registry_requests_total",
        ...     {"registry": "ghcr.io", "method": "HEAD", "status_class": "2xx"},
        ... )
        1.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "watcher_build_info",
            "Always 1; the labels say which watcher and Python run.",
            ["version", "python_version"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)

        self.requests = Counter(
            "watcher_registry_requests_total",
            "HTTP requests sent to registries and their token realms.",
            ["registry", "method", "status_class"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "watcher_registry_request_duration_seconds",
            "Time from sending a registry request to its response headers.",
            ["registry", "method"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "watcher_registry_token_requests_total",
            "Bearer token requests to a registry's realm, by outcome.",
            ["registry", "outcome"],
            registry=r,
        )
        self.ratelimit_limit = Gauge(
            "watcher_registry_ratelimit_limit",
            "Pulls allowed per window, from the registry's ratelimit-limit header.",
            ["registry", "source"],
            registry=r,
        )
        self.ratelimit_remaining = Gauge(
            "watcher_registry_ratelimit_remaining",
            "Pulls left in the window, from the ratelimit-remaining header.",
            ["registry", "source"],
            registry=r,
        )
        self.ratelimit_window = Gauge(
            "watcher_registry_ratelimit_window_seconds",
            "Length of the rate-limit window the registry reports.",
            ["registry", "source"],
            registry=r,
        )
        self.ratelimit_updated = Gauge(
            "watcher_registry_ratelimit_updated_timestamp_seconds",
            "When the rate-limit headers were last read (Unix time).",
            ["registry", "source"],
            registry=r,
        )

        self.manifest_gets = Counter(
            "watcher_registry_manifest_gets_total",
            "Manifest GETs sent: each may count as a pull on registries that meter them.",
            ["registry"],
            registry=r,
        )
        self.pulls_deferred = Counter(
            "watcher_registry_pulls_deferred_total",
            "Manifest GETs held back because the pull budget was at the reserve.",
            ["registry"],
            registry=r,
        )
        self.head_fallbacks = Counter(
            "watcher_registry_head_fallbacks_total",
            "Checks answered by GET because HEAD was refused or gave no digest.",
            ["registry", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "watcher_registry_retries_total",
            "Registry requests retried after a fault that may pass.",
            ["registry", "reason"],
            registry=r,
        )

        self.checks = Counter(
            "watcher_checks_total",
            "Checks of watched tags, by result.",
            ["registry", "result"],
            registry=r,
        )
        self.check_errors = Counter(
            "watcher_check_errors_total",
            "Failed checks, by a closed set of reasons.",
            ["registry", "reason"],
            registry=r,
        )
        self.check_seconds = Histogram(
            "watcher_check_duration_seconds",
            "Time one check took, authentication included.",
            ["registry"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.changes = Counter(
            "watcher_digest_changes_total",
            "Tags seen pointing at a new digest.",
            ["registry"],
            registry=r,
        )
        self.image_last_check = Gauge(
            "watcher_image_last_check_timestamp_seconds",
            "When the image was last checked (Unix time), successfully or not.",
            ["image"],
            registry=r,
        )
        self.image_last_change = Gauge(
            "watcher_image_last_change_timestamp_seconds",
            "When the image's tag was last seen moving to a new digest (Unix time).",
            ["image"],
            registry=r,
        )
        self.image_interval = Gauge(
            "watcher_image_check_interval_seconds",
            "The configured time between two checks of the image.",
            ["image"],
            registry=r,
        )
        self.image_check_failed = Gauge(
            "watcher_image_last_check_failed",
            "1 when the image's last check failed, else 0.",
            ["image"],
            registry=r,
        )

        self.notifications = Counter(
            "watcher_notifications_total",
            "Notification delivery attempts, by notifier scheme and outcome.",
            ["notifier", "outcome"],
            registry=r,
        )
        self.notifications_pending = Gauge(
            "watcher_notifications_pending",
            "Notifications owed and not yet delivered.",
            registry=r,
        )
        self.watches = Gauge(
            "watcher_watches", "Watches in the configuration.", registry=r
        )
        self.checks_in_flight = Gauge(
            "watcher_checks_in_flight", "Checks running right now.", registry=r
        )
        self.checks_overdue = Gauge(
            "watcher_checks_overdue",
            "Watches not checked for longer than their interval, jitter and a minute.",
            registry=r,
        )

    def request_done(
        self, registry: str, method: str, status: int | None, seconds: float
    ) -> None:
        """Count one registry request; ``status`` None means no response."""
        status_class = f"{status // 100}xx" if status is not None else "none"
        self.requests.labels(registry, method, status_class).inc()
        self.request_seconds.labels(registry, method).observe(seconds)

    def token_fetched(self, registry: str, ok: bool) -> None:
        """Count one token request."""
        self.tokens.labels(registry, "ok" if ok else "error").inc()

    def rate_limit_seen(self, registry: str, rate_limit: Any) -> None:
        """Store the rate-limit headers of a registry response."""
        source = rate_limit.source or ""
        if rate_limit.limit is not None:
            self.ratelimit_limit.labels(registry, source).set(rate_limit.limit)
        if rate_limit.remaining is not None:
            self.ratelimit_remaining.labels(registry, source).set(rate_limit.remaining)
        if rate_limit.window_seconds is not None:
            self.ratelimit_window.labels(registry, source).set(
                rate_limit.window_seconds
            )
        self.ratelimit_updated.labels(registry, source).set_to_current_time()

    def manifest_fetched(self, registry: str) -> None:
        """Count a manifest GET, which may cost a pull."""
        self.manifest_gets.labels(registry).inc()

    def pull_deferred(self, registry: str) -> None:
        """Count a manifest GET held back to keep the reserve."""
        self.pulls_deferred.labels(registry).inc()

    def head_fallback(self, registry: str, reason: str) -> None:
        """Count a check answered by GET; ``reason`` is ``no_digest``, ``405`` or ``404``."""
        self.head_fallbacks.labels(registry, reason).inc()

    def retry_scheduled(self, registry: str, reason: str) -> None:
        """Count a retry; ``reason`` is an error reason such as ``server_error``."""
        self.retries.labels(registry, _bounded_reason(reason)).inc()

    def watches_configured(self, intervals: Mapping[str, float]) -> None:
        """Start each image's series so dashboards and alerts see every watch at once.

        ``intervals`` maps each image to the seconds between its checks.
        """
        self.watches.set(len(intervals))
        for image, seconds in intervals.items():
            self.image_check_failed.labels(image).set(0)
            self.image_interval.labels(image).set(seconds)

    def notifiers_configured(self, schemes: Iterable[str]) -> None:
        """Start the delivery counters at zero, so `increase()` sees a first failure."""
        for scheme in set(schemes):
            for outcome in ("sent", "retry", "failed"):
                self.notifications.labels(scheme, outcome)

    def check_done(
        self,
        *,
        registry: str,
        image: str,
        result: str,
        seconds: float,
        at: datetime,
        reason: str | None = None,
    ) -> None:
        """Count one finished check and move the image's timestamps."""
        self.checks.labels(registry, result).inc()
        self.check_seconds.labels(registry).observe(seconds)
        self.image_last_check.labels(image).set(at.timestamp())
        self.image_check_failed.labels(image).set(1 if result == "error" else 0)
        if result == "error":
            self.check_errors.labels(registry, _bounded_reason(reason)).inc()
        if result == "changed":
            self.changes.labels(registry).inc()
            self.image_last_change.labels(image).set(at.timestamp())

    def restore_image(
        self, image: str, last_check: datetime | None, last_change: datetime | None
    ) -> None:
        """Seed an image's timestamps from the history after a restart."""
        if last_check is not None:
            self.image_last_check.labels(image).set(last_check.timestamp())
        if last_change is not None:
            self.image_last_change.labels(image).set(last_change.timestamp())

    def notification_attempted(self, notifier: str, outcome: str) -> None:
        """Count a delivery attempt: ``sent``, ``retry`` or ``failed``."""
        self.notifications.labels(notifier, outcome).inc()


def _bounded_reason(reason: str | None) -> str:
    return reason if reason in ERROR_REASONS else "internal"


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServerV6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        """Scrapes every 15 s would flood the log; requests are not events."""


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text) and ``/healthz`` on a background thread."""

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        exposition = make_wsgi_app(metrics.registry)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return exposition(environ, start_response)  # type: ignore[no-any-return]
            if path == "/healthz":
                ok = healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [b"ok\n" if ok else b"stopping\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found; try /metrics or /healthz\n"]

        server_class = _ThreadingWSGIServerV6 if ":" in host else _ThreadingWSGIServer
        try:
            self._server = make_server(
                host, port, app, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ListenError(address, exc.strerror or str(exc)) from exc
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> None:
        """Begin answering requests."""
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
