"""Small builders shared by the integration tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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
