"""The warm driver: check passes inside one process, as `watcher run` repeats them.

Run as `python -m bench.driver CONFIG PASS [PASS ...]`. It loads the configuration
and logging as the `watcher` command does, opens one `watcher.service.Service`, and
runs one pass per name: `prime` checks one watch per repository (which fetches
every repository's token and opens the pool; the database is the one a cold
`watcher check` left), any other name is `Service.check_once()` over every watch.
Before every pass after the first it prints `{"ready": ...}` and waits for a line
on stdin, so the harness can reset its counters or move tags in between (stdin
closed instead: it stops there); after
every pass it prints one JSON line with the wall time, the CPU time and the peak
RSS of this process.

This process is the one measured: it imports only watcher and the standard
library, so nothing of the harness adds to its CPU or memory. With
`BENCH_PROFILE_PASS=<pass>` and `BENCH_PROFILE_OUT=<file>` in the environment it
profiles that pass with pyinstrument (the event loop's thread only) and writes the
text report there; its timings are then not comparable.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.memory import peak_rss_kib
from watcher import config, logs
from watcher.notify import check_urls
from watcher.reference import Platform, Reference
from watcher.service import Service


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: python -m bench.driver CONFIG PASS [PASS ...]\n")
        return 2

    settings = config.load(Path(argv[0]), check_urls=check_urls)
    logs.configure(
        level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets()
    )
    asyncio.run(_passes(settings, argv[1:]))
    return 0


async def _passes(settings: config.Settings, names: list[str]) -> None:
    async with Service(settings) as service:
        for number, name in enumerate(names):
            if number > 0:
                _emit({"ready": name})
                if not await asyncio.to_thread(sys.stdin.readline):
                    return  # stdin closed: the harness wants no more passes

            if name == os.environ.get("BENCH_PROFILE_PASS"):
                _emit(
                    await _profiled(
                        service, name, Path(os.environ["BENCH_PROFILE_OUT"])
                    )
                )
            else:
                _emit(await _measured(service, name))


async def _profiled(service: Service, name: str, out: Path) -> dict[str, Any]:
    from bench import profiling  # only when asked: pyinstrument is a bench extra

    profiler = profiling.new_profiler()
    profiler.start()
    try:
        record = await _measured(service, name)
    finally:
        profiler.stop()

    text = profiling.report(profiler)
    await asyncio.to_thread(out.write_text, text, encoding="utf-8")
    return record


async def _measured(service: Service, name: str) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if name == "prime":
        results = await service.checker.check_all(_one_per_repository(service))
    else:
        results = await service.check_once()

    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    outcomes = Counter(result.outcome.value for result in results)
    errors = [result.error for result in results if result.error]
    return {
        "pass": name,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "user_seconds": after.ru_utime - before.ru_utime,
        "system_seconds": after.ru_stime - before.ru_stime,
        "peak_rss_kib": peak_rss_kib(os.getpid()) or after.ru_maxrss,
        "checks": len(results),
        "outcomes": dict(outcomes),
        "first_errors": errors[:3],
    }


def _one_per_repository(service: Service) -> list[tuple[Reference, Platform | None]]:
    chosen: dict[tuple[str, str], tuple[Reference, Platform | None]] = {}
    for watch in service.settings.watch:
        key = (watch.image.registry, watch.image.repository)
        chosen.setdefault(key, (watch.image, watch.platform))

    return list(chosen.values())


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
