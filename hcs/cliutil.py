"""Small helpers the command-line front ends share: output paths checked before long work, and
progress bars (``rich``) that appear only on an interactive terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hcs.errors import ConfigError


def check_output_path(path: str | Path, flag: str) -> Path:
    """Fail now, with the flag named, when ``path`` cannot be written later (missing or read-only folder,
    a directory in the way); the file itself is not created."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p}: is a directory; give a file name, e.g. {p / 'out.png'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {p}: folder {parent} does not exist; create it first or pick another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {p}: folder {parent} is not writable; pick another path")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{flag} {p}: file is not writable; pick another path")
    return p


def progress_enabled(machine_output: bool = False) -> bool:
    """Bars only for a person watching: stderr is a terminal and the output is not for a program."""
    return not machine_output and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[str], None]]:
    """Yield ``step(label)`` advancing a bar of ``total`` steps; a no-op when not ``enabled``."""
    if not enabled or total <= 0:
        yield lambda _label: None
        return
    # lazy: rich only when a bar is shown (a terminal)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total, label="")

        def step(label: str) -> None:
            bar.update(task, advance=1, label=label)

        yield step
