"""Image references and digests: parse what users write, normalise it, name it.

Pure values, no I/O. Parsing follows what ``docker pull`` accepts: ``alpine`` is
``docker.io/library/alpine:latest``; the first path component is a registry host
only when it contains ``.`` or ``:`` or is ``localhost``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from watcher.errors import InvalidReference

#: The name users and the Docker CLI give Docker Hub.
DOCKER_HUB = "docker.io"
#: Where Docker Hub's registry API answers.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API_HOST})

DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

# The grammar of github.com/distribution/reference, written out for Python.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = re.compile(
    rf"(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
)
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"(?P<algorithm>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<hex>[a-f0-9]+)")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A content address such as ``sha256:<64 hex>``; valid once built."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Return the digest in ``text``, or raise ``ValueError`` saying what is wrong."""
        match = _DIGEST.fullmatch(text)
        if match is None:
            msg = f"digest {text!r} is not of the form sha256:<64 lowercase hex digits>"
            raise ValueError(msg)

        algorithm, hex_ = match["algorithm"], match["hex"]
        expected = _DIGEST_HEX_LENGTH.get(algorithm)
        if expected is None:
            msg = (
                f"digest {text!r} uses {algorithm!r}; only sha256 and sha512 are known"
            )
            raise ValueError(msg)

        if len(hex_) != expected:
            msg = f"digest {text!r} has {len(hex_)} hex digits; {algorithm} has {expected}"
            raise ValueError(msg)

        return cls(algorithm, hex_)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        """The first 12 hex digits, as ``docker images`` shows them."""
        return self.hex[:12]


_PLATFORM_PART = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ARCHITECTURE_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}


def _normal_variant(architecture: str, variant: str | None) -> str | None:
    """The variant as containerd normalises it: arm64's v8 is implied, arm's v7 too."""
    if architecture == "arm64" and variant == "v8":
        return None
    if architecture == "arm" and variant is None:
        return "v7"
    return variant


@dataclass(frozen=True, slots=True, order=True)
class Platform:
    """An ``os/architecture[/variant]`` triple such as ``linux/arm/v7``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]``, normalised as Docker does, or raise ``ValueError``.

        ``linux/arm64/v8`` is ``linux/arm64``, ``linux/arm`` is ``linux/arm/v7``,
        ``x86_64`` is ``amd64`` and ``aarch64`` is ``arm64``.
        """
        parts = text.strip().lower().split("/")
        if not 2 <= len(parts) <= 3 or not all(
            _PLATFORM_PART.fullmatch(p) for p in parts
        ):
            msg = f"platform {text!r} is not of the form os/arch[/variant], e.g. 'linux/arm64'"
            raise ValueError(msg)
        architecture = _ARCHITECTURE_ALIASES.get(parts[1], parts[1])
        variant = parts[2] if len(parts) == 3 else None
        return cls(parts[0], architecture, _normal_variant(architecture, variant))

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference: registry, repository, and a tag and/or digest.

    ``registry`` is the name users write (``docker.io``, ``ghcr.io``,
    ``localhost:5000``); ``api_host`` is where its registry API answers.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse a reference the way ``docker pull`` reads it.

        Raises:
            InvalidReference: the message quotes ``text`` and says what is wrong.
        """
        return _parse(text)

    @property
    def api_host(self) -> str:
        """The host[:port] that serves ``/v2/`` for this registry."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """Registry and repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def tag_or_digest(self) -> str:
        """The last segment of ``/v2/<name>/manifests/<...>`` for this reference."""
        if self.tag is not None:
            return self.tag
        assert self.digest is not None  # noqa: S101 - guaranteed by parse
        return str(self.digest)

    def with_tag(self, tag: str) -> Reference:
        """The same repository at another tag, without a digest."""
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _parse(text: str) -> Reference:
    if not text or text != text.strip():
        raise InvalidReference(text, "a reference is a non-empty name without spaces")

    remainder, digest = _split_digest(text)
    registry, path = _split_registry(remainder)
    repository, tag = _split_tag(text, path)

    if tag is None and digest is None:
        tag = DEFAULT_TAG

    _check_repository(text, registry, repository)
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"

    if len(f"{registry}/{repository}") > MAX_NAME_LENGTH:
        why = f"the name is longer than {MAX_NAME_LENGTH} characters"
        raise InvalidReference(text, why)

    return Reference(registry, repository, tag, digest)


def _split_digest(text: str) -> tuple[str, Digest | None]:
    remainder, at, digest_text = text.partition("@")
    if not at:
        return text, None

    try:
        return remainder, Digest.parse(digest_text)
    except ValueError as exc:
        raise InvalidReference(text, str(exc)) from exc


def _split_registry(text: str) -> tuple[str, str]:
    first, slash, rest = text.partition("/")
    is_host = bool(slash) and ("." in first or ":" in first or first == "localhost")
    if not is_host:
        return DOCKER_HUB, text

    if not _HOST.fullmatch(first):
        raise InvalidReference(text, f"{first!r} is not a valid registry host[:port]")

    port = first.rpartition(":")[2] if not first.endswith("]") else ""
    if port.isdigit() and not 0 < int(port) < 65536:
        raise InvalidReference(text, f"port {port} of {first!r} is not in 1-65535")

    registry = first.lower()
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
    return registry, rest


def _split_tag(text: str, path: str) -> tuple[str, str | None]:
    # A colon after the last slash separates the tag; a colon before it would
    # be a port, and ports were taken off with the registry.
    repository, colon, tag = path.rpartition(":")
    if not colon or "/" in tag:
        return path, None

    if not _TAG.fullmatch(tag):
        why = (
            f"tag {tag!r} is invalid; a tag is 1 to 128 letters, digits, '_', '.' "
            "or '-', and does not start with '.' or '-'"
        )
        raise InvalidReference(text, why)

    return repository, tag


def _check_repository(text: str, registry: str, repository: str) -> None:
    if not repository:
        raise InvalidReference(text, "the repository name is empty")

    if repository != repository.lower():
        lowered = text.replace(repository, repository.lower())
        why = f"repository must be lowercase; try {lowered!r}"
        raise InvalidReference(text, why)

    for component in repository.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            why = (
                f"path component {component!r} is invalid; use lowercase letters and "
                "digits, separated by '.', '_', '__' or '-'"
            )
            raise InvalidReference(text, why)


def watch_name(reference: Reference, platform: Platform | None = None) -> str:
    """How a watch is named in history, metrics and messages.

    The normalised reference, followed by the platform when the watch follows
    one platform of an index: ``docker.io/library/alpine:3 linux/arm64``.
    """
    return f"{reference} {platform}" if platform is not None else str(reference)
