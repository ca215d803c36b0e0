"""pyinstrument helpers for `python -m bench --profile` (a bench extra).

`python -m bench.profiling OUT -- watcher ARGS...` profiles one `watcher` command,
imports included, and writes the report to OUT; `report()` is also what
`bench.driver` writes for a profiled pass. Imports nothing from watcher at module
level, so that a profiled command's imports are in its profile.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyinstrument import Profiler, processors
from pyinstrument.renderers import ConsoleRenderer

#: Half a millisecond: a check costs a few milliseconds of CPU, so the default
#: (1 ms) would see too few samples of each step.
INTERVAL_SECONDS = 0.0005
FLAT_LINES = 60


def new_profiler() -> Profiler:
    """A profiler of the calling thread, whatever awaits (asyncio's thread only)."""
    return Profiler(interval=INTERVAL_SECONDS, async_mode="disabled")


def report(profiler: Profiler) -> str:
    """The call tree, then the functions by self time with import machinery kept."""
    tree = profiler.output_text(unicode=True, show_all=False)
    flat = ConsoleRenderer(unicode=True, flat=True, flat_time="self")
    # pyinstrument hides importlib frames by default; they are the point when an
    # import fails on every request.
    flat.processors = [
        step for step in flat.processors if step is not processors.remove_importlib
    ]
    lines = str(profiler.output(flat)).splitlines()
    header = "\nBy self time (importlib frames kept):\n"
    return tree + header + "\n".join(lines[:FLAT_LINES]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m bench.profiling OUT -- watcher ARGS...\n")
        return 2

    out, command = Path(argv[0]), argv[2:]
    profiler = new_profiler()
    profiler.start()
    code: int | str | None = 0
    try:
        from watcher import cli  # imported here so that its imports are profiled

        sys.argv = ["watcher", *command]
        cli.main()
    except SystemExit as exc:
        code = exc.code
    finally:
        profiler.stop()
        out.write_text(report(profiler), encoding="utf-8")

    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
