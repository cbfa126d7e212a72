"""Logging setup: stdlib logging, optional JSON lines. Library code only logs, never prints."""

from __future__ import annotations

import json
import logging
import os
import sys

from hcs.errors import ConfigError

#: the level names ``--log-level`` and ``HCS_LOG_LEVEL`` accept.
LEVELS = ("debug", "info", "warning", "error", "critical")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def resolve_level(level: str | None = None) -> str:
    """The effective level name (lower case) from ``level`` or ``HCS_LOG_LEVEL``; ConfigError when unknown."""
    if level:
        source, value = "--log-level", level
    else:
        source, value = "HCS_LOG_LEVEL", os.environ.get("HCS_LOG_LEVEL") or "info"
    name = value.strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LEVELS:
        raise ConfigError(f"{source} {value!r}: not a log level; use one of {', '.join(LEVELS)}")
    return name


def setup_logging(level: str | None = None, as_json: bool = False) -> str:
    """Configure the root logger; return the effective level name. Raises ConfigError on a bad level."""
    name = resolve_level(level)
    as_json = as_json or os.environ.get("HCS_LOG_JSON", "") in ("1", "true")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, name.upper()))
    return name
