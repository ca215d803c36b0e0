"""Notification targets and messages, and Apprise behind a small ``Notifier`` seam.

The only module that imports Apprise. Apprise URLs often embed credentials
(webhook tokens, SMTP passwords), so a target is known everywhere else by its
``key`` (scheme and a short hash) and its ``scheme``; the URL stays in a
``SecretStr`` and leaves this module only inside Apprise.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import apprise
from pydantic import SecretStr

from watcher.errors import NotifyError
from watcher.logs import redact_text
from watcher.store import Change, OwedMessage


@dataclass(frozen=True, slots=True)
class Target:
    """One notification URL; ``key`` names it in the outbox, logs and metrics."""

    key: str
    scheme: str
    url: SecretStr

    @classmethod
    def from_url(cls, url: SecretStr) -> Target:
        """Name a target by its scheme and the first hex digits of its URL's hash."""
        secret = url.get_secret_value()
        scheme = secret.split("://", 1)[0].lower()
        fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:12]
        return cls(f"{scheme}-{fingerprint}", scheme, url)


def targets_from(urls: Sequence[SecretStr]) -> list[Target]:
    """The targets of the configured Apprise URLs, in order."""
    return [Target.from_url(url) for url in urls]


def check_urls(urls: Sequence[SecretStr]) -> list[tuple[int, str]]:
    """``(index, problem)`` per URL Apprise cannot use; the URLs themselves stay out."""
    problems = []
    for index, url in enumerate(urls):
        target = Target.from_url(url)
        with _apprise_silenced():
            accepted = apprise.Apprise().add(url.get_secret_value())
        if not accepted:
            problems.append(
                (
                    index,
                    f"Apprise does not accept this {target.scheme}:// URL; see "
                    "https://github.com/caronc/apprise/wiki for its form",
                )
            )
    return problems


@contextmanager
def _apprise_silenced() -> Iterator[None]:
    """Apprise logs a URL it rejects, secrets and all: keep that out of every log."""
    logger = logging.getLogger("apprise")
    propagate, disabled = logger.propagate, logger.disabled
    logger.propagate, logger.disabled = False, True
    try:
        yield
    finally:
        logger.propagate, logger.disabled = propagate, disabled


def render(change: Change) -> tuple[str, str]:
    """The default title and body announcing ``change``."""
    name = change.name
    when = change.detected_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if change.old_digest is None:
        title = f"Now watching {name}"
        body = f"{name} points at {change.new_digest} (first seen {when})."
        return title, body

    title = f"{name} changed"
    lines = [
        f"{name} now points at {change.new_digest}",
        f"previously {change.old_digest}",
        f"media type {change.media_type}",
        f"detected {when}",
    ]
    if change.platforms_known:
        lines += _platform_lines(change)
    return title, "\n".join(lines)


def _platform_lines(change: Change) -> list[str]:
    if not change.platforms:
        return ["no platform's manifest changed (only the index itself)"]
    lines = ["platforms changed:"]
    for entry in change.platforms:
        if entry.old_digest is None:
            lines.append(f"  {entry.platform}: added, {entry.new_digest}")
        elif entry.new_digest is None:
            lines.append(f"  {entry.platform}: removed (was {entry.old_digest})")
        else:
            lines.append(
                f"  {entry.platform}: {entry.old_digest} -> {entry.new_digest}"
            )
    return lines


class MessageBuilder:
    """Builds the messages a change owes every target (``store.MessagesFor``)."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self._targets = tuple(targets)

    def __call__(self, change: Change) -> list[OwedMessage]:
        title, body = render(change)
        return [OwedMessage(target.key, title, body) for target in self._targets]


class Notifier(Protocol):
    """Delivers one message to one target, or raises ``NotifyError``."""

    async def send(self, target: Target, title: str, body: str) -> None: ...


class AppriseNotifier:
    """Sends through Apprise, on a worker thread since Apprise blocks."""

    async def send(self, target: Target, title: str, body: str) -> None:
        """Deliver the message, or raise ``NotifyError`` with Apprise's reason."""
        await asyncio.to_thread(self._send, target, title, body)

    @staticmethod
    def _send(target: Target, title: str, body: str) -> None:
        sender = apprise.Apprise()
        secret = target.url.get_secret_value()
        if not sender.add(secret):
            raise NotifyError(target.key, "Apprise does not accept this URL")

        capture = apprise.LogCapture(level=logging.WARNING, fmt="%(message)s")  # type: ignore[no-untyped-call]  # Apprise ships no types for it
        with capture as captured:
            delivered = sender.notify(body=body, title=title)
        if not delivered:
            reason = " ".join(captured.getvalue().split()) or "no reason given"
            raise NotifyError(target.key, redact_text(reason, [secret]))
