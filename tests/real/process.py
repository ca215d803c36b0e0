"""Run a server program on a free 127.0.0.1 port, and stop it by the PID we started.

`start_on_free_port()` is the start-up the real registry and the real Prometheus
share: `free_port()` releases the port before the program binds it, so another
process can take it in between; a start that fails with "address already in use"
in the program's log is retried on a fresh port. Imports nothing from watcher.
"""

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.real.ports import LOOPBACK, free_port

PORT_ATTEMPTS = 3
STOP_TIMEOUT_SECONDS = 5.0

Process = subprocess.Popen[bytes]
# (port, attempt) -> the started process and the file its output goes to.
Spawn = Callable[[int, int], tuple[Process, Path]]
# (url, process, log path, timeout) -> None once ready; raises the start error.
WaitReady = Callable[[str, Process, Path, float], None]


@dataclass(frozen=True, slots=True)
class Started:
    """A process that answered its readiness check on `url`."""

    port: int
    url: str
    process: Process
    log_path: Path


def start_on_free_port(
    name: str,
    spawn: Spawn,
    wait_ready: WaitReady,
    startup_timeout: float,
    start_error: type[Exception],
) -> Started:
    """Spawn on a free port and wait until ready; retry a lost port race.

    Raises:
        start_error: as `wait_ready` raised it (the process is stopped first), or
            when every one of `PORT_ATTEMPTS` ports was taken; the message then
            begins with `name`.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        process, log_path = spawn(port, attempt)
        try:
            wait_ready(url, process, log_path, startup_timeout)
        except start_error:
            stop_process(process)
            in_use = "address already in use" in read_text(log_path)
            if in_use and attempt < PORT_ATTEMPTS:
                continue

            raise
        except BaseException:
            stop_process(process)
            raise

        return Started(port=port, url=url, process=process, log_path=log_path)

    msg = f"{name}: no free port after {PORT_ATTEMPTS} attempts"
    raise start_error(msg)


def clean_up(process: Process, workdir: Path) -> None:
    """Stop `process` and delete `workdir`; for `weakref.finalize`."""
    stop_process(process)
    shutil.rmtree(workdir, ignore_errors=True)


def stop_process(process: Process) -> None:
    """Terminate `process` (kill it if it lingers) unless it has already exited."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)


def read_text(path: Path) -> str:
    """Return the text of a log file, "" when it does not exist (yet)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
