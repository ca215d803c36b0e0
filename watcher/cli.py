"""The ``watcher`` command: parse arguments, call the service, map errors to exit codes.

Exit codes: 0 success; 1 an operational failure (a check failed, the database
is unreachable); 2 bad usage, configuration or reference. Errors are one line
on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from watcher import __version__, config, logs
from watcher.check import CheckResult, utc_now
from watcher.errors import ConfigError, InvalidReference, RegistryError, WatcherError
from watcher.notify import AppriseNotifier, check_urls, routes_from, send_test_messages
from watcher.outbox import DeliveryReport
from watcher.reference import Platform, Reference, watch_name
from watcher.registry import RegistryClient
from watcher.service import Service, stop_on_signals
from watcher.store import (
    ImageStatus,
    Period,
    SchemaStatus,
    open_store,
    schema_state,
    upgrade,
)
from watcher.store.engine import safe_url

EXIT_FAILURE = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="watcher",
    help="Watch container image tags and record every digest change.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="The TOML configuration file.",
        envvar="WATCHER_CONFIG",
        dir_okay=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of a table.")
]
DebugOption = Annotated[
    bool, typer.Option("--debug", help="Log at DEBUG and show tracebacks on errors.")
]
DEFAULT_CONFIG = Path("watcher.toml")


def _version(value: bool) -> None:
    if value:
        print(f"watcher {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Watch container image tags and record every digest change."""


@app.command()
def run(config_path: ConfigOption = DEFAULT_CONFIG, debug: DebugOption = False) -> None:
    """Check every watch on its schedule and serve /metrics until stopped.

    Example: watcher run --config watcher.toml
    """
    with _errors(debug):
        settings = _load(config_path, debug)
        asyncio.run(_run(settings))


@app.command()
def check(
    config_path: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Check every watch once, record and notify, then exit (1 if any check failed).

    Example: watcher check --config watcher.toml --json
    """
    with _errors(debug):
        settings = _load(config_path, debug)
        show_progress = not as_json and sys.stdout.isatty()
        results = asyncio.run(_check_once(settings, show_progress))

    if as_json:
        print(json.dumps([result.to_json() for result in results], indent=2))
    else:
        _print_table(
            ["IMAGE", "DIGEST", "RESULT", "ERROR"], [_result_row(r) for r in results]
        )
    if any(result.error for result in results):
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def history(
    image: Annotated[str, typer.Argument(help="The image, as written in the config.")],
    config_path: ConfigOption = DEFAULT_CONFIG,
    platform: Annotated[
        str | None,
        typer.Option(
            help="The platform of a watch that follows one, e.g. linux/arm64."
        ),
    ] = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show every digest a tag has pointed at, oldest first.

    Example: watcher history python:3.12-slim --config watcher.toml
    """
    with _errors(debug):
        settings = _load(config_path, debug, need_secrets=False)
        reference = Reference.parse(image)
        if reference.tag is not None:
            reference = reference.with_tag(reference.tag)  # the tag is what is watched
        chosen = _platform(platform)
        periods = _with_store(settings, lambda store: store.history(reference, chosen))

    name = watch_name(reference, chosen)
    if not periods:
        _fail(
            f"no history for {name}; is it watched and checked? "
            "(`watcher status` lists what is)",
            EXIT_FAILURE,
        )
    if as_json:
        print(json.dumps([_period_json(period) for period in periods], indent=2))
        return
    print(name)
    _print_table(
        ["DIGEST", "MEDIA TYPE", "FIRST SEEN", "LAST SEEN", "REPLACED"],
        [_period_row(period) for period in periods],
    )
    for period in periods:
        if period.platforms:
            print(f"\nplatforms of {period.digest}:")
            _print_table(
                ["PLATFORM", "DIGEST"],
                [
                    [str(entry.platform), str(entry.digest)]
                    for entry in period.platforms
                ],
            )


@app.command()
def status(
    config_path: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show each watched image: its current digest and its last check.

    Example: watcher status --config watcher.toml
    """
    with _errors(debug):
        settings = _load(config_path, debug, need_secrets=False)
        known = {s.reference: s for s in _with_store(settings, lambda s: s.statuses())}

    rows = [(w.name, known.get(w.name)) for w in settings.watch]
    if as_json:
        print(json.dumps([_status_json(name, found) for name, found in rows], indent=2))
        return
    _print_table(
        ["IMAGE", "DIGEST", "SINCE", "LAST CHECK", "RESULT"],
        [_status_row(name, found) for name, found in rows],
    )


@app.command()
def tags(
    image: Annotated[str, typer.Argument(help="The repository, e.g. ghcr.io/org/app.")],
    config_path: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="For registry settings and credentials; anonymous without it.",
            envvar="WATCHER_CONFIG",
            dir_okay=False,
        ),
    ] = None,
    page_size: Annotated[
        int | None, typer.Option(min=1, help="Tags per request (the n= parameter).")
    ] = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List a repository's tags, following the registry's pages.

    Example: watcher tags quay.io/prometheus/prometheus
    """
    with _errors(debug):
        settings = _load(config_path, debug) if config_path else _defaults(debug)
        reference = Reference.parse(image)
        found = asyncio.run(_list_tags(settings, reference, page_size))

    if as_json:
        print(json.dumps(found, indent=2))
    else:
        print("\n".join(found))


@app.command()
def ratelimit(
    registry: Annotated[
        str | None, typer.Argument(help="One registry, e.g. docker.io; all by default.")
    ] = None,
    config_path: ConfigOption = DEFAULT_CONFIG,
    image: Annotated[
        str | None, typer.Option(help="The image to HEAD; a watched one by default.")
    ] = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show each registry's pull limit and what is left, for your credentials.

    One HEAD per registry, which costs no pull. Example: watcher ratelimit docker.io
    """
    with _errors(debug):
        settings = _load(config_path, debug)
        probes = _probes(settings, registry, image)
        readings = asyncio.run(_read_rate_limits(settings, probes))

    rows = [_ratelimit_json(name, reading) for name, reading in readings]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(
            ["REGISTRY", "LIMIT", "REMAINING", "WINDOW", "SOURCE"],
            [[_cell(row[key]) for key in _RATELIMIT_KEYS] for row in rows],
        )
    if any(row["error"] for row in rows):
        raise typer.Exit(EXIT_FAILURE)


_RATELIMIT_KEYS = ("registry", "limit", "remaining", "window", "source")
#: Docker's documented repository for reading the Hub rate limit.
HUB_RATELIMIT_PROBE = "ratelimitpreview/test:latest"


def _probes(
    settings: config.Settings, registry: str | None, image: str | None
) -> list[Reference]:
    if image is not None:
        return [Reference.parse(image)]
    probes: dict[str, Reference] = {}
    for watch in settings.watch:
        probes.setdefault(watch.image.registry, watch.image)
    if registry is not None:
        wanted = config.registry_name(registry)
        if wanted not in probes and wanted == config.DOCKER_HUB:
            probes[wanted] = Reference.parse(HUB_RATELIMIT_PROBE)
        if wanted not in probes:
            msg = f"no watched image on {wanted}; name one to HEAD with --image"
            raise InvalidReference(registry, msg)
        return [probes[wanted]]
    return list(probes.values()) or [Reference.parse(HUB_RATELIMIT_PROBE)]


async def _read_rate_limits(
    settings: config.Settings, probes: list[Reference]
) -> list[tuple[str, Any]]:
    client = RegistryClient(settings.registry, docker_config=settings.docker_config)
    readings: list[tuple[str, Any]] = []
    async with client:
        for probe in probes:
            try:
                readings.append((probe.registry, await client.head_manifest(probe)))
            except RegistryError as exc:
                readings.append((probe.registry, exc))
    return readings


def _ratelimit_json(registry: str, reading: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(_RATELIMIT_KEYS) | {"registry": registry}
    if isinstance(reading, RegistryError):
        return row | {"error": str(reading)}
    limit = reading.rate_limit
    if limit is None:
        return row | {"error": None, "source": "no rate-limit headers: not metered"}
    return row | {
        "limit": limit.limit,
        "remaining": limit.remaining,
        "window": limit.window_seconds,
        "source": limit.source,
        "error": None,
    }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


db_app = typer.Typer(
    help="Migrate and inspect the database schema.", no_args_is_help=True
)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    config_path: ConfigOption = DEFAULT_CONFIG, debug: DebugOption = False
) -> None:
    """Migrate the database to the schema this watcher needs (back it up first).

    Example: watcher db upgrade --config watcher.toml
    """
    with _errors(debug):
        settings = _load(config_path, debug, need_secrets=False)
        before, after = upgrade(settings.database_url)

    where = safe_url(settings.database_url)
    if before == after:
        print(f"database {where} is already at schema {after}")
    else:
        print(f"database {where}: schema {before or 'none'} -> {after}")


@db_app.command("status")
def db_status(
    config_path: ConfigOption = DEFAULT_CONFIG, debug: DebugOption = False
) -> None:
    """Say whether the database schema is the one this watcher needs (exit 1 if not).

    Example: watcher db status --config watcher.toml
    """
    with _errors(debug):
        settings = _load(config_path, debug, need_secrets=False)
        state = schema_state(settings.database_url)

    where = safe_url(settings.database_url)
    print(
        f"database {where}: {state.status.value}, at {state.revision or 'none'}, needs {state.head}"
    )
    if state.status is SchemaStatus.BEHIND:
        print("run: watcher db upgrade", file=sys.stderr)
    if state.status not in (SchemaStatus.CURRENT, SchemaStatus.EMPTY):
        raise typer.Exit(EXIT_FAILURE)


notify_app = typer.Typer(
    help="Test notifiers and resend failed notifications.", no_args_is_help=True
)
app.add_typer(notify_app, name="notify")


@notify_app.command("test")
def notify_test(
    config_path: ConfigOption = DEFAULT_CONFIG,
    to: Annotated[
        str | None, typer.Option("--to", help="Only this notifier (its name).")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Send a test message through each notifier and report each outcome.

    Example: watcher notify test --config watcher.toml --to platform-team
    """
    with _errors(debug):
        settings = _load(config_path, debug, need_secrets=False)
        routes = [
            r for r in routes_from(settings.notify, settings.notifier) if r.targets
        ]
        if to is not None:
            routes = [route for route in routes if route.name == to]
            if not routes:
                names = ", ".join(
                    r.name for r in routes_from(settings.notify, settings.notifier)
                )
                _fail(
                    f"no notifier named {to!r} has URLs; the notifiers are: {names}",
                    EXIT_USAGE,
                )
        if not routes:
            _fail(
                "no notifier has URLs; add urls to [notify] or a [[notifier]]",
                EXIT_USAGE,
            )
        outcomes = asyncio.run(send_test_messages(routes, AppriseNotifier()))

    _print_table(
        ["NOTIFIER", "TARGET", "RESULT", "ERROR"],
        [
            [
                o.notifier,
                o.target,
                "sent" if o.error is None else "failed",
                o.error or "",
            ]
            for o in outcomes
        ],
    )
    if any(outcome.error for outcome in outcomes):
        raise typer.Exit(EXIT_FAILURE)


@notify_app.command("retry")
def notify_retry(
    config_path: ConfigOption = DEFAULT_CONFIG, debug: DebugOption = False
) -> None:
    """Make failed notifications pending again and try to deliver them now.

    Example: watcher notify retry --config watcher.toml
    """
    with _errors(debug):
        settings = _load(config_path, debug)
        report = asyncio.run(_retry_failed(settings))

    retried, delivery = report
    print(
        f"{retried} failed notification(s) made pending again; "
        f"{delivery.sent} sent, {delivery.retrying} to retry, {delivery.failed} failed"
    )
    if delivery.retrying or delivery.failed:
        raise typer.Exit(EXIT_FAILURE)


async def _retry_failed(settings: config.Settings) -> tuple[int, DeliveryReport]:
    async with Service(settings) as service:
        now = utc_now()
        retried = await service.store.call(service.store.sync.retry_failed, now)
        return retried, await service.courier.deliver_due()


def main() -> None:
    """Entry point of the ``watcher`` console script."""
    app()


async def _run(settings: config.Settings) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with Service(settings) as service:
        await service.run(stop)


async def _check_once(
    settings: config.Settings, show_progress: bool = False
) -> list[CheckResult]:
    async with Service(settings) as service:
        if not show_progress:
            return await service.check_once()
        with Progress(
            TextColumn("checking"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
        ) as progress:
            task = progress.add_task("checks", total=len(settings.watch))
            return await service.check_once(lambda _: progress.advance(task))


async def _list_tags(
    settings: config.Settings, reference: Reference, page_size: int | None
) -> list[str]:
    client = RegistryClient(settings.registry, docker_config=settings.docker_config)
    async with client:
        return await client.list_tags(reference, page_size=page_size)


def _defaults(debug: bool) -> config.Settings:
    settings = config.defaults()
    logs.configure(level="debug" if debug else settings.log_level)
    return settings


def _load(path: Path, debug: bool, *, need_secrets: bool = True) -> config.Settings:
    settings = config.load(path, check_urls=check_urls, need_secrets=need_secrets)
    logs.configure(
        level="debug" if debug else settings.log_level,
        fmt=settings.log_format,
        secrets=settings.secrets(),
    )
    return settings


def _with_store(settings: config.Settings, read: Callable[[Any], Any]) -> Any:
    store = open_store(settings.database_url)
    try:
        return read(store)
    finally:
        store.close()


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    try:
        yield
    except (ConfigError, InvalidReference) as exc:
        if debug:
            raise
        _fail(str(exc), EXIT_USAGE)
    except WatcherError as exc:
        if debug:
            raise
        _fail(str(exc), EXIT_FAILURE)


def _fail(message: str, code: int) -> NoReturn:
    print(f"watcher: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _result_row(result: CheckResult) -> list[str]:
    digest = str(result.digest) if result.digest else "-"
    return [result.name, digest, result.outcome.value, result.error or ""]


def _period_row(period: Period) -> list[str]:
    return [
        str(period.digest),
        period.media_type,
        _when(period.first_seen),
        _when(period.last_seen),
        _when(period.ended_at),
    ]


def _period_json(period: Period) -> dict[str, Any]:
    return {
        "digest": str(period.digest),
        "media_type": period.media_type,
        "first_seen": period.first_seen.isoformat(),
        "last_seen": period.last_seen.isoformat(),
        "replaced_at": period.ended_at.isoformat() if period.ended_at else None,
        "platforms": {
            str(entry.platform): str(entry.digest) for entry in period.platforms
        },
    }


def _platform(text: str | None) -> Platform | None:
    if text is None:
        return None
    try:
        return Platform.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--platform") from exc


def _status_row(image: str, found: ImageStatus | None) -> list[str]:
    if found is None:
        return [image, "-", "-", "-", "not checked yet"]
    result = found.last_outcome.value if found.last_outcome else "-"
    if found.last_error_reason:
        result = f"error ({found.last_error_reason})"
    digest = str(found.digest) if found.digest else "-"
    return [image, digest, _when(found.since), _when(found.last_check_at), result]


def _status_json(image: str, found: ImageStatus | None) -> dict[str, Any]:
    if found is None:
        keys = ("digest", "media_type", "since", "last_check", "result", "error")
        return {"image": image} | dict.fromkeys((*keys, "last_change"))
    return {
        "image": image,
        "digest": str(found.digest) if found.digest else None,
        "media_type": found.media_type,
        "since": found.since.isoformat() if found.since else None,
        "last_check": found.last_check_at.isoformat() if found.last_check_at else None,
        "result": found.last_outcome.value if found.last_outcome else None,
        "error": found.last_error,
        "last_change": found.last_change_at.isoformat()
        if found.last_change_at
        else None,
    }
