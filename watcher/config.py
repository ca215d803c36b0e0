"""The configuration file: read, validate, and freeze it into ``Settings``.

This is the only module that reads the environment. Every problem in a file is
reported at once, each naming the file, the line, the key and the accepted form.
"""

from __future__ import annotations

import math
import os
import re
import ssl
import string
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from watcher.errors import ConfigError, InvalidReference
from watcher.reference import DOCKER_HUB, Platform, Reference, watch_name

DEFAULT_DATABASE_URL = "sqlite:///watcher.db"
#: The name of the ``[notify]`` notifier, in messages and ``watcher notify test``.
DEFAULT_NOTIFIER = "default"
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
DEFAULT_NOTIFY_LEASE_SECONDS = 60.0
DEFAULT_NOTIFY_MAX_AGE_SECONDS = 24 * 3600.0
DEFAULT_CHECK_RETENTION_SECONDS = 30 * 86400.0

#: Longer durations are surely typos; the scheduler cannot represent far futures.
MAX_DURATION_SECONDS = 366 * 86400.0
MIN_INTERVAL_SECONDS = 1.0

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

    if not math.isfinite(seconds) or seconds <= 0:
        msg = f"expected a positive duration, got {value!r}"
        raise ValueError(msg)
    if seconds > MAX_DURATION_SECONDS:
        msg = f"expected a duration of at most 366d, got {value!r}"
        raise ValueError(msg)
    return seconds


def parse_jitter(value: object) -> float:
    """A duration, or zero (``"0s"``, ``0``) for checks exactly on their interval."""
    if value in (0, "0", "0s"):
        return 0.0
    return parse_duration(value)


def parse_interval(value: object) -> float:
    """A duration of at least one second: the shortest time between two checks."""
    seconds = parse_duration(value)
    if seconds < MIN_INTERVAL_SECONDS:
        msg = f"expected an interval of at least 1s, got {value!r}"
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
Interval = Annotated[float, BeforeValidator(parse_interval)]


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
    #: Requests a second to this registry at most, spaced evenly; unset: no limit.
    rate: float | None = Field(default=None, gt=0)
    timeout: Duration = DEFAULT_HTTP_TIMEOUT_SECONDS
    retries: int = Field(default=DEFAULT_RETRIES, ge=0, le=10)
    #: Pulls to leave for the user's own `docker pull`s: at or below this many
    #: left, watcher makes no manifest GET until the rate-limit window passes.
    reserve: int = Field(default=0, ge=0)
    #: A PEM bundle of the CAs that sign this registry's certificate.
    ca_file: Path | None = None
    #: Skip TLS certificate verification: only for a registry you trust by network.
    insecure: StrictBool = False
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
        if self.ca_file is not None and self.insecure:
            msg = "ca_file and insecure = true contradict; keep ca_file to verify"
            raise ValueError(msg)
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
    interval: Interval | None = None
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
        # A pinned digest beside the tag is where the tag was; the tag is watched.
        return value.with_tag(value.tag)


#: The fields a message template may use, as ``${name}``.
TEMPLATE_FIELDS = (
    "image",
    "registry",
    "repository",
    "tag",
    "platform",
    "old_digest",
    "new_digest",
    "old_short",
    "new_short",
    "media_type",
    "platforms",
    "time",
    "link",
)
_NOTIFIER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _check_template(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        names = string.Template(value).get_identifiers()
    except ValueError as exc:
        msg = f"not a template: {exc}; write fields as ${{image}}, and $$ for a dollar"
        raise ValueError(msg) from exc
    if not string.Template(value).is_valid():
        msg = "not a template: a '$' starts no field; write $$ for a dollar sign"
        raise ValueError(msg)
    unknown = sorted(set(names) - set(TEMPLATE_FIELDS))
    if unknown:
        msg = f"unknown field ${{{unknown[0]}}}; the fields are " + ", ".join(
            TEMPLATE_FIELDS
        )
        raise ValueError(msg)
    return value


Template = Annotated[str | None, AfterValidator(_check_template)]


class _NotifierFields(_Model):
    """What every notifier has: where to send, and how the message reads."""

    urls: list[SecretStr] = Field(default_factory=list)
    title: Template = None
    body: Template = None

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


class NotifySettings(_NotifierFields):
    """The default notifier, ``[notify]``: every change goes to its URLs."""


class NotifierSettings(_NotifierFields):
    """A ``[[notifier]]``: its URLs get the changes its filters let through.

    Each filter is a list of glob patterns (``ghcr.io/org/*``); a change passes
    when every filter given has a pattern that matches it.
    """

    name: str
    images: list[str] | None = None
    registries: list[str] | None = None
    tags: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _name_is_short(cls, value: str) -> str:
        if not _NOTIFIER_NAME.fullmatch(value) or value == DEFAULT_NOTIFIER:
            msg = (
                f"expected 1 to 32 lowercase letters, digits, '-' or '_' other than "
                f"{DEFAULT_NOTIFIER!r}, got {value!r}"
            )
            raise ValueError(msg)
        return value


class Settings(_Model):
    """The whole configuration, loaded once by the CLI and passed down."""

    database_url: str = DEFAULT_DATABASE_URL
    interval: Interval = DEFAULT_CHECK_INTERVAL_SECONDS
    jitter: Annotated[float, BeforeValidator(parse_jitter)] | None = None
    listen: str = DEFAULT_LISTEN
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=10000)
    notify_on_first_seen: StrictBool = False
    notify_retry: Duration = DEFAULT_NOTIFY_RETRY_SECONDS
    #: How long a claimed notification is one process's to send; after a crash
    #: its messages go out once this has passed.
    notify_lease: Duration = DEFAULT_NOTIFY_LEASE_SECONDS
    #: How long undelivered notifications are retried before they are failed.
    notify_max_age: Duration = DEFAULT_NOTIFY_MAX_AGE_SECONDS
    #: How long the record of each check is kept; digest history is kept forever.
    check_retention: Duration | None = DEFAULT_CHECK_RETENTION_SECONDS
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    #: Docker's config.json, for credentials `docker login` stored. Unset: the
    #: file under $DOCKER_CONFIG, else ~/.docker/config.json.
    docker_config: Path | None = None
    registries: dict[str, RegistrySettings] = Field(default_factory=dict)
    watch: list[WatchSettings] = Field(default_factory=list)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    notifier: list[NotifierSettings] = Field(default_factory=list)

    @field_validator("notifier")
    @classmethod
    def _notifier_names_differ(
        cls, value: list[NotifierSettings]
    ) -> list[NotifierSettings]:
        names = [notifier.name for notifier in value]
        for name in names:
            if names.count(name) > 1:
                msg = f"notifier {name!r} is defined twice; give each its own name"
                raise ValueError(msg)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_has_a_scheme(cls, value: str) -> str:
        if not re.match(r"[a-z][a-z0-9+]*://", value):
            msg = (
                "expected an SQLAlchemy URL such as 'sqlite:///watcher.db' or "
                f"'postgresql+psycopg://user@host/watcher', got {value!r}"
            )
            raise ValueError(msg)
        return value

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
            url.get_secret_value()
            for notifier in self.notifier
            for url in notifier.urls
        ]
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


UrlChecker = Callable[[Sequence[SecretStr]], list[tuple[int, str]]]


def load(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    check_urls: UrlChecker | None = None,
    need_secrets: bool = True,
) -> Settings:
    """Read, validate and resolve the configuration file at ``path``.

    Args:
        check_urls: tells which notification URLs cannot be used, as
            ``(index, problem)`` pairs; the notifier knows, this module does not.
        need_secrets: False for commands that only read history, which then
            start without the registry passwords.

    Raises:
        ConfigError: with one line per problem, each naming line and key,
            sorted by line.
    """
    environ = os.environ if environ is None else environ
    path = Path(path)
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc

    locator = _KeyLocator(text)
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems += [_describe(error, locator) for error in exc.errors()]

    passwords: dict[str, SecretStr] = {}
    for key, raw in _raw_registries(data):
        problems += _missing_files(raw, key, locator)
        if not need_secrets:
            continue
        secret, problem = _read_password(raw, key[1], environ)
        if problem is not None:
            source = "password_env" if raw.get("password_env") else "password_file"
            problems.append(f"{locator.where((*key, source))}: {problem}")
        elif secret is not None:
            passwords[registry_name(key[1])] = SecretStr(secret)

    if check_urls is not None:
        for key, urls in _raw_urls(data):
            for index, problem in check_urls(urls):
                problems.append(f"{locator.where(key)}[{index}]: {problem}")
    if settings is not None:
        problems += _duplicate_watches(settings, locator)

    if problems or settings is None:
        raise ConfigError(str(path), sorted(problems, key=_line_number))
    return _with_secrets(settings, passwords, environ)


def defaults(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of an empty configuration file, for commands run without one."""
    environ = os.environ if environ is None else environ
    return Settings(docker_config=_default_docker_config(environ))


def _line_number(problem: str) -> int:
    match = re.match(r"line (\d+):", problem)
    return int(match[1]) if match else sys.maxsize


def _raw_registries(
    data: Mapping[str, Any],
) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    """The ``[registries]`` tables as written, even when the file did not validate."""
    registries = data.get("registries")
    if not isinstance(registries, dict):
        return []
    return [
        (("registries", key), raw)
        for key, raw in registries.items()
        if isinstance(raw, dict)
    ]


def _raw_urls(data: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], list[SecretStr]]]:
    """The notification URLs as written, by key, even when the file did not validate."""
    tables: list[tuple[tuple[Any, ...], Any]] = [(("notify",), data.get("notify"))]
    notifiers = data.get("notifier")
    if isinstance(notifiers, list):
        tables += [
            (("notifier", index), table) for index, table in enumerate(notifiers)
        ]

    found = []
    for key, table in tables:
        urls = table.get("urls") if isinstance(table, dict) else None
        if isinstance(urls, list):
            written = [url for url in urls if isinstance(url, str) and "://" in url]
            found.append(((*key, "urls"), [SecretStr(url) for url in written]))
    return found


def _with_secrets(
    settings: Settings, passwords: Mapping[str, SecretStr], environ: Mapping[str, str]
) -> Settings:
    registries = {
        name: registry.model_copy(update={"password": passwords[name]})
        if name in passwords
        else registry
        for name, registry in settings.registries.items()
    }
    docker_config = settings.docker_config or _default_docker_config(environ)
    return settings.model_copy(
        update={"registries": registries, "docker_config": docker_config}
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "create it (see config.example.toml) or pass --config"
        raise ConfigError(str(path), [f"file not found; {hint}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None


def _default_docker_config(environ: Mapping[str, str]) -> Path | None:
    if environ.get("DOCKER_CONFIG"):
        return Path(environ["DOCKER_CONFIG"]) / "config.json"
    if environ.get("HOME"):
        return Path(environ["HOME"]) / ".docker" / "config.json"
    return None


def _read_password(
    raw: Mapping[str, Any], name: str, environ: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The password, or a problem saying why it cannot be had (never the secret)."""
    account = f"{raw.get('username')}@{name}"
    variable, path = raw.get("password_env"), raw.get("password_file")
    if isinstance(variable, str) and variable:
        secret = environ.get(variable)
        if not secret:
            return None, (
                f"environment variable {variable} is not set; "
                f"export it with the password for {account}"
            )
        return secret, None

    if isinstance(path, str) and path:
        try:
            secret = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            return None, f"cannot read {path}: {why}"
        if not secret:
            return None, f"{path} is empty; put the password for {account} in it"
        return secret, None

    return None, None


def _missing_files(
    raw: Mapping[str, Any], key: tuple[str, str], locator: _KeyLocator
) -> list[str]:
    ca_file = raw.get("ca_file")
    if not isinstance(ca_file, str):
        return []
    where = locator.where((*key, "ca_file"))
    if not Path(ca_file).is_file():
        return [f"{where}: {ca_file} does not exist; give the path of a PEM CA bundle"]
    try:
        ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, ValueError, OSError):
        return [f"{where}: {ca_file} holds no PEM certificate; give a PEM CA bundle"]
    return []


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


_EXPECTED = {
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "list_type": "expected a list",
    "literal_error": "expected one of",
    "string_type": "expected a string",
}


def _describe(error: Mapping[str, Any], locator: _KeyLocator) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    context = error.get("ctx") or {}
    if kind == "extra_forbidden":
        message = f"unknown key; {_known_keys(loc)}"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "greater_than_equal":
        message = f"expected at least {context['ge']}, got {error['input']!r}"
    elif kind == "less_than_equal":
        message = f"expected at most {context['le']}, got {error['input']!r}"
    elif kind == "literal_error":
        message = f"expected one of {context['expected']}, got {error['input']!r}"
    elif kind in _EXPECTED:
        shown = "a secret" if loc[:1] == ("notify",) else repr(error["input"])
        message = f"{_EXPECTED[kind]}, got {shown}"
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
