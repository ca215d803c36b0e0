"""Notification targets and messages, and Apprise behind a small ``Notifier`` seam.

The only module that imports Apprise, and only to check a URL or send a
message: loading its plugins is a large part of start-up, which a watcher
without notification URLs need not pay. Apprise URLs often embed credentials
(webhook tokens, SMTP passwords), so a target is known everywhere else by its
``key`` (scheme and a short hash) and its ``scheme``; the URL stays in a
``SecretStr`` and leaves this module only inside Apprise.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from pydantic import SecretStr

from watcher.config import DEFAULT_NOTIFIER, NotifierSettings, NotifySettings
from watcher.errors import NotifyError
from watcher.logs import redact_text
from watcher.reference import DOCKER_HUB, Reference
from watcher.store import Change, OwedMessage


@dataclass(frozen=True, slots=True)
class Target:
    """One notification URL; ``key`` names it in the outbox, logs and metrics."""

    key: str
    notifier: str
    scheme: str
    url: SecretStr

    @classmethod
    def from_url(cls, url: SecretStr, notifier: str = DEFAULT_NOTIFIER) -> Target:
        """Name a target by notifier, scheme and the first hex digits of its hash."""
        secret = url.get_secret_value()
        scheme = secret.split("://", 1)[0].lower()
        fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:12]
        key = f"{scheme}-{fingerprint}"
        if notifier != DEFAULT_NOTIFIER:
            key = f"{notifier}/{key}"
        return cls(key, notifier, scheme, url)


@dataclass(frozen=True, slots=True)
class Route:
    """A notifier: its targets, the changes it wants, and its message templates."""

    name: str
    targets: tuple[Target, ...]
    images: tuple[str, ...] | None = None
    registries: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    title: str | None = None
    body: str | None = None

    def accepts(self, change: Change) -> bool:
        """True when every filter this notifier has matches ``change``."""
        reference = change.reference
        names = (str(reference), reference.name, change.name)
        return (
            _any_match(self.images, names)
            and _any_match(self.registries, (reference.registry,))
            and _any_match(self.tags, (reference.tag or "",))
        )


def _any_match(patterns: tuple[str, ...] | None, values: tuple[str, ...]) -> bool:
    if patterns is None:
        return True
    return any(fnmatchcase(value, pattern) for pattern in patterns for value in values)


def routes_from(
    notify: NotifySettings, notifiers: Sequence[NotifierSettings]
) -> list[Route]:
    """The configured notifiers: ``[notify]`` first, then each ``[[notifier]]``."""
    routes = [
        Route(
            DEFAULT_NOTIFIER,
            tuple(Target.from_url(url) for url in notify.urls),
            title=notify.title,
            body=notify.body,
        )
    ]
    for notifier in notifiers:
        routes.append(
            Route(
                notifier.name,
                tuple(Target.from_url(url, notifier.name) for url in notifier.urls),
                images=_patterns(notifier.images),
                registries=_patterns(notifier.registries),
                tags=_patterns(notifier.tags),
                title=notifier.title,
                body=notifier.body,
            )
        )
    return routes


def _patterns(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values is not None else None


def targets_of(routes: Sequence[Route]) -> list[Target]:
    """Every target of every notifier."""
    return [target for route in routes for target in route.targets]


def check_urls(urls: Sequence[SecretStr]) -> list[tuple[int, str]]:
    """``(index, problem)`` per URL Apprise cannot use; the URLs themselves stay out."""
    problems = []
    for index, url in enumerate(urls):
        target = Target.from_url(url)
        if not _accepted(url):
            problems.append(
                (
                    index,
                    f"Apprise does not accept this {target.scheme}:// URL; see "
                    "https://github.com/caronc/apprise/wiki for its form",
                )
            )
    return problems


def _accepted(url: SecretStr) -> bool:
    import apprise  # here, not above: see the module docstring

    with _apprise_silenced():
        return bool(apprise.Apprise().add(url.get_secret_value()))


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


DEFAULT_TITLE = "${image} changed"
DEFAULT_BODY = """${image} now points at ${new_digest}
previously ${old_digest}
media type ${media_type}
detected ${time}${platforms}${link}"""
DEFAULT_FIRST_TITLE = "Now watching ${image}"
DEFAULT_FIRST_BODY = "${image} points at ${new_digest} (first seen ${time}).${link}"


def render(
    change: Change, title: str | None = None, body: str | None = None
) -> tuple[str, str]:
    """The title and body announcing ``change``, from templates or the defaults."""
    values = fields(change)
    first = change.old_digest is None
    if title is None:
        title = DEFAULT_FIRST_TITLE if first else DEFAULT_TITLE
    if body is None:
        body = DEFAULT_FIRST_BODY if first else DEFAULT_BODY
        values |= _decorated(values)
    return (
        string.Template(title).safe_substitute(values),
        string.Template(body).safe_substitute(values),
    )


def _decorated(values: dict[str, str]) -> dict[str, str]:
    """The optional parts of the default body, each on its own line when present."""
    return {
        "platforms": f"\n{values['platforms']}" if values["platforms"] else "",
        "link": f"\n{values['link']}" if values["link"] else "",
    }


def fields(change: Change) -> dict[str, str]:
    """The values a template can use (``config.TEMPLATE_FIELDS``)."""
    reference = change.reference
    old = change.old_digest
    return {
        "image": change.name,
        "registry": reference.registry,
        "repository": reference.repository,
        "tag": reference.tag or "",
        "platform": str(change.platform) if change.platform else "",
        "old_digest": str(old) if old else "",
        "new_digest": str(change.new_digest),
        "old_short": old.short if old else "",
        "new_short": change.new_digest.short,
        "media_type": change.media_type,
        "platforms": "\n".join(_platform_lines(change))
        if change.platforms_known
        else "",
        "time": change.detected_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "link": image_link(reference),
    }


def image_link(reference: Reference) -> str:
    """The page of a repository on registries that have one, else ``""``."""
    repository = reference.repository
    if reference.registry == DOCKER_HUB:
        namespace, _, name = repository.partition("/")
        if namespace == "library":
            return f"https://hub.docker.com/_/{name}"
        return f"https://hub.docker.com/r/{repository}"
    if reference.registry == "ghcr.io":
        return f"https://ghcr.io/{repository}"
    if reference.registry == "quay.io":
        return f"https://quay.io/repository/{repository}?tab=tags"
    return ""


#: Past this many changed platforms a message names the count of the rest, so
#: that an index of dozens of platforms still makes a message of bounded size.
MAX_PLATFORM_LINES = 20


def _platform_lines(change: Change) -> list[str]:
    if not change.platforms:
        return ["no platform's manifest changed (only the index itself)"]
    lines = ["platforms changed:"]
    for entry in change.platforms[:MAX_PLATFORM_LINES]:
        if entry.old_digest is None:
            lines.append(f"  {entry.platform}: added, {entry.new_digest}")
        elif entry.new_digest is None:
            lines.append(f"  {entry.platform}: removed (was {entry.old_digest})")
        else:
            lines.append(
                f"  {entry.platform}: {entry.old_digest} -> {entry.new_digest}"
            )
    rest = len(change.platforms) - MAX_PLATFORM_LINES
    if rest > 0:
        lines.append(f"  and {rest} more (`watcher history` lists them all)")
    return lines


class MessageBuilder:
    """Builds the messages a change owes each target of each notifier that wants it."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = tuple(routes)

    def __call__(self, change: Change) -> list[OwedMessage]:
        owed = []
        for route in self._routes:
            if not route.targets or not route.accepts(change):
                continue
            title, body = render(change, route.title, route.body)
            owed += [OwedMessage(target.key, title, body) for target in route.targets]
        return owed


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """How one test message fared: ``error`` is None when it was delivered."""

    notifier: str
    target: str
    error: str | None


async def send_test_messages(
    routes: Sequence[Route], notifier: Notifier
) -> list[SendOutcome]:
    """Send one test message to every target of ``routes``, outside the outbox."""
    title = "watcher test message"
    body = "This is a test from watcher: this target receives digest changes."
    outcomes = []
    for route in routes:
        for target in route.targets:
            try:
                await notifier.send(target, title, body)
            except NotifyError as exc:
                outcomes.append(SendOutcome(route.name, target.scheme, str(exc)))
            else:
                outcomes.append(SendOutcome(route.name, target.scheme, None))
    return outcomes


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
        import apprise  # here, not above: see the module docstring

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
