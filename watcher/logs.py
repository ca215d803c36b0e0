"""Logging: structlog set up once, with secrets taken out of every event.

Events are fixed dotted names (``check.completed``); everything variable is a
field. Library loggers (httpx, apscheduler, apprise) go through the same
processors, so the redaction below covers them too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import structlog

REDACTED = "***"

# Credentials that may ride inside any text: HTTP auth header values and the
# userinfo part of URLs.
_AUTH_VALUE = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without userinfo, query string or fragment: safe to log or show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with known secrets, auth header values and URL userinfo masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _AUTH_VALUE.sub(rf"\1 {REDACTED}", text)
    return _URL_USERINFO.sub(rf"\1{REDACTED}@", text)


class Redactor:
    """A structlog processor that masks secrets in every string field of an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            if isinstance(value, str):
                event_dict[key] = redact_text(value, self._secrets)
        return event_dict


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR

# These libraries log every request or job at INFO; ours say it better at DEBUG.
_QUIET_LIBRARIES = ("httpx", "httpcore", "apprise", "urllib3", "alembic")
# APScheduler warns at every skipped overlapping run; the job wrapper and the
# metrics say what matters about jobs.
_SILENT_LIBRARIES = ("apscheduler",)


def configure(
    *,
    level: str = "info",
    fmt: str = "text",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Send structlog and stdlib logging through one redacting renderer."""
    redactor = Redactor(secrets)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    # filter_by_level first: an event below the level is dropped after one level
    # check, before the timestamp, the redactor or a traceback is made for it
    # (the registry client sends a DEBUG event per request).
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redactor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream) if stream else _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, _LEVELS[level]))
    for name in _SILENT_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time, as test runners swap it."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """The stream is always the current ``sys.stderr``; nothing to set."""


def get_logger(name: str) -> Any:
    """A structlog logger named ``name`` (``watcher.check``, ``watcher.registry``)."""
    return structlog.get_logger(name)
