"""Find the credential for a registry: watcher's settings, then Docker's config.json.

Docker's ``config.json`` holds ``auths`` (inline credentials), ``credHelpers`` (a
helper program per registry) and ``credsStore`` (one helper for all); a helper is the
program ``docker-credential-<name>``. No HTTP here; nothing from watcher outside this
package but logging. Passwords and helper secrets never reach a log event or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watcher.logs import get_logger
from watcher.registry.auth import Credential

#: How long a credential helper may take to answer ``get``. Helpers that call a
#: cloud API (ECR, GCR) take a second or two; a hung one must not stall checks.
HELPER_TIMEOUT_SECONDS = 15.0
#: Where ``docker login`` stores Docker Hub credentials, and what its helpers are
#: asked for: the index's URL, not a host.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
#: The username a helper answers with when its secret is an identity token.
IDENTITY_TOKEN_USERNAME = "<token>"  # noqa: S105 - a marker, not a secret

_DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = frozenset(
    {_DOCKER_HUB, "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# What docker-credential-helpers print, with exit status 1, for a registry they
# hold nothing for: the protocol's "not logged in", not a failure.
_NOT_FOUND = "credentials not found"
_MAX_SHOWN_OUTPUT = 200

_log = get_logger("watcher.registry")


@dataclass(frozen=True, slots=True)
class FoundCredential:
    """The credential to use for a registry (None: anonymous), and where it came from.

    ``source`` is ``config``, ``docker-config``, ``helper:<name>`` or ``anonymous``.
    """

    credential: Credential | None
    source: str


ANONYMOUS = FoundCredential(None, "anonymous")


async def find_credential(
    registry: str,
    configured: Credential | None,
    docker_config: Path | None,
    *,
    helper_timeout: float = HELPER_TIMEOUT_SECONDS,
) -> FoundCredential:
    """The credential for ``registry`` (``docker.io``, ``ghcr.io``, ``host:port``).

    In order: ``configured`` (watcher's own settings); then ``docker_config``, read
    as the Docker CLI reads it: a helper named for the registry in ``credHelpers``,
    else ``credsStore``, else the inline ``auths`` entry; then anonymous. A helper
    that is missing, fails or hangs, and an identity token (which watcher cannot
    trade), each log a WARNING and give anonymous. Logs the source at INFO.
    """
    found = await _find(registry, configured, docker_config, helper_timeout)
    _log.info("credential.source", registry=registry, source=found.source)
    return found


async def _find(
    registry: str,
    configured: Credential | None,
    docker_config: Path | None,
    helper_timeout: float,
) -> FoundCredential:
    if configured is not None:
        return FoundCredential(configured, "config")

    config = read_docker_config(docker_config)
    helper = _helper_for(config, registry)
    if helper is not None:
        credential = await _run_helper(helper, registry, helper_timeout)
        if credential is None:
            return ANONYMOUS
        return FoundCredential(credential, f"helper:{helper}")

    credential = _inline_credential(config, registry)
    if credential is None:
        return ANONYMOUS
    return FoundCredential(credential, "docker-config")


def read_docker_config(path: Path | None) -> Mapping[str, Any]:
    """The JSON object in Docker's ``config.json``; empty when there is none.

    A file that exists but cannot be read or parsed logs a WARNING and counts as
    empty: credentials are then looked for nowhere else, and requests go anonymous.
    """
    if path is None:
        return {}

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _log.warning(
            "credential.docker_config_unreadable",
            path=str(path),
            error=type(exc).__name__,
            error_msg=_why(exc),
        )
        return {}

    if not isinstance(data, dict):
        _log.warning(
            "credential.docker_config_unreadable",
            path=str(path),
            error="ValueError",
            error_msg="the file holds no JSON object",
        )
        return {}

    return data


def _why(exc: Exception) -> str:
    """What went wrong reading the file, without quoting its content."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, UnicodeDecodeError):
        return "the file is not UTF-8 text"
    return "the file is not valid JSON"


def config_key_registry(key: str) -> str:
    """The registry a ``config.json`` key names, as references name it.

    Keys are hosts or URLs (``ghcr.io``, ``https://ghcr.io``,
    ``https://index.docker.io/v1/``); like the Docker CLI, the scheme and path are
    dropped, and Docker Hub's hosts all become ``docker.io``.
    """
    host = key.strip().lower()
    for scheme in ("https://", "http://"):
        host = host.removeprefix(scheme)

    host = host.split("/", 1)[0]
    return _DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def _entry_for(table: object, registry: str) -> Any:
    """The value under the first key of ``table`` naming ``registry``, else None."""
    if not isinstance(table, dict):
        return None

    for key, value in table.items():
        if isinstance(key, str) and config_key_registry(key) == registry:
            return value

    return None


def _helper_for(config: Mapping[str, Any], registry: str) -> str | None:
    helper = _entry_for(config.get("credHelpers"), registry)
    if not isinstance(helper, str) or not helper:
        helper = config.get("credsStore")

    return helper if isinstance(helper, str) and helper else None


def _inline_credential(config: Mapping[str, Any], registry: str) -> Credential | None:
    """The ``auths`` entry's credential; None for none, an identity token or junk."""
    entry = _entry_for(config.get("auths"), registry)
    if not isinstance(entry, dict):
        return None

    if entry.get("identitytoken"):
        _identity_token_unsupported(registry, "docker-config")
        return None

    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        return _decode_auth(registry, encoded)

    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str) and username:
        return Credential(username, password)

    return None


def _decode_auth(registry: str, encoded: str) -> Credential | None:
    try:
        pair = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        pair = ""

    username, colon, password = pair.partition(":")
    if not colon or not username:
        _log.warning(
            "credential.docker_config_invalid",
            registry=registry,
            error_msg=(
                "the auths entry's 'auth' is not base64 of user:password; "
                f"run docker login {registry} again"
            ),
        )
        return None

    return Credential(username, password)


def _identity_token_unsupported(registry: str, source: str) -> None:
    _log.warning(
        "credential.identity_token_unsupported",
        registry=registry,
        source=source,
        error_msg=(
            "the Docker config holds an identity token for this registry, which "
            "watcher cannot trade for a token; going anonymous. Set username and "
            f'password_env or password_file in [registries."{registry}"]'
        ),
    )


def helper_server_address(registry: str) -> str:
    """What a helper is asked about: the registry host, or Docker Hub's index URL."""
    return DOCKER_HUB_CONFIG_KEY if registry == _DOCKER_HUB else registry


async def _run_helper(name: str, registry: str, seconds: float) -> Credential | None:
    """Ask ``docker-credential-<name>`` for the registry's credential; None: none."""
    program = f"docker-credential-{name}"
    path = shutil.which(program) if _HELPER_NAME.fullmatch(name) else None
    if path is None:
        _helper_failed(registry, name, "missing", f"{program} is not on PATH")
        return None

    server = helper_server_address(registry)
    try:
        status, output = await _communicate(path, server, seconds)
    except TimeoutError:
        _helper_failed(registry, name, "timeout", f"no answer in {seconds:g} s")
        return None
    except OSError as exc:
        _helper_failed(registry, name, "exec", exc.strerror or type(exc).__name__)
        return None

    if status != 0:
        if _NOT_FOUND in output.lower():
            return None

        _helper_failed(
            registry, name, "exit", f"exit status {status}: {_shown(output)}"
        )
        return None

    return _helper_answer(registry, name, output)


async def _communicate(path: str, server: str, seconds: float) -> tuple[int, str]:
    """Run ``<path> get`` with ``server`` on stdin: its exit status and output."""
    # In a session of its own, so that the helper and whatever it started (a
    # shell script's children hold its pipes open) can be stopped together.
    process = await asyncio.create_subprocess_exec(
        path,
        "get",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(server.encode()), seconds
        )
    except BaseException:
        # Timed out or cancelled: the helper is ours to stop, and to reap.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise

    output = stdout.decode("utf-8", "replace")
    if process.returncode != 0:
        output = f"{output} {stderr.decode('utf-8', 'replace')}"

    return process.returncode or 0, output


def _helper_answer(registry: str, name: str, output: str) -> Credential | None:
    try:
        answer = json.loads(output)
    except ValueError:
        answer = None

    if not isinstance(answer, dict):
        _helper_failed(registry, name, "bad_output", "the answer is not a JSON object")
        return None

    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str):
        _helper_failed(registry, name, "bad_output", "no Username and Secret strings")
        return None

    if username == IDENTITY_TOKEN_USERNAME:
        _identity_token_unsupported(registry, f"helper:{name}")
        return None

    return Credential(username, secret) if username else None


def _shown(output: str) -> str:
    """The first line of a failed helper's output, short: it may explain the failure.

    JSON is withheld: a helper that fails after answering may have printed a secret.
    """
    lines = output.strip().splitlines()
    first = lines[0].strip() if lines else "(no output)"
    if first.startswith("{"):
        return "(JSON output withheld)"
    return first[:_MAX_SHOWN_OUTPUT]


def _helper_failed(registry: str, name: str, reason: str, detail: str) -> None:
    _log.warning(
        "credential.helper_failed",
        registry=registry,
        helper=f"docker-credential-{name}",
        reason=reason,
        error_msg=f"{detail}; going anonymous",
    )
