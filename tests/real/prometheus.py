"""A real Prometheus for integration tests: Debian's `prometheus` (and `promtool`).

`start_prometheus()` writes a configuration and its rule files into a temporary
directory, runs the server on a free 127.0.0.1 port with its TSDB there, and waits
until `/-/ready` answers. `PrometheusServer` reads the HTTP API (`query()`,
`alerts()`, `rules()`); `stop()` kills the process it started (by PID) and removes
the directory. `promtool()` runs Debian's promtool. Imports nothing from watcher.
"""

import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.real.ports import LOOPBACK
from tests.real.process import clean_up, read_text, start_on_free_port
from tests.real.registry import ToolMissingError

PROMETHEUS_BINARY = Path("/usr/bin/prometheus")
PROMTOOL_BINARY = Path("/usr/bin/promtool")
PROMETHEUS_INSTALL_HINT = "apt-get install prometheus"
DEFAULT_STARTUP_TIMEOUT_SECONDS = 20.0
PROMTOOL_TIMEOUT_SECONDS = 60.0
HTTP_TIMEOUT_SECONDS = 5.0
_POLL_INTERVAL_SECONDS = 0.1


class PrometheusStartError(RuntimeError):
    """The prometheus process exited or never became ready."""


class PrometheusQueryError(RuntimeError):
    """The HTTP API answered with an error; the message holds Prometheus's text."""


@dataclass(slots=True, weakref_slot=True)
class PrometheusServer:
    """A running `prometheus` process; `stop()` is idempotent.

    Should `stop()` never be called, the process is still killed and the directory
    removed when this object is garbage-collected or the interpreter exits.
    """

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _workdir: Path
    _finalizer: "weakref.finalize[[subprocess.Popen[bytes], Path], PrometheusServer]" = field(
        init=False, repr=False
    )

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, clean_up, self.process, self._workdir)

    @property
    def log(self) -> str:
        """Return what Prometheus has logged so far."""
        return read_text(self.log_path)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate `expr` now (`/api/v1/query`) and return its result list.

        A scalar or string result comes back as a one-item list.

        Raises:
            PrometheusQueryError: Prometheus refused the expression; the message
                quotes it and Prometheus's error.
        """
        data = self._get("/api/v1/query", {"query": expr}, what=f"query {expr!r}")
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"value": result}]
        return list(result)

    def label_values(self, label: str, match: str) -> list[str]:
        """Return the values of `label` on the series `match` selects."""
        data = self._get(
            f"/api/v1/label/{label}/values",
            {"match[]": match},
            what=f"label values of {label} on {match}",
        )
        return list(data)

    def alerts(self) -> list[dict[str, Any]]:
        """Return the pending and firing alerts (`/api/v1/alerts`)."""
        return list(self._get("/api/v1/alerts", {}, what="alerts")["alerts"])

    def firing(self, alertname: str) -> list[dict[str, str]]:
        """Return the label sets of the firing alerts named `alertname`."""
        return [
            alert["labels"]
            for alert in self.alerts()
            if alert["labels"].get("alertname") == alertname
            and alert["state"] == "firing"
        ]

    def rules(self) -> list[dict[str, Any]]:
        """Return every loaded rule, with its health and last evaluation."""
        groups = self._get("/api/v1/rules", {}, what="rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def stop(self) -> None:
        """Stop the process this object started and delete its directory."""
        self._finalizer()

    def __enter__(self) -> "PrometheusServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _get(self, path: str, params: Mapping[str, str], *, what: str) -> Any:
        response = httpx.get(
            f"{self.url}{path}", params=params, timeout=HTTP_TIMEOUT_SECONDS
        )
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            msg = f"Prometheus {what}: {response.status_code} {body.get('errorType')}: {body.get('error')}"
            raise PrometheusQueryError(msg)

        return body["data"]


def start_prometheus(
    config: str,
    files: Mapping[str, str] | None = None,
    *,
    binary: Path = PROMETHEUS_BINARY,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
) -> PrometheusServer:
    """Start `prometheus` with `config` (YAML text) on a free 127.0.0.1 port.

    Args:
        config: the prometheus.yml text; relative `rule_files` are resolved
            against the directory that also holds `files`.
        files: more files to write beside it, by name (rule files).
        startup_timeout: seconds to wait for `/-/ready`.

    Raises:
        ToolMissingError: the binary is not installed.
        PrometheusStartError: the process exited or was not ready in time; the
            message holds its log.
    """
    if not binary.is_file():
        raise ToolMissingError(str(binary), PROMETHEUS_INSTALL_HINT)

    workdir = Path(tempfile.mkdtemp(prefix="watcher-prometheus-"))
    try:
        config_path = workdir / "prometheus.yml"
        config_path.write_text(config, encoding="utf-8")
        for name, text in (files or {}).items():
            (workdir / name).write_text(text, encoding="utf-8")

        return _start_on_free_port(binary, workdir, config_path, startup_timeout)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def promtool(
    *args: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run Debian's promtool with `args`; the caller judges the exit code.

    Raises:
        ToolMissingError: promtool is not installed.
    """
    if not PROMTOOL_BINARY.is_file():
        raise ToolMissingError(str(PROMTOOL_BINARY), PROMETHEUS_INSTALL_HINT)

    return subprocess.run(
        [str(PROMTOOL_BINARY), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
    )


def _start_on_free_port(
    binary: Path, workdir: Path, config_path: Path, startup_timeout: float
) -> PrometheusServer:
    def spawn(port: int, attempt: int) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = workdir / f"prometheus-{attempt}.log"
        return _spawn(binary, workdir, config_path, port, log_path), log_path

    started = start_on_free_port(
        "prometheus", spawn, _wait_until_ready, startup_timeout, PrometheusStartError
    )
    return PrometheusServer(
        url=started.url,
        process=started.process,
        log_path=started.log_path,
        _workdir=workdir,
    )


def _spawn(
    binary: Path, workdir: Path, config_path: Path, port: int, log_path: Path
) -> subprocess.Popen[bytes]:
    arguments: Sequence[str] = (
        str(binary),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    )
    with log_path.open("wb") as log:
        return subprocess.Popen(
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )


def _wait_until_ready(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                msg = f"prometheus exited with {process.returncode} before {url}/-/ready answered; its log:\n{read_text(log_path)}"
                raise PrometheusStartError(msg)

            try:
                if client.get(f"{url}/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass

            time.sleep(_POLL_INTERVAL_SECONDS)

    msg = f"prometheus was not ready at {url}/-/ready within {timeout} s; its log:\n{read_text(log_path)}"
    raise PrometheusStartError(msg)
