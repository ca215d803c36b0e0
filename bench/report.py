"""The benchmark's table, its targets (issue #6) and `bench/RESULTS.md`.

Pure formatting and arithmetic over what `bench.run` measured; the only I/O is
reading the machine's description and the analysis notes in `bench/analysis/`.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.pools import PoolRun
    from bench.run import BaselineResult, PassResult

ANALYSIS_DIR = Path(__file__).resolve().parent / "analysis"
ROOT = ANALYSIS_DIR.parent.parent
MB = 1_000_000
#: Targets from issue #6.
WARM_MAX_REQUESTS_PER_CHECK = 1.01
COLD_MAX_ABOVE_FLOOR = 0.02
MIN_IDEAL_RATIO = 0.70
MIN_SPEEDUP = 50.0
MAX_RSS_MB = 150.0
MAX_CPU_MS_PER_CHECK = 1.0
IDEAL_TARGET_N = 1000
SCALE_TARGET_N = 10000


@dataclass(frozen=True, slots=True)
class Context:
    command: str
    machine: dict[str, str]
    latency: float
    concurrency: int
    per_repository: int
    token_ttl: int
    load_start: str
    load_end: str
    total_seconds: float
    seed_seconds: float
    budget_seconds: float
    skipped: list[str]
    cache: bool


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a watcher pass, or the curl loop for one N."""

    n: int
    name: str
    wall: float
    extrapolated: bool
    window: float | None
    ideal: float | None
    requests: int
    heads: int
    gets: int
    tokens: int
    challenges: int
    cpu_ms: float | None
    world_cpu: float | None
    rss_mb: float | None
    speedup_per_tag: float | None
    speedup_per_repository: float | None
    correct: bool

    @property
    def ratio(self) -> float | None:
        return None if self.ideal is None else self.ideal / self.wall

    @property
    def requests_per_check(self) -> float:
        return self.requests / self.n


@dataclass(frozen=True, slots=True)
class Measurement:
    where: str
    value: str
    met: bool


@dataclass(frozen=True, slots=True)
class Target:
    id: str
    text: str
    measurements: list[Measurement]

    @property
    def met(self) -> bool | None:
        if not self.measurements:
            return None

        return all(m.met for m in self.measurements)


def machine_description() -> dict[str, str]:
    """nproc, CPU model, memory, Python, kernel, tools and the date of this run."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "watcher measured": _source(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": _cpuinfo_model(),
        "memory": _meminfo_total(),
        "python": platform.python_version(),
        "kernel": f"{platform.system()} {platform.release()}",
        "httpx": _version("httpx"),
        "docker-registry": _tool_version(["docker-registry", "--version"]),
        "curl": _tool_version(["curl", "--version"]),
    }


def rows(
    runs: Sequence[PassResult],
    baselines: dict[int, list[BaselineResult]],
    context: Context,
) -> list[Row]:
    """Each N's passes, then its curl loops (measured, or extrapolated past the subset)."""
    table: list[Row] = []
    for n in sorted({run.n for run in runs}):
        loops = _baselines_for(n, baselines)
        per_tag = {b.mode: b.wall_seconds / b.tags for b in loops}
        for run in (r for r in runs if r.n == n):
            counts = run.counts
            watcher_per_tag = run.wall_seconds / n
            table.append(
                Row(
                    n=n,
                    name=run.name,
                    wall=run.wall_seconds,
                    extrapolated=False,
                    window=run.window_seconds,
                    ideal=n * context.latency / context.concurrency,
                    requests=_requests(counts),
                    heads=counts["head_manifest"],
                    gets=counts["get_manifest"],
                    tokens=counts["token"],
                    challenges=counts["unauthorized"],
                    cpu_ms=run.cpu_seconds / n * 1000,
                    world_cpu=run.harness_cpu_seconds + run.registry_cpu_seconds,
                    rss_mb=run.peak_rss_kib * 1024 / MB,
                    speedup_per_tag=_ratio(per_tag.get("per-tag"), watcher_per_tag),
                    speedup_per_repository=_ratio(
                        per_tag.get("per-repository"), watcher_per_tag
                    ),
                    correct=_correct(run),
                )
            )

        for loop in loops:
            scale = n / loop.tags
            counts = loop.counts
            table.append(
                Row(
                    n=n,
                    name=f"curl, token per {loop.mode.removeprefix('per-')}",
                    wall=loop.wall_seconds * scale,
                    extrapolated=loop.tags != n,
                    window=None,
                    ideal=None,
                    requests=round(_requests(counts) * scale),
                    heads=round(counts["head_manifest"] * scale),
                    gets=round(counts["get_manifest"] * scale),
                    tokens=round(counts["token"] * scale),
                    challenges=round(counts["unauthorized"] * scale),
                    cpu_ms=None,
                    world_cpu=None,
                    rss_mb=None,
                    speedup_per_tag=None,
                    speedup_per_repository=None,
                    correct=loop.digests_ok,
                )
            )

    return table


_HEADER = (
    "N",
    "pass",
    "wall s",
    "window s",
    "ideal s",
    "ideal/actual",
    "req/check",
    "HEADs",
    "GETs",
    "tokens",
    "401s",
    "CPU ms/check",
    "double+registry CPU s",
    "peak RSS MB",
    "x curl (token/tag)",
    "x curl (token/repo)",
    "outcomes",
)


def table(lines: Sequence[Row]) -> str:
    """The rows as a plain-text table for the terminal."""
    cells = [list(_HEADER), *(_cells(row) for row in lines)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADER))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    )


def markdown_table(lines: Sequence[Row]) -> str:
    out = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    out += ["| " + " | ".join(_cells(row)) + " |" for row in lines]
    return "\n".join(out)


def _cells(row: Row) -> list[str]:
    approx = "~" if row.extrapolated else ""
    return [
        str(row.n),
        row.name,
        f"{approx}{row.wall:.2f}",
        _number(row.window, ".2f"),
        _number(row.ideal, ".2f"),
        _number(row.ratio, ".0%"),
        f"{row.requests_per_check:.3f}",
        f"{approx}{row.heads}",
        f"{approx}{row.gets}",
        f"{approx}{row.tokens}",
        f"{approx}{row.challenges}",
        _number(row.cpu_ms, ".3f"),
        _number(row.world_cpu, ".1f"),
        _number(row.rss_mb, ".0f"),
        _number(row.speedup_per_tag, ".1f"),
        _number(row.speedup_per_repository, ".1f"),
        "ok" if row.correct else "WRONG",
    ]


def evaluate(
    runs: Sequence[PassResult],
    baselines: dict[int, list[BaselineResult]],
    context: Context,
) -> list[Target]:
    """Each target of issue #6 with the measurements that decide it."""
    warm = [run for run in runs if run.name == "warm"]
    cold = [run for run in runs if run.name == "cold"]
    changed = [run for run in runs if run.name == "changed"]
    return [
        Target(
            "warm-requests",
            f"warm pass: at most {WARM_MAX_REQUESTS_PER_CHECK} registry requests per check",
            [
                _measure(
                    r,
                    f"{_requests(r.counts) / r.n:.3f}",
                    _requests(r.counts) / r.n <= WARM_MAX_REQUESTS_PER_CHECK,
                )
                for r in warm
            ],
        ),
        Target(
            "warm-gets",
            "warm pass: zero manifest GETs",
            [
                _measure(
                    r, str(r.counts["get_manifest"]), r.counts["get_manifest"] == 0
                )
                for r in warm
            ],
        ),
        Target(
            "warm-tokens",
            "warm pass: at most one token request per repository per token lifetime",
            [
                _measure(
                    r,
                    f"{r.counts['token']} for {r.repositories} repositories",
                    r.counts["token"] <= r.repositories,
                )
                for r in warm
            ],
        ),
        Target(
            "cold-requests",
            f"cold pass: at most {COLD_MAX_ABOVE_FLOOR:.0%} above the floor (one HEAD per tag + one token per repository)",
            [_cold_floor(r) for r in cold],
        ),
        Target(
            "cold-challenge",
            "cold pass: the 401 that reveals the challenge paid once per registry",
            [
                _measure(
                    r, f"{r.counts['unauthorized']} 401s", r.counts["unauthorized"] <= 1
                )
                for r in cold
            ],
        ),
        Target(
            "ideal-1000",
            f"{IDEAL_TARGET_N} tags, {context.latency * 1000:g} ms, C = {context.concurrency}: at least {MIN_IDEAL_RATIO:.0%} of the ideal, warm and cold (cold timed as the whole `watcher check` process)",
            [_ideal(r, context) for r in (*cold, *warm) if r.n == IDEAL_TARGET_N],
        ),
        Target(
            "speedup-1000",
            f"{IDEAL_TARGET_N} tags: per tag at least {MIN_SPEEDUP:g} times faster than the curl loop (token per tag, as the issue words it)",
            [
                m
                for r in (*cold, *warm)
                if r.n == IDEAL_TARGET_N
                for m in [_speedup(r, baselines)]
                if m is not None
            ],
        ),
        Target(
            "rss-10000",
            f"{SCALE_TARGET_N} tags: peak RSS at most {MAX_RSS_MB:g} MB",
            [
                _measure(
                    r,
                    f"{r.peak_rss_kib * 1024 / MB:.0f} MB",
                    r.peak_rss_kib * 1024 / MB <= MAX_RSS_MB,
                )
                for r in (*cold, *warm)
                if r.n == SCALE_TARGET_N
            ],
        ),
        Target(
            "cpu-10000",
            f"{SCALE_TARGET_N} tags: CPU at most {MAX_CPU_MS_PER_CHECK:g} ms per check (cold: the whole process)",
            [
                _measure(
                    r,
                    f"{r.cpu_seconds / r.n * 1000:.3f} ms",
                    r.cpu_seconds / r.n * 1000 <= MAX_CPU_MS_PER_CHECK,
                )
                for r in (*cold, *warm, *changed)
                if r.n == SCALE_TARGET_N
            ],
        ),
        Target(
            "changed-gets",
            "1% pass: manifest GETs only for the changed indexes",
            [_changed(r) for r in changed],
        ),
    ]


def targets_text(targets: Sequence[Target]) -> str:
    lines = []
    for target in targets:
        lines.append(f"{_verdict(target.met):>12}  {target.text}")
        lines += [
            f"{'':>12}    {m.where}: {m.value}{'' if m.met else '  <- missed'}"
            for m in target.measurements
        ]

    return "\n".join(lines)


def markdown(
    context: Context,
    lines: Sequence[Row],
    targets: Sequence[Target],
    baselines: dict[int, list[BaselineResult]],
    pools: Sequence[PoolRun],
    profiles: dict[str, Path],
) -> str:
    """The whole of `bench/RESULTS.md`."""
    machine = context.machine
    parts = [
        "# Benchmark results (issue #6)",
        "",
        "Generated by `make bench` (`" + context.command + "`); do not edit by hand:",
        "the analysis of a missed target lives in `bench/analysis/<target>.md` and is",
        "copied here only while that target is missed.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in machine.items()],
        f"| load average at start | {context.load_start} |",
        f"| load average at end | {context.load_end} |",
        f"| total runtime | {context.total_seconds:.0f} s (pushing the tags: {context.seed_seconds:.0f} s) |",
        "",
        "## Set-up",
        "",
        f"- A real `docker-registry` on 127.0.0.1; before it `tests.fakes.hub.HubDouble` with {context.latency * 1000:g} ms",
        "  latency per request (asyncio sleeps), Bearer tokens "
        f"(lifetime {context.token_ttl} s), rate-limit headers (a budget too large to run out).",
        (
            "- The double answers a repeated manifest request from its copy of the registry's first answer"
            " (a moved tag's copy is dropped); it still counts, authorises, rate-limits and sleeps per request."
            " Before the cold pass the harness fills that copy with one HEAD of each tag, uncounted"
            " (`TimedHub.prime`), so that docker-registry's CPU does not set the cold pass's pace either."
            if context.cache
            else "- The double proxies every manifest request to the registry (`--no-cache`)."
        ),
        f"- Each tag is a small OCI index (2 platforms + an attestation); {context.per_repository} tags per repository,",
        "  repositories `bench/r0000`, `bench/r0001`, ...; watched as `docker.io` with `endpoint` set to the double.",
        f'- watcher\'s `concurrency` and `[registries."docker.io"] concurrency` are both C = {context.concurrency}.',
        "- **cold**: a fresh `watcher check` process, empty SQLite database, no tokens. Wall and CPU are",
        "  the whole process's (os.wait4), interpreter start and imports included; peak RSS is its VmHWM",
        "  (`/proc/<pid>/status`, read while it runs: Linux carries a parent's high-water mark into a",
        "  child's ru_maxrss).",
        "- **warm**: `python -m bench.driver`: one `watcher.service.Service` on the cold pass's database;",
        "  a priming pass checks one tag per repository (every repository's token fetched, the pool",
        "  open), then `check_once()` over every tag is measured (getrusage of the process around the",
        "  pass; peak RSS is the process's VmHWM so far).",
        "- **changed**: a third pass in the same process after 1% of the tags (every 100th) were moved to",
        "  new indexes (one new index per moved tag).",
        "- **window s**: from the first request the double received to the last answer it sent, i.e. the",
        "  pass as the registry sees it, without process start-up.",
        "- **ideal s** = N * latency / C; **ideal/actual** uses the wall time.",
        "- **double+registry CPU s**: CPU the double (this harness's process) and the docker-registry",
        "  process spent during the pass, on the same cores as watcher.",
        "- **req/check**: every request the double received (tokens, 401s, HEADs, GETs, others) / N.",
        "- **curl** rows: `bench/baseline.sh`, a serial bash loop with one curl process per request and",
        "  the same Accept header as watcher. *token per tag*: a token request and a HEAD per tag (the",
        "  issue's wording); *token per repo*: a token request only when the repository changes.",
        f"  Measured on {_subset_text(baselines)} tags; rows marked `~` are extrapolated linearly from that",
        "  measurement, not measured. **x curl** = curl's time per tag / watcher's time per tag.",
        "",
        "## Results",
        "",
        markdown_table(lines),
        "",
        *_skipped(context),
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        *[
            f"| {t.text} | {'; '.join(f'{m.where}: {m.value}' for m in t.measurements) or 'not measured in this run'} | {_verdict(t.met)} |"
            for t in targets
        ],
        "",
        "## Missed targets",
        "",
        *_missed(targets),
        *_history(),
    ]
    if pools:
        parts += [
            "## Pool size (the lead's note in issue #6)",
            "",
            f"{pools[0].requests} HEADs started at once with one `httpx.AsyncClient`, straight to the registry",
            "(no double, no latency), from a process of its own; only the pool size",
            "(`max_connections` = `max_keepalive_connections`) and the transport differ. With httpx's",
            "own transport, the (empty) HEAD body is read before `aclose()` or not: httpcore reuses a",
            "connection only when its answer was read to the end, so *read* means keep-alive and",
            "*unread* a new connection per request. watcher's `Http11Transport` runs behind a semaphore",
            "of the pool's size, as `RegistryClient` sends through it.",
            "",
            "| pool | transport | seconds | failed |",
            "|---|---|---|---|",
            *[
                f"| {p.pool} | {p.how} | {p.seconds:.2f} | {p.failures} |"
                for p in pools
            ],
            "",
            "watcher keeps at most a registry's `concurrency` connections to it and sends every",
            "request through `Http11Transport` (`watcher/registry/client.py`, `RegistryClient._pool`).",
            "",
        ]
    if profiles:
        parts += [
            "## Profiles",
            "",
            *[
                f"- {name}: `{path.name}` (pyinstrument, text)"
                for name, path in profiles.items()
            ],
            "",
        ]
    return "\n".join(parts).rstrip() + "\n"


def one_line(run: PassResult) -> str:
    """A progress line for stderr while the benchmark runs."""
    counts = run.counts
    window = "-" if run.window_seconds is None else f"{run.window_seconds:.2f}"
    errors = f", errors {run.first_errors}" if run.first_errors else ""
    return (
        f"N={run.n} {run.name}: {run.wall_seconds:.2f} s (window {window} s), "
        f"{_requests(counts)} requests ({counts['head_manifest']} HEAD, "
        f"{counts['get_manifest']} GET, {counts['token']} token, "
        f"{counts['unauthorized']} 401), {run.connections} connections, "
        f"CPU {run.cpu_seconds:.2f} s, RSS {run.peak_rss_kib / 1024:.0f} MiB, "
        f"double+registry CPU {run.harness_cpu_seconds:.1f}+"
        f"{run.registry_cpu_seconds:.1f} s, outcomes {run.outcomes}{errors}"
    )


def _skipped(context: Context) -> list[str]:
    if not context.skipped:
        return []

    return [
        f"Skipped to keep the run within its {context.budget_seconds / 60:g}-minute budget "
        "(`--budget-minutes 0` runs everything):",
        "",
        *[f"- {step}" for step in context.skipped],
        "",
    ]


def _history() -> list[str]:
    """What was changed in watcher to meet the targets, measured before and after."""
    note = ANALYSIS_DIR / "history.md"
    if not note.is_file():
        return []
    return [
        "## Changes made for these targets, before and after",
        "",
        note.read_text(encoding="utf-8").rstrip(),
        "",
    ]


def _missed(targets: Sequence[Target]) -> list[str]:
    missed = [t for t in targets if t.met is False]
    if not missed:
        return ["None in this run.", ""]

    out: list[str] = []
    for target in missed:
        out += [f"### {target.text}", ""]
        out += [f"- {m.where}: {m.value}" for m in target.measurements if not m.met]
        out.append("")
        note = ANALYSIS_DIR / f"{target.id}.md"
        if note.is_file():
            out += [note.read_text(encoding="utf-8").rstrip(), ""]
        else:
            out += [f"No analysis written yet (`bench/analysis/{target.id}.md`).", ""]

    return out


def _measure(run: PassResult, value: str, met: bool) -> Measurement:
    """A measurement of one pass; a pass with wrong outcomes meets no target."""
    if not _correct(run):
        value += f" (pass went wrong: outcomes {run.outcomes}, errors {run.first_errors[:1]})"
        met = False

    return Measurement(f"N={run.n} {run.name}", value, met)


def _cold_floor(run: PassResult) -> Measurement:
    floor = run.n + run.repositories
    total = _requests(run.counts)
    above = total / floor - 1
    return _measure(
        run,
        f"{total} requests, floor {floor}, {above:+.2%}",
        above <= COLD_MAX_ABOVE_FLOOR,
    )


def _ideal(run: PassResult, context: Context) -> Measurement:
    ideal = run.n * context.latency / context.concurrency
    ratio = ideal / run.wall_seconds
    window = (
        ""
        if run.window_seconds is None
        else f" (registry-side window {run.window_seconds:.2f} s: {ideal / run.window_seconds:.0%})"
    )
    return _measure(
        run,
        f"{run.wall_seconds:.2f} s for ideal {ideal:.2f} s: {ratio:.0%}{window}",
        ratio >= MIN_IDEAL_RATIO,
    )


def _speedup(
    run: PassResult, baselines: dict[int, list[BaselineResult]]
) -> Measurement | None:
    loops = {b.mode: b for b in _baselines_for(run.n, baselines)}
    loop = loops.get("per-tag")
    if loop is None:
        return None

    speedup = (loop.wall_seconds / loop.tags) / (run.wall_seconds / run.n)
    other = loops.get("per-repository")
    aside = (
        ""
        if other is None
        else f"; against token per repository {(other.wall_seconds / other.tags) / (run.wall_seconds / run.n):.1f}x"
    )
    return _measure(run, f"{speedup:.1f}x{aside}", speedup >= MIN_SPEEDUP)


def _changed(run: PassResult) -> Measurement:
    gets = run.counts["get_manifest"]
    met = run.stray_gets == 0 and gets <= run.allowed_gets
    moved = run.expected_outcomes.get("changed", 0)
    return _measure(
        run,
        f"{gets} GETs for {moved} moved tags ({run.allowed_gets} distinct old+new indexes; {run.stray_gets} GETs of others)",
        met,
    )


def _baselines_for(
    n: int, baselines: dict[int, list[BaselineResult]]
) -> list[BaselineResult]:
    fitting = [size for size in baselines if size <= n]
    return baselines[max(fitting)] if fitting else []


def _subset_text(baselines: dict[int, list[BaselineResult]]) -> str:
    return " and ".join(str(size) for size in sorted(baselines)) or "no"


def _requests(counts: dict[str, int]) -> int:
    return sum(
        counts[kind]
        for kind in ("token", "unauthorized", "head_manifest", "get_manifest", "other")
    )


def _correct(run: PassResult) -> bool:
    return run.outcomes == run.expected_outcomes and not run.first_errors


def _ratio(numerator: float | None, denominator: float) -> float | None:
    return None if numerator is None else numerator / denominator


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[met]


def _cpuinfo_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown"

    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match[1].strip() if match else "unknown"


def _meminfo_total() -> str:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return "unknown"

    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.M)
    return f"{int(match[1]) / 1024 / 1024:.1f} GiB" if match else "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source() -> str:
    """Which watcher was measured: $BENCH_SOURCE, else the checkout's commit."""
    note = os.environ.get("BENCH_SOURCE")
    if note:
        return note

    commit = _tool_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if commit == "unknown" or " " in commit:
        return "not a git checkout"

    dirty = _tool_version(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "watcher"]
    )
    changes = "" if dirty == "unknown" else " with uncommitted changes in watcher/"
    return f"commit {commit}{changes}"


def _tool_version(command: list[str]) -> str:
    try:
        completed = subprocess.run(  # noqa: S603 - fixed commands, no shell
            command, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"

    first = (completed.stdout or completed.stderr).strip().splitlines()
    return first[0] if first else "unknown"
