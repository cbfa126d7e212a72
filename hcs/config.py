"""One YAML config file, validated at start-up, with ``HCS_*`` environment overrides.

Each component owns a section (``node``, ``allocator``, ``webhook``, ``exchangeRates``...) and
validates it into its own frozen dataclass; this module only loads, merges and reports errors
with the file and field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hcs.errors import ConfigError


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Load the YAML config (empty when ``path`` is None). Errors name the file and line."""
    if path is None:
        return {}
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"config {p}: cannot read ({exc.strerror}); pass an existing file with --config") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def section(config: Mapping[str, Any], name: str, *, source: str = "config") -> dict[str, Any]:
    """Return ``config[name]`` as a dict (empty when absent); error when it is not a mapping."""
    value = config.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: field '{name}' must be a mapping, got {type(value).__name__}")
    return dict(value)


def env_override(name: str, default: str | None = None) -> str | None:
    """``HCS_<NAME>`` from the environment, else ``default``."""
    return os.environ.get(f"HCS_{name.upper()}", default)
