"""Issue #6's benchmark: what a check costs, against the ideal and a curl loop.

`python -m bench` (or `make bench`) starts a real docker-registry and a Hub-like
double before it (tokens, rate-limit headers, a fixed latency per request, counts
by kind), then for each N runs:

- cold: a fresh `watcher check` process on an empty database, no tokens;
- warm: `bench.driver`, which runs `Service.check_once()` twice in one process as
  `watcher run` repeats it, and measures the second pass;
- changed: a third pass in that process after 1% of the tags moved to new indexes;
- the baseline: a serial shell loop of curl calls on (a subset of) the same tags.

It prints one table and writes `bench/RESULTS.md`. Nothing here is an assert: the
targets are reported as met or missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench import report
from bench.memory import peak_rss_kib
from bench.pools import PoolRun
from bench.world import (
    Layout,
    World,
    describe_counts,
    running_world,
)
from tests.fakes.hub import HUB_SERVICE
from watcher.registry.media_types import MANIFEST_ACCEPT

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BASELINE_SCRIPT = BENCH_DIR / "baseline.sh"
DEFAULT_TAGS = (100, 1000, 10000)
DEFAULT_LATENCY_SECONDS = 0.05
DEFAULT_CONCURRENCY = 32
DEFAULT_TAGS_PER_REPOSITORY = 100
DEFAULT_BASELINE_TAGS = 100
DEFAULT_TOKEN_TTL_SECONDS = 300
DEFAULT_POOLS = (8, 32, 1000)
DEFAULT_POOL_REQUESTS = 1000
#: Fraction of the watched tags moved before the changed pass.
CHANGED_FRACTION = 0.01
#: `make bench` must finish within 10 minutes on 2 cores, venv creation included.
DEFAULT_BUDGET_MINUTES = 8.5
#: Rough costs for projecting steps not measured yet in this run.
BASELINE_SECONDS_PER_TAG = 0.25
POOL_SECONDS_PER_REQUEST = 0.015
MOVE_SECONDS_PER_TAG = 0.2
#: No single process of the benchmark may run longer than this.
PROCESS_TIMEOUT_SECONDS = 600.0


@dataclass
class PassResult:
    """One measured pass: what the process said and what the double counted."""

    n: int
    name: str
    wall_seconds: float
    window_seconds: float | None
    cpu_seconds: float
    peak_rss_kib: int
    counts: dict[str, int]
    repositories: int
    outcomes: dict[str, int]
    expected_outcomes: dict[str, int]
    first_errors: list[str] = field(default_factory=list)
    #: TCP connections the double saw during the pass.
    connections: int = 0
    #: CPU seconds the rest of the world spent meanwhile, on the same cores: this
    #: harness (mostly the double's thread) and the docker-registry process.
    harness_cpu_seconds: float = 0.0
    registry_cpu_seconds: float = 0.0
    #: Changed pass only: GETs of manifests that no moved tag pointed at.
    stray_gets: int = 0
    allowed_gets: int = 0


@dataclass
class BaselineResult:
    mode: str
    tags: int
    wall_seconds: float
    counts: dict[str, int]
    digests_ok: bool


@dataclass
class Options:
    tags: list[int]
    latency: float
    concurrency: int
    per_repository: int
    baseline_tags: int
    token_ttl: int
    pools: list[int]
    pool_requests: int
    results: Path
    profile: bool
    budget_seconds: float
    cache: bool
    command: str


@dataclass
class Budget:
    """Keeps a run within its time: a step projected to end past it is skipped.

    Projections scale the slowest seconds per check seen so far for that kind of
    pass (cold, warm, changed) to the next N; a step with no such figure yet runs.
    """

    seconds: float
    started: float = field(default_factory=time.monotonic)
    per_check: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def learn(self, result: PassResult) -> None:
        rate = result.wall_seconds / result.n
        self.per_check[result.name] = max(self.per_check.get(result.name, 0.0), rate)

    def projected(self, kind: str, n: int) -> float:
        rate = self.per_check.get(kind) or self.per_check.get("warm") or 0.0
        return rate * n

    def allows(self, step: str, projected: float) -> bool:
        if self.seconds <= 0 or projected <= self.left():
            return True

        left = max(self.left(), 0.0)
        why = (
            f"{step}: skipped, projected {projected:.0f} s with {left:.0f} s left "
            f"of the {self.seconds:.0f} s budget"
        )
        self.skipped.append(why)
        _say(why)
        return False


def main(argv: list[str] | None = None) -> int:
    options = _parse(argv)
    started = time.monotonic()
    load_start = _loadavg()
    machine = report.machine_description()
    layout = Layout(max(options.tags), options.per_repository)
    runs: list[PassResult] = []
    baselines: dict[int, list[BaselineResult]] = {}
    tried: set[int] = set()
    pools: list[PoolRun] = []
    profiles: dict[str, Path] = {}
    budget = Budget(options.budget_seconds, started)
    _say(f"load average at start: {load_start}")

    _say(
        f"pushing {layout.tags} tags in {layout.repositories(layout.tags)} repositories"
    )
    with running_world(
        layout,
        latency=options.latency,
        token_ttl=options.token_ttl,
        cache_manifests=options.cache,
    ) as world:
        _say(f"pushed in {world.seed_seconds:.1f} s; double at {world.hub.url}")
        for index, n in enumerate(sorted(options.tags)):
            runs += _measure_n(world, options, n, index, budget)
            subset = min(n, options.baseline_tags)
            if subset in tried:
                continue

            tried.add(subset)
            estimate = 2 * subset * BASELINE_SECONDS_PER_TAG
            if budget.allows(f"curl loops on {subset} tags", estimate):
                baselines[subset] = _baselines(world, subset)

        pool_estimate = (
            2 * len(options.pools) * options.pool_requests * POOL_SECONDS_PER_REQUEST
        )
        if options.pools and budget.allows("pool sizes", pool_estimate):
            pools = _pools(world, options)

        if options.profile:
            profiles = _profiles(world, options)

    load_end = _loadavg()
    total = time.monotonic() - started
    context = report.Context(
        command=options.command,
        machine=machine,
        latency=options.latency,
        concurrency=options.concurrency,
        per_repository=options.per_repository,
        token_ttl=options.token_ttl,
        load_start=load_start,
        load_end=load_end,
        total_seconds=total,
        seed_seconds=world.seed_seconds,
        budget_seconds=options.budget_seconds,
        skipped=budget.skipped,
        cache=options.cache,
    )
    rows = report.rows(runs, baselines, context)
    targets = report.evaluate(runs, baselines, context)
    table = report.table(rows)
    sys.stdout.write(table + "\n\n" + report.targets_text(targets) + "\n")
    options.results.write_text(
        report.markdown(context, rows, targets, baselines, pools, profiles),
        encoding="utf-8",
    )
    _say(f"wrote {options.results} in {total:.0f} s")
    return 0


def _parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--tags",
        default=",".join(map(str, DEFAULT_TAGS)),
        help="comma-separated numbers of tags to watch (default %(default)s)",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=DEFAULT_LATENCY_SECONDS,
        help="seconds the double waits before each answer (default %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="watcher's concurrency, overall and for the registry (default %(default)s)",
    )
    parser.add_argument(
        "--tags-per-repository",
        type=int,
        default=DEFAULT_TAGS_PER_REPOSITORY,
        help="tags in each repository (default %(default)s)",
    )
    parser.add_argument(
        "--baseline-tags",
        type=int,
        default=DEFAULT_BASELINE_TAGS,
        help="tags the curl loop checks; beyond, its time is extrapolated (default %(default)s)",
    )
    parser.add_argument(
        "--token-ttl",
        type=int,
        default=DEFAULT_TOKEN_TTL_SECONDS,
        help="lifetime of the double's tokens in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--pools",
        default=",".join(map(str, DEFAULT_POOLS)),
        help="pool sizes for the lead's pool measurement; empty to skip (default %(default)s)",
    )
    parser.add_argument(
        "--pool-requests",
        type=int,
        default=DEFAULT_POOL_REQUESTS,
        help="HEADs sent at once in the pool measurement (default %(default)s)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=BENCH_DIR / "RESULTS.md",
        help="where to write the results (default bench/RESULTS.md)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the largest N with pyinstrument (cold and warm), after the timed runs",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=DEFAULT_BUDGET_MINUTES,
        help="skip a step projected to end past this (0: no limit; default %(default)s)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="the double proxies every manifest request to the registry",
    )
    args = parser.parse_args(argv)
    tags = _numbers(parser, "--tags", args.tags, "100,1000")
    if not tags or min(tags) < 1:
        parser.error("--tags: give positive numbers, e.g. 100,1000")

    if args.concurrency < 1 or args.tags_per_repository < 1:
        parser.error("--concurrency and --tags-per-repository must be positive")
    if args.latency < 0:
        parser.error("--latency must be 0 or more seconds")

    pools = _numbers(parser, "--pools", args.pools, "8,32,1000")
    command = "python -m bench" + _argv_text(argv)
    return Options(
        tags=tags,
        latency=args.latency,
        concurrency=args.concurrency,
        per_repository=args.tags_per_repository,
        baseline_tags=args.baseline_tags,
        token_ttl=args.token_ttl,
        pools=pools,
        pool_requests=args.pool_requests,
        results=args.results,
        profile=args.profile,
        budget_seconds=args.budget_minutes * 60,
        cache=not args.no_cache,
        command=command,
    )


def _numbers(
    parser: argparse.ArgumentParser, flag: str, text: str, example: str
) -> list[int]:
    """Comma-separated whole numbers, sorted and distinct; a parser error otherwise."""
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        parser.error(f"{flag}: give whole numbers separated by commas, e.g. {example}")


def _argv_text(argv: list[str] | None) -> str:
    words = sys.argv[1:] if argv is None else argv
    return "".join(f" {word}" for word in words)


def _measure_n(
    world: World, options: Options, n: int, index: int, budget: Budget
) -> list[PassResult]:
    watched = world.layout.watched(n)
    repositories = world.layout.repositories(n)
    results: list[PassResult] = []
    if not budget.allows(f"N={n} cold", budget.projected("cold", n)):
        return results

    workdir = Path(tempfile.mkdtemp(prefix=f"watcher-bench-{n}-"))
    try:
        config = _write_config(workdir, world, options, watched)
        cold = _cold(world, config, workdir, n, repositories)
        results = [cold, *_warm(world, config, workdir, n, repositories, index, budget)]
        for result in results:
            budget.learn(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    return results


def _write_config(
    workdir: Path, world: World, options: Options, watched: list[tuple[str, str]]
) -> Path:
    lines = [
        f'database_url = "sqlite:///{workdir / "watcher.db"}"',
        f"concurrency = {options.concurrency}",
        'listen = "127.0.0.1:0"',
        "",
        '[registries."docker.io"]',
        f'endpoint = "{world.hub.url}"',
        f"concurrency = {options.concurrency}",
        "",
    ]
    for repository, tag in watched:
        lines += ["[[watch]]", f'image = "{repository}:{tag}"']

    path = workdir / "watcher.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _watcher_command() -> list[str]:
    script = Path(sys.executable).with_name("watcher")
    if script.is_file():
        return [str(script)]

    return [sys.executable, "-m", "watcher"]


def _cold(
    world: World, config: Path, workdir: Path, n: int, repositories: int
) -> PassResult:
    paths = [f"/v2/{repo}/manifests/{tag}" for repo, tag in world.layout.watched(n)]
    world.hub.prime(paths, MANIFEST_ACCEPT)
    world.hub.reset_counts()
    world.hub.reset_window()
    stdout_path = workdir / "check.out"
    stderr_path = workdir / "check.err"
    meter = _WorldCpu(world)
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603 - our own command, no shell
            [*_watcher_command(), "check", "--config", str(config), "--json"],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=_child_env(),
        )
        status, usage, peak_kib = _wait(process)
        wall = time.perf_counter() - started
        harness_cpu, registry_cpu = meter.spent()

    outcomes = _json_outcomes(stdout_path.read_text(encoding="utf-8"))
    errors = [] if status == 0 else [f"exit {status}", *_stderr_tail(stderr_path)]
    result = PassResult(
        n=n,
        name="cold",
        wall_seconds=wall,
        window_seconds=world.hub.window_seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_kib=peak_kib,
        counts=describe_counts(world.hub.counts),
        repositories=repositories,
        outcomes=outcomes,
        expected_outcomes={"first_seen": n},
        first_errors=errors,
        connections=world.hub.connections,
        harness_cpu_seconds=harness_cpu,
        registry_cpu_seconds=registry_cpu,
    )
    _say(report.one_line(result))
    return result


def _warm(
    world: World,
    config: Path,
    workdir: Path,
    n: int,
    repositories: int,
    index: int,
    budget: Budget,
) -> list[PassResult]:
    if not budget.allows(f"N={n} warm and changed", budget.projected("warm", n)):
        return []

    stderr_path = workdir / "driver.err"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [
                sys.executable,
                "-m",
                "bench.driver",
                str(config),
                "prime",
                "warm",
                "changed",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            env=_child_env(),
            text=True,
        )
        try:
            results = _drive(world, process, n, repositories, index, budget)
        finally:
            if process.stdin is not None:
                process.stdin.close()
            _wait(process)

    return results


def _drive(
    world: World,
    process: subprocess.Popen[str],
    n: int,
    repositories: int,
    index: int,
    budget: Budget,
) -> list[PassResult]:
    _, stdout = _pipes(process)
    _read_record(stdout, "pass")  # prime: tokens fetched, history read
    _read_record(stdout, "ready")
    warm_result = _next_pass(world, process, n, repositories, {"unchanged": n})
    budget.learn(warm_result)

    _read_record(stdout, "ready")
    moved = _moved_targets(world.layout.watched(n), index)
    projected = budget.projected("changed", n) + len(moved) * MOVE_SECONDS_PER_TAG
    if not budget.allows(f"N={n} changed", projected):
        return [warm_result]

    new_digests = world.move(moved, label=f"moved-{n}")
    expected = {"changed": len(moved), "unchanged": n - len(moved)}
    changed_result = _next_pass(world, process, n, repositories, expected)
    allowed = set(new_digests.values()) | {
        world.seeded[repository] for repository, _ in moved
    }
    gets = [
        seen.path.rsplit("/", 1)[1]
        for seen in world.hub.requests
        if seen.method == "GET" and "/manifests/" in seen.path
    ]
    changed_result.allowed_gets = len(allowed)
    changed_result.stray_gets = sum(1 for digest in gets if digest not in allowed)
    return [warm_result, changed_result]


def _next_pass(
    world: World,
    process: subprocess.Popen[str],
    n: int,
    repositories: int,
    expected: dict[str, int],
) -> PassResult:
    """Reset the double's counters, let the driver run its next pass, collect it."""
    stdin, stdout = _pipes(process)
    world.hub.reset_counts()
    world.hub.reset_window()
    meter = _WorldCpu(world)
    stdin.write("\n")
    stdin.flush()
    record = _read_record(stdout, "pass")
    result = _pass_result(world, record, n, repositories, expected)
    result.harness_cpu_seconds, result.registry_cpu_seconds = meter.spent()
    _say(report.one_line(result))
    return result


class _WorldCpu:
    """CPU seconds this harness and the registry process spend from now on."""

    def __init__(self, world: World) -> None:
        self._pid = world.registry.process.pid
        self._harness = _own_cpu()
        self._registry = _process_cpu(self._pid)

    def spent(self) -> tuple[float, float]:
        return (
            _own_cpu() - self._harness,
            _process_cpu(self._pid) - self._registry,
        )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    """utime + stime of a child process from /proc (0.0 where /proc is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0

    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _moved_targets(watched: list[tuple[str, str]], index: int) -> list[tuple[str, str]]:
    """Every 100th watched tag (1%), at an offset no earlier N used."""
    step = round(1 / CHANGED_FRACTION)
    offset = index % step
    chosen = watched[offset::step]
    return chosen or watched[:1]


def _pass_result(
    world: World,
    record: dict[str, Any],
    n: int,
    repositories: int,
    expected: dict[str, int],
) -> PassResult:
    return PassResult(
        n=n,
        name=str(record["pass"]),
        wall_seconds=float(record["wall_seconds"]),
        window_seconds=world.hub.window_seconds,
        cpu_seconds=float(record["cpu_seconds"]),
        peak_rss_kib=int(record["peak_rss_kib"]),
        counts=describe_counts(world.hub.counts),
        repositories=repositories,
        outcomes={str(k): int(v) for k, v in record["outcomes"].items()},
        expected_outcomes=expected,
        first_errors=list(record["first_errors"]),
        connections=world.hub.connections,
    )


def _pipes(process: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    if process.stdin is None or process.stdout is None:
        msg = "bench.driver must be started with stdin and stdout as pipes"
        raise RuntimeError(msg)

    return process.stdin, process.stdout


def _read_record(stream: IO[str], key: str) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        msg = f"bench.driver ended before sending {key!r}; see its stderr"
        raise RuntimeError(msg)

    record: dict[str, Any] = json.loads(line)
    if key not in record:
        msg = f"bench.driver sent {line.strip()!r}, expected a {key!r} record"
        raise RuntimeError(msg)

    return record


def _baselines(world: World, subset: int) -> list[BaselineResult]:
    targets = world.layout.watched(subset)
    return [_baseline(world, targets, mode) for mode in ("per-tag", "per-repository")]


def _baseline(
    world: World, targets: list[tuple[str, str]], mode: str
) -> BaselineResult:
    lines = "".join(f"{repository} {tag}\n" for repository, tag in targets)
    world.hub.reset_counts()
    started = time.perf_counter()
    completed = subprocess.run(  # noqa: S603 - our own script, arguments as a list
        [
            _bash(),
            str(BASELINE_SCRIPT),
            world.hub.url,
            HUB_SERVICE,
            MANIFEST_ACCEPT,
            mode,
        ],
        input=lines,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    wall = time.perf_counter() - started
    answered = [line.split(" ", 1) for line in completed.stdout.splitlines()]
    digests_ok = completed.returncode == 0 and len(answered) == len(targets)
    digests_ok = digests_ok and all(
        digest.startswith("sha256:") for _, digest in answered
    )
    result = BaselineResult(
        mode, len(targets), wall, describe_counts(world.hub.counts), digests_ok
    )
    _say(
        f"curl loop ({mode}), {len(targets)} tags: {wall:.2f} s"
        + ("" if digests_ok else f"; FAILED: {completed.stderr.strip()[:300]}")
    )
    return result


def _bash() -> str:
    found = shutil.which("bash")
    if found is None:
        msg = "the curl baseline needs bash; install it (apt-get install bash)"
        raise RuntimeError(msg)

    return found


def _pools(world: World, options: Options) -> list[PoolRun]:
    watched = world.layout.watched(min(options.pool_requests, world.layout.tags))
    completed = subprocess.run(  # noqa: S603 - our own module, no shell
        [
            sys.executable,
            "-m",
            "bench.pools",
            world.registry.url,
            MANIFEST_ACCEPT,
            ",".join(map(str, options.pools)),
            json.dumps(watched),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_child_env(),
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        msg = f"bench.pools exited {completed.returncode}: {completed.stderr[-1000:]}"
        raise RuntimeError(msg)

    runs = [PoolRun(**run) for run in json.loads(completed.stdout)]
    for run in runs:
        _say(
            f"pool {run.pool} ({run.how}): {run.requests} HEADs at once in "
            f"{run.seconds:.2f} s ({run.failures} failed)"
        )

    return runs


def _profiles(world: World, options: Options) -> dict[str, Path]:
    """Profile the largest N with pyinstrument: the cold process and a warm pass."""
    n = max(options.tags)
    watched = world.layout.watched(n)
    workdir = Path(tempfile.mkdtemp(prefix=f"watcher-bench-profile-{n}-"))
    cold_out = BENCH_DIR / f"profile-cold-{n}.txt"
    warm_out = BENCH_DIR / f"profile-warm-{n}.txt"
    try:
        config = _write_config(workdir, world, options, watched)
        world.hub.reset_counts()
        _run_profiled(
            [
                sys.executable,
                "-m",
                "bench.profiling",
                str(cold_out),
                "--",
                "check",
                "--config",
                str(config),
            ],
            ROOT,
            {},
        )
        _run_profiled(
            [sys.executable, "-m", "bench.driver", str(config), "prime", "warm"],
            ROOT,
            {"BENCH_PROFILE_PASS": "warm", "BENCH_PROFILE_OUT": str(warm_out)},
            stdin="\n",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    _say(f"profiles: {cold_out.name}, {warm_out.name}")
    return {"cold": cold_out, "warm": warm_out}


def _run_profiled(
    command: list[str], cwd: Path, extra_env: dict[str, str], stdin: str = ""
) -> None:
    completed = subprocess.run(  # noqa: S603 - our own commands, no shell
        command,
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**_child_env(), **extra_env},
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    if completed.returncode not in (0, 1):
        msg = f"{' '.join(command[:4])} ... exited {completed.returncode}: {completed.stderr[-1000:]}"
        raise RuntimeError(msg)


def _child_env() -> dict[str, str]:
    # The repository root first on the path: bench.driver and watcher run from the
    # checkout even when the venv holds no editable install.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    return env


def _wait(process: subprocess.Popen[Any]) -> tuple[int, Any, int]:
    """Reap the child; return its exit status, resource usage (os.wait4) and peak RSS.

    The peak is the child's own VmHWM, read while it runs: Linux carries the
    parent's high-water mark over into a child's ru_maxrss across fork and exec,
    so with a large harness ru_maxrss would report the harness.
    """
    deadline = time.monotonic() + PROCESS_TIMEOUT_SECONDS
    peak = 0
    while time.monotonic() < deadline:
        peak = max(peak, peak_rss_kib(process.pid) or 0)
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid != 0:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage, peak

        time.sleep(0.005)

    process.kill()
    _, status, usage = os.wait4(process.pid, 0)
    msg = f"{process.args!r} ran past {PROCESS_TIMEOUT_SECONDS} s and was killed"
    raise RuntimeError(msg)


def _json_outcomes(text: str) -> dict[str, int]:
    """Count the outcomes `watcher check --json` printed ({} if it printed no JSON)."""
    try:
        results = json.loads(text)
    except json.JSONDecodeError:
        return {}

    return dict(Counter(str(result.get("outcome")) for result in results))


def _stderr_tail(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"


def _say(text: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")  # noqa: DTZ005 - local time for a human
    sys.stderr.write(f"[bench {stamp}] {text}\n")
    sys.stderr.flush()
