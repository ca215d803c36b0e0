"""Logging as configured for the CLI: level filtering, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from watcher import logs

# Planted in the events below: no line written may show either.
PASSWORD = "hunter2-planted"
TOKEN = "eyJplanted.token.value"


class _CountedError(Exception):
    """An error that counts how often it is turned into text, as a traceback does."""

    def __init__(self) -> None:
        super().__init__()
        self.formatted = 0

    def __str__(self) -> str:
        self.formatted += 1
        return "counted"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """A stream for ``logs.configure``; logging's global state is restored after."""
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    levels = {
        name: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    config = structlog.get_config()
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(root_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.configure(**config)


def _log_counted_error(level: str) -> _CountedError:
    error = _CountedError()
    try:
        raise error
    except _CountedError:
        getattr(logs.get_logger("watcher.test"), level)("probe.failed", exc_info=True)
    return error


class TestLevel:
    def test_event_below_the_level_is_neither_formatted_nor_written(self, log_stream):
        """A DEBUG event at level info costs a level check: no traceback is built."""
        logs.configure(level="info", stream=log_stream)

        error = _log_counted_error("debug")

        assert log_stream.getvalue() == ""
        assert error.formatted == 0

    def test_event_at_the_level_is_written_with_its_traceback(self, log_stream):
        logs.configure(level="debug", stream=log_stream)

        error = _log_counted_error("debug")

        assert "event='probe.failed'" in log_stream.getvalue()
        assert "_CountedError: counted" in log_stream.getvalue()
        assert error.formatted >= 1

    def test_library_logger_below_its_level_writes_nothing(self, log_stream):
        """httpx logs each request at INFO; watcher keeps it at WARNING or above."""
        logs.configure(level="debug", stream=log_stream)

        logging.getLogger("httpx").info("HTTP Request: HEAD https://ghcr.io/v2/")

        assert log_stream.getvalue() == ""


class TestRedaction:
    @pytest.mark.parametrize("fmt", ["text", "json"])
    def test_planted_secrets_appear_in_no_line(self, log_stream, fmt):
        """Our events and library records alike, in either format, at any level."""
        logs.configure(level="debug", fmt=fmt, secrets=[PASSWORD], stream=log_stream)
        log = logs.get_logger("watcher.test")

        log.debug("token.fetched", detail=f"password={PASSWORD}")
        log.info("http.request", url=f"https://me:{PASSWORD}@ghcr.io/v2/")
        log.warning("auth.failed", header=f"Authorization: Bearer {TOKEN}")
        logging.getLogger("httpx").warning("retrying with Basic %s", TOKEN)

        lines = log_stream.getvalue().splitlines()
        assert len(lines) == 4
        assert all(PASSWORD not in line and TOKEN not in line for line in lines)
        assert all(logs.REDACTED in line for line in lines)
        if fmt == "json":
            assert [json.loads(line)["level"] for line in lines] == [
                "debug",
                "info",
                "warning",
                "warning",
            ]
