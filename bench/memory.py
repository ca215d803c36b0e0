"""Peak resident memory of a process, as the kernel counts it for that process alone."""

from __future__ import annotations

from pathlib import Path


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of ``pid`` in KiB, or None once it has exited (or off Linux).

    Not ``ru_maxrss``: Linux keeps the larger of a process's and its parent's
    high-water mark across fork and exec, so a child of a large harness would
    report the harness.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None

    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

    return None
