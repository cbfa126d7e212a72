"""Atomic file writes: readers (the kubelet, containerd, the interceptor, a restarted agent) see the
old content or the new, never a torn file."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def atomic_write(path: Path, data: str | bytes, *, mode: int = 0o644, durable: bool = False) -> None:
    """Write ``data`` through a hidden temp file in the same directory, then rename over ``path``.

    ``durable`` adds an fsync (checkpoints); per-container files skip it: after a power loss every
    container is gone anyway.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, mode)
    try:
        try:
            os.write(fd, raw)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)  # the umask must not narrow it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
