"""The configuration file: read, validate, and freeze it into ``Settings``.

This is the only module that reads the environment. Every problem in a file is
reported at once, each naming the file, the line, the key and the accepted form.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from watcher.errors import ConfigError, InvalidReference
from watcher.reference import DOCKER_HUB, Platform, Reference, watch_name

DEFAULT_DATABASE_URL = "sqlite:///watcher.db"
DEFAULT_CHECK_INTERVAL_SECONDS = 6 * 3600
DEFAULT_LISTEN = "0.0.0.0:9877"
DEFAULT_CONCURRENCY = 64
DEFAULT_REGISTRY_CONCURRENCY = 8
DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
#: Retries of a request that failed in a way that may pass (5xx, 429, network).
DEFAULT_RETRIES = 3
#: Docker Hub's registry API and its token realm live on different hosts; the
#: Docker CLI sends Hub credentials to auth.docker.io, and so do we by default.
DEFAULT_REALM_HOSTS = {"docker.io": frozenset({"auth.docker.io"})}
#: Jitter spreads checks of one interval so that many watches do not fire at once.
DEFAULT_JITTER_FRACTION = 0.1
MAX_DEFAULT_JITTER_SECONDS = 300.0
#: How often the delivery loop looks for notifications still owed.
DEFAULT_NOTIFY_RETRY_SECONDS = 30.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_FORM = 'a duration such as "30s", "15m", "6h", "1d" or "1h30m"'


def parse_duration(value: object) -> float:
    """Seconds in a duration: ``"1h30m"``, ``"45s"``, or a bare number of seconds."""
    if isinstance(value, bool):
        msg = f"expected {_DURATION_FORM}, got {value!r}"
        raise ValueError(msg)  # noqa: TRY004 - pydantic reports ValueError as a problem

    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        seconds = _parse_duration_text(value.strip())
    else:
        msg = f"expected {_DURATION_FORM}, got {value!r}"
        raise ValueError(msg)

    if seconds <= 0:
        msg = f"expected a positive duration, got {value!r}"
        raise ValueError(msg)
    return seconds


def _parse_duration_text(text: str) -> float:
    position, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match[1]) * _UNIT_SECONDS[match[2]]
        position = match.end()

    if position != len(text) or position == 0:
        msg = f"expected {_DURATION_FORM}, got {text!r}"
        raise ValueError(msg)
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest ``1h30m``-style text for a number of seconds."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"

    parts, rest = [], seconds
    for unit in ("d", "h", "m"):
        whole, rest = divmod(rest, _UNIT_SECONDS[unit])
        if whole:
            parts.append(f"{int(whole)}{unit}")
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _parse_reference(value: object) -> Reference:
    if isinstance(value, Reference):
        return value
    if not isinstance(value, str):
        msg = f"expected an image reference such as 'python:3.12-slim', got {value!r}"
        raise ValueError(msg)  # noqa: TRY004 - pydantic turns ValueError into a problem
    try:
        return Reference.parse(value)
    except InvalidReference as exc:
        raise ValueError(str(exc)) from exc


def _parse_platform(value: object) -> Platform:
    if isinstance(value, Platform):
        return value
    if not isinstance(value, str):
        msg = f"expected a platform such as 'linux/arm64', got {value!r}"
        raise ValueError(msg)  # noqa: TRY004 - pydantic reports ValueError as a problem
    return Platform.parse(value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistrySettings(_Model):
    """Settings for one registry, keyed by the name users write (``docker.io``)."""

    endpoint: str | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    concurrency: int = Field(default=DEFAULT_REGISTRY_CONCURRENCY, ge=1, le=1000)
    timeout: Duration = DEFAULT_HTTP_TIMEOUT_SECONDS
    retries: int = Field(default=DEFAULT_RETRIES, ge=0, le=10)
    #: A PEM bundle of the CAs that sign this registry's certificate.
    ca_file: Path | None = None
    #: Skip TLS certificate verification: only for a registry you trust by network.
    insecure: bool = False
    #: Hosts of token realms, other than the registry's own, that may receive this
    #: registry's credentials. Unset: the registry's built-in default, if any.
    realm_hosts: list[str] | None = None
    #: Filled from ``password_env`` or ``password_file`` by ``load``, never from
    #: the file itself.
    password: SecretStr | None = Field(default=None, exclude=True)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or port == -1
            or any(ord(char) < 33 for char in value)
        ):
            msg = f"expected an http:// or https:// URL such as 'https://mirror.example.com', got {value!r}"
            raise ValueError(msg)
        if parts.username or parts.password:
            msg = "put credentials in username and password_env, not in the URL"
            raise ValueError(msg)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _password_needs_username(self) -> RegistrySettings:
        if self.password_env is not None and self.password_file is not None:
            msg = "set one of password_env and password_file, not both"
            raise ValueError(msg)
        source = "password_env" if self.password_env else "password_file"
        if (self.password_env or self.password_file) and self.username is None:
            msg = f"{source} is set but username is not; set both"
            raise ValueError(msg)
        return self

    def realm_hosts_for(self, registry: str) -> frozenset[str]:
        """Hosts besides the registry's own that its credentials may be sent to."""
        if self.realm_hosts is not None:
            return frozenset(host.lower() for host in self.realm_hosts)
        return DEFAULT_REALM_HOSTS.get(registry, frozenset())


class WatchSettings(_Model):
    """One ``[[watch]]`` entry: an image reference and its schedule."""

    image: Annotated[Reference, BeforeValidator(_parse_reference)]
    interval: Duration | None = None
    #: Follow one platform's manifest inside the tag's index (``linux/arm64``).
    platform: Annotated[Platform, BeforeValidator(_parse_platform)] | None = None

    @property
    def name(self) -> str:
        """How this watch is named everywhere: the reference, and its platform if any."""
        return watch_name(self.image, self.platform)

    @field_validator("image")
    @classmethod
    def _image_names_a_tag(cls, value: Reference) -> Reference:
        if value.tag is None:
            msg = (
                f"{str(value)!r} pins a digest, which never changes; "
                "watch a tag instead, e.g. 'name:tag'"
            )
            raise ValueError(msg)
        return value


class NotifySettings(_Model):
    """Where changes are announced: Apprise URLs, which often embed secrets."""

    urls: list[SecretStr] = Field(default_factory=list)

    @field_validator("urls")
    @classmethod
    def _urls_have_a_scheme(cls, value: list[SecretStr]) -> list[SecretStr]:
        for url in value:
            if "://" not in url.get_secret_value():
                msg = (
                    "expected an Apprise URL such as 'json://host/path' (scheme://...)"
                )
                raise ValueError(msg)
        return value


class Settings(_Model):
    """The whole configuration, loaded once by the CLI and passed down."""

    database_url: str = DEFAULT_DATABASE_URL
    interval: Duration = DEFAULT_CHECK_INTERVAL_SECONDS
    jitter: Duration | None = None
    listen: str = DEFAULT_LISTEN
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=10000)
    notify_on_first_seen: bool = False
    notify_retry: Duration = DEFAULT_NOTIFY_RETRY_SECONDS
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    #: Docker's config.json, for credentials `docker login` stored. Unset: the
    #: file under $DOCKER_CONFIG, else ~/.docker/config.json.
    docker_config: Path | None = None
    registries: dict[str, RegistrySettings] = Field(default_factory=dict)
    watch: list[WatchSettings] = Field(default_factory=list)
    notify: NotifySettings = Field(default_factory=NotifySettings)

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("registries")
    @classmethod
    def _registry_keys_are_hosts(
        cls, value: dict[str, RegistrySettings]
    ) -> dict[str, RegistrySettings]:
        normalised: dict[str, RegistrySettings] = {}
        for key, settings in value.items():
            name = registry_name(key)
            if name in normalised:
                msg = f"registry {key!r} is configured twice (as {name!r})"
                raise ValueError(msg)
            normalised[name] = settings
        return normalised

    def registry(self, name: str) -> RegistrySettings:
        """The settings of one registry, or the defaults when it has none."""
        return self.registries.get(name) or RegistrySettings()

    def interval_of(self, watch: WatchSettings) -> float:
        """Seconds between two checks of ``watch``."""
        return watch.interval if watch.interval is not None else self.interval

    def jitter_of(self, watch: WatchSettings) -> float:
        """Seconds of random delay added to each scheduled check of ``watch``."""
        if self.jitter is not None:
            return self.jitter
        interval = self.interval_of(watch)
        return min(interval * DEFAULT_JITTER_FRACTION, MAX_DEFAULT_JITTER_SECONDS)

    def secrets(self) -> list[str]:
        """Every secret value in the settings, for the log redactor."""
        found = [url.get_secret_value() for url in self.notify.urls]
        found += [
            registry.password.get_secret_value()
            for registry in self.registries.values()
            if registry.password is not None
        ]
        return [secret for secret in found if secret]


def registry_name(key: str) -> str:
    """Normalise a registry key as references do (``index.docker.io`` → docker.io)."""
    try:
        return Reference.parse(f"{key.lower()}/x").registry
    except InvalidReference:
        return key.lower()


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::]:9877`` for IPv6) into host and port; port 0 picks one."""
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) < 65536:
        msg = f"expected host:port such as '0.0.0.0:9877', got {value!r}"
        raise ValueError(msg)
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and resolve the configuration file at ``path``.

    Raises:
        ConfigError: with one line per problem, each naming line and key.
    """
    environ = os.environ if environ is None else environ
    path = Path(path)
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc

    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        locator = _KeyLocator(text)
        problems = [_describe(error, locator) for error in exc.errors()]
        raise ConfigError(str(path), problems) from None

    return _resolve_secrets(settings, str(path), text, environ)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "create it (see config.example.toml) or pass --config"
        raise ConfigError(str(path), [f"file not found; {hint}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None


def _resolve_secrets(
    settings: Settings, path: str, text: str, environ: Mapping[str, str]
) -> Settings:
    locator = _KeyLocator(text)
    problems: list[str] = []
    registries: dict[str, RegistrySettings] = {}
    for name, registry in settings.registries.items():
        if registry.password_env is None:
            registries[name] = registry
            continue

        secret = environ.get(registry.password_env)
        if not secret:
            where = locator.where(
                ("registries", _original_key(text, name), "password_env")
            )
            problems.append(
                f"{where}: environment variable {registry.password_env} is not set; "
                f"export it with the password for {registry.username}@{name}"
            )
            continue
        registries[name] = registry.model_copy(update={"password": SecretStr(secret)})

    problems += _duplicate_watches(settings, locator)
    if problems:
        raise ConfigError(path, problems)
    docker_config = settings.docker_config or _default_docker_config(environ)
    return settings.model_copy(
        update={"registries": registries, "docker_config": docker_config}
    )


def _default_docker_config(environ: Mapping[str, str]) -> Path | None:
    if environ.get("DOCKER_CONFIG"):
        return Path(environ["DOCKER_CONFIG"]) / "config.json"
    if environ.get("HOME"):
        return Path(environ["HOME"]) / ".docker" / "config.json"
    return None


def _read_password(
    registry: RegistrySettings, name: str, environ: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The password, or a problem saying why it cannot be had (never the secret)."""
    account = f"{registry.username}@{name}"
    if registry.password_env is not None:
        secret = environ.get(registry.password_env)
        if not secret:
            return None, (
                f"environment variable {registry.password_env} is not set; "
                f"export it with the password for {account}"
            )
        return secret, None

    if registry.password_file is not None:
        try:
            secret = registry.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            return None, f"cannot read {registry.password_file}: {why}"
        if not secret:
            return (
                None,
                f"{registry.password_file} is empty; put the password for {account} in it",
            )
        return secret, None

    return None, None


def _missing_files(
    registry: RegistrySettings, key: tuple[str, str], locator: _KeyLocator
) -> list[str]:
    if registry.ca_file is None or registry.ca_file.is_file():
        return []
    where = locator.where((*key, "ca_file"))
    return [
        f"{where}: {registry.ca_file} does not exist; give the path of a PEM CA bundle"
    ]


def _duplicate_watches(settings: Settings, locator: _KeyLocator) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for index, watch in enumerate(settings.watch):
        key = watch.name
        if key in seen:
            where = locator.where(("watch", index, "image"))
            problems.append(
                f"{where}: {key} is already watched by watch[{seen[key]}]; "
                "remove one of them"
            )
        seen.setdefault(key, index)
    return problems


def _original_key(text: str, name: str) -> str:
    """The registry key as written in the file, which may be an alias of ``name``."""
    for match in re.finditer(
        r'^\s*\[registries\.(?:"([^"]+)"|([^\]\s]+))\]', text, re.M
    ):
        written = match[1] or match[2]
        if registry_name(written) == name:
            return written
    return name


def _describe(error: Mapping[str, Any], locator: _KeyLocator) -> str:
    loc = tuple(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    kind = error["type"]
    if kind == "extra_forbidden":
        message = f"unknown key; {_known_keys(loc)}"
    elif kind == "missing":
        message = "required key is missing"
    return f"{locator.where(loc)}: {message}"


def _known_keys(loc: Sequence[Any]) -> str:
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if isinstance(part, int) or (
            model is not Settings and part not in model.model_fields
        ):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        annotation = field.annotation
        inner = _model_inside(annotation)
        if inner is not None:
            model = inner
        elif part == "registries":
            model = RegistrySettings
    names = [name for name, field in model.model_fields.items() if not field.exclude]
    return "expected one of: " + ", ".join(names)


def _model_inside(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_inside(arg)
        if found is not None:
            return found
    return None


@dataclass
class _KeyLocator:
    """Finds the line of a key path such as ``("watch", 2, "interval")`` in TOML text.

    tomllib keeps no positions, so this reads the text the simple way: table
    headers, arrays of tables and ``key =`` lines. It is only used to point at a
    line in an error message; when it cannot tell, the message names the key alone.
    """

    text: str

    def where(self, loc: Sequence[Any]) -> str:
        key = _format_key(loc)
        line = self._line_of(loc)
        return f"line {line}: {key}" if line is not None else key

    def _line_of(self, loc: Sequence[Any]) -> int | None:
        wanted = tuple(str(part) for part in loc)
        best: int | None = None
        for path, line in self._paths():
            if path == wanted:
                return line
            if best is None and wanted[: len(path)] == path and path:
                best = line
        return best

    def _paths(self) -> list[tuple[tuple[str, ...], int]]:
        found: list[tuple[tuple[str, ...], int]] = []
        table: tuple[str, ...] = ()
        counts: dict[tuple[str, ...], int] = {}
        for number, raw in enumerate(self.text.splitlines(), start=1):
            line = raw.strip()
            if line.startswith("[["):
                name = _split_dotted(line.strip("[] "))
                index = counts.get(name, -1) + 1
                counts[name] = index
                table = (*name, str(index))
                found.append((table, number))
            elif line.startswith("["):
                table = _split_dotted(line.strip("[] "))
                found.append((table, number))
            elif "=" in line and not line.startswith("#"):
                key = _split_dotted(line.split("=", 1)[0].strip())
                found.append(((*table, *key), number))
        return found


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.\s]+)', text)
    return tuple(double or single or bare for double, single, bare in parts)


def _format_key(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f'."{part}"' if "." in str(part) or ":" in str(part) else f".{part}"
        else:
            text = str(part)
    return text or "(top level)"


__all__ = [
    "DOCKER_HUB",
    "NotifySettings",
    "RegistrySettings",
    "Settings",
    "WatchSettings",
    "format_duration",
    "load",
    "parse_duration",
    "parse_listen",
]
