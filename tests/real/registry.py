"""A real registry for integration tests: Debian's `docker-registry` (CNCF distribution).

`start_registry()` runs the binary on 127.0.0.1 with filesystem storage in a temporary
directory, optionally behind htpasswd basic auth or bearer tokens from a token server
(`TokenAuth`), and waits until `GET /v2/` answers.
`RegistryServer.stop()` kills the process it started (by PID) and removes the directory.
Imports nothing from watcher.
"""

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.real.ports import LOOPBACK
from tests.real.process import clean_up, read_text, start_on_free_port

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
REGISTRY_INSTALL_HINT = "apt-get install docker-registry"
HTPASSWD_INSTALL_HINT = "apt-get install apache2-utils"
DEFAULT_STARTUP_TIMEOUT_SECONDS = 10.0
_POLL_INTERVAL_SECONDS = 0.05


class ToolMissingError(RuntimeError):
    """A program the fixture needs is not installed; `hint` says how to get it."""

    def __init__(self, tool: str, hint: str) -> None:
        self.tool = tool
        self.hint = hint
        super().__init__(f"{tool} is not installed; install it with `{hint}`")


class RegistryStartError(RuntimeError):
    """The registry process exited or never answered `GET /v2/`."""


@dataclass(frozen=True, slots=True)
class BasicCredential:
    """A user and password the registry's htpasswd file accepts."""

    username: str
    password: str = field(repr=False)

    def as_auth(self) -> tuple[str, str]:
        """Return the pair httpx takes as `auth=` for HTTP basic auth."""
        return (self.username, self.password)


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """The `auth: token:` settings of a registry that takes bearer tokens.

    `realm` is the token endpoint its challenges name. Tokens must carry `issuer`
    as `iss` and `service` as `aud`, and be signed by a key whose certificate
    chains to `root_certificates` (PEM; written to the registry's `rootcertbundle`).
    """

    realm: str
    service: str
    issuer: str
    root_certificates: bytes = field(repr=False)


@dataclass(slots=True, weakref_slot=True)
class RegistryServer:
    """A running `docker-registry` process; `stop()` is idempotent.

    Should `stop()` never be called (a crashed fixture, a test that forgot), the
    process is still killed and the directory removed when this object is
    garbage-collected or, at the latest, when the interpreter exits.
    """

    url: str
    host: str
    root: Path
    credential: BasicCredential | None
    process: subprocess.Popen[bytes]
    stderr_path: Path
    _workdir: Path
    token_auth: TokenAuth | None = None
    _finalizer: "weakref.finalize[[subprocess.Popen[bytes], Path], RegistryServer]" = (
        field(init=False, repr=False)
    )

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, clean_up, self.process, self._workdir)

    @property
    def stderr(self) -> str:
        """Return what the registry has logged so far (level warn and above)."""
        return read_text(self.stderr_path)

    def stop(self) -> None:
        """Stop the process this object started and delete its storage."""
        self._finalizer()

    def __enter__(self) -> "RegistryServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_registry(
    *,
    credential: BasicCredential | None = None,
    token_auth: TokenAuth | None = None,
    binary: Path = REGISTRY_BINARY,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
) -> RegistryServer:
    """Start `docker-registry` on a free 127.0.0.1 port and wait until it answers.

    Args:
        credential: when given, the registry demands HTTP basic auth (htpasswd,
            bcrypt) and answers 401 with `WWW-Authenticate: Basic realm=...`.
        token_auth: when given, the registry demands bearer tokens from
            `token_auth.realm` and answers 401 with
            `WWW-Authenticate: Bearer realm=...,service=...[,scope=...]`.
            Exclusive with `credential`: the token server checks credentials.
        startup_timeout: seconds to wait for `GET /v2/` before giving up.

    Raises:
        ToolMissingError: the registry binary, or `htpasswd` when a credential is
            asked for, is not installed.
        RegistryStartError: the process exited or did not answer in time; the
            message holds its stderr.
        ValueError: both `credential` and `token_auth` were given.
    """
    if credential is not None and token_auth is not None:
        msg = "start_registry: give credential (htpasswd) or token_auth, not both"
        raise ValueError(msg)

    if not binary.is_file():
        raise ToolMissingError(str(binary), REGISTRY_INSTALL_HINT)

    workdir = Path(tempfile.mkdtemp(prefix="watcher-registry-"))
    try:
        (workdir / "storage").mkdir()
        auth_config: list[str] = []
        if credential is not None:
            auth_config = _htpasswd_config(_write_htpasswd(workdir, credential))
        elif token_auth is not None:
            auth_config = _token_config(workdir, token_auth)

        return _start_on_free_port(
            binary, workdir, auth_config, credential, token_auth, startup_timeout
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _start_on_free_port(
    binary: Path,
    workdir: Path,
    auth_config: list[str],
    credential: BasicCredential | None,
    token_auth: TokenAuth | None,
    startup_timeout: float,
) -> RegistryServer:
    def spawn(port: int, attempt: int) -> tuple[subprocess.Popen[bytes], Path]:
        config = _write_config(workdir, port, auth_config)
        stderr_path = workdir / f"stderr-{attempt}.log"
        return _spawn(binary, config, stderr_path), stderr_path

    started = start_on_free_port(
        "docker-registry",
        spawn,
        _wait_until_ready,
        startup_timeout,
        RegistryStartError,
    )
    return RegistryServer(
        url=started.url,
        host=f"{LOOPBACK}:{started.port}",
        root=workdir / "storage",
        credential=credential,
        process=started.process,
        stderr_path=started.log_path,
        _workdir=workdir,
        token_auth=token_auth,
    )


def _write_config(workdir: Path, port: int, auth_config: list[str]) -> Path:
    # http.debug is left out, so no debug server starts. JSON strings are valid
    # YAML scalars, which keeps paths with odd characters safe without PyYAML.
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {json.dumps(str(workdir / 'storage'))}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: {LOOPBACK}:{port}",
        f"  secret: {secrets.token_hex(16)}",
        *auth_config,
    ]
    config = workdir / "config.yml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def _htpasswd_config(htpasswd: Path) -> list[str]:
    return [
        "auth:",
        "  htpasswd:",
        "    realm: watcher-test-registry",
        f"    path: {json.dumps(str(htpasswd))}",
    ]


def _token_config(workdir: Path, token_auth: TokenAuth) -> list[str]:
    # distribution 2.8 refuses to start without a rootcertbundle holding at least
    # one certificate; it verifies a token's x5c chain against these roots.
    bundle = workdir / "token-roots.pem"
    bundle.write_bytes(token_auth.root_certificates)
    return [
        "auth:",
        "  token:",
        f"    realm: {json.dumps(token_auth.realm)}",
        f"    service: {json.dumps(token_auth.service)}",
        f"    issuer: {json.dumps(token_auth.issuer)}",
        f"    rootcertbundle: {json.dumps(str(bundle))}",
    ]


def _write_htpasswd(workdir: Path, credential: BasicCredential) -> Path:
    # distribution only accepts bcrypt entries; Python's stdlib has no bcrypt and
    # the `bcrypt` package is not a test dependency, so Apache's tool makes them.
    tool_name = "htpasswd"
    tool = shutil.which(tool_name)
    if tool is None:
        raise ToolMissingError(tool_name, HTPASSWD_INSTALL_HINT)

    result = subprocess.run(
        [tool, "-Bbn", credential.username, credential.password],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        msg = f"htpasswd -Bbn exited with {result.returncode}: {stderr}"
        raise RegistryStartError(msg)

    path = workdir / "htpasswd"
    path.write_bytes(result.stdout)
    return path


def _spawn(binary: Path, config: Path, stderr_path: Path) -> subprocess.Popen[bytes]:
    # REGISTRY_* variables override config.yml in distribution; drop any the
    # developer has exported so the file above is the whole configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            [str(binary), "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _wait_until_ready(
    url: str, process: subprocess.Popen[bytes], stderr_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                msg = f"docker-registry exited with {process.returncode} before answering GET {url}/v2/; its output:\n{read_text(stderr_path)}"
                raise RegistryStartError(msg)

            try:
                response = client.get(f"{url}/v2/")
            except httpx.TransportError:
                time.sleep(_POLL_INTERVAL_SECONDS)
                continue

            # 401 is the ready answer of a registry with htpasswd or token auth.
            if response.status_code in (200, 401):
                return

            time.sleep(_POLL_INTERVAL_SECONDS)

    msg = f"docker-registry did not answer GET {url}/v2/ within {timeout} s; its output:\n{read_text(stderr_path)}"
    raise RegistryStartError(msg)
