"""Wait in the main thread for SIGTERM/SIGINT, safely.

A daemon cannot set a ``threading.Event`` from a signal handler. The handler runs in the main
thread, maybe while that thread sits inside the same Event's ``wait()`` holding its lock, and then
``set()`` waits for that lock forever (``hcs node`` hung this way on SIGTERM). Here the Python
handler does nothing. The interpreter's C-level handler writes the signal number to a pipe
(``signal.set_wakeup_fd``), and :meth:`StopSignals.wait` reads it: no lock is taken in the handler.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal

log = logging.getLogger(__name__)


class StopSignals:
    """Install in the main thread before starting anything; then ``wait()`` for a stop signal."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self._signals = {int(s) for s in signals}
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write)
        for s in signals:
            signal.signal(s, lambda *_: None)

    def wait(self, stop_timeout_s: float | None = None) -> int:
        """Block until one of the signals arrives (also when it came before this call); return it.

        With ``stop_timeout_s``, a shutdown that takes longer prints every thread's stack and exits
        the process with status 1, so a thread stuck in a library never outlives the pod's grace
        period silently.
        """
        while True:
            signum = os.read(self._read, 1)[0]
            if signum in self._signals:
                break
        log.info("signal %d (%s): stopping", signum, signal.Signals(signum).name)
        if stop_timeout_s is not None:
            faulthandler.dump_traceback_later(stop_timeout_s, exit=True)
        return signum
