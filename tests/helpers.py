"""Small builders shared by the integration tests."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from watcher import config


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal; JSON's strings, numbers and lists are TOML too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_config(
    directory: Path,
    *,
    watches: Iterable[str | Mapping[str, Any]],
    registries: Mapping[str, Mapping[str, Any]] | None = None,
    notify: Iterable[str] = (),
    **top: Any,
) -> Path:
    """Write a watcher TOML file into ``directory`` and return its path."""
    top.setdefault("database_url", f"sqlite:///{directory / 'watcher.db'}")
    top.setdefault("listen", "127.0.0.1:0")
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for name, values in (registries or {}).items():
        lines.append(f'\n[registries."{name}"]')
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    for watch in watches:
        entry = {"image": watch} if isinstance(watch, str) else dict(watch)
        lines.append("\n[[watch]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
    urls = list(notify)
    if urls:
        lines.append(f"\n[notify]\nurls = {toml_value(urls)}")

    path = directory / "watcher.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_settings(
    directory: Path, environ: Mapping[str, str] | None = None, **kwargs: Any
) -> config.Settings:
    """Write a config file as ``write_config`` does and load it."""
    return config.load(write_config(directory, **kwargs), environ or {})


def wait_for_watcher(
    process: subprocess.Popen[bytes],
    condition: Callable[[], bool],
    what: str,
    log: Callable[[], str],
    timeout: float,
) -> None:
    """Poll ``condition`` until it holds, failing the test with watcher's log if
    ``process`` exits first or ``timeout`` seconds pass; a refused connection
    (watcher not listening yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"watcher exited with {process.returncode}:\n{log()}")
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; watcher log:\n{log()}")
