"""hcs.signals.StopSignals, which every daemon's main thread waits on, in real child processes.

Before it, the daemons set a threading.Event from the signal handler while the main thread waited on
that Event: a SIGTERM that landed inside wait() deadlocked the process (seen with `hcs node`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _child(body: str) -> subprocess.Popen[str]:
    code = "import os, signal, sys, time\nfrom hcs.signals import StopSignals\n" + textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_many_stop_signals_in_a_row_each_end_a_wait() -> None:
    """200 waits, each ended by a SIGTERM sent while the child is blocked in wait()."""
    proc = _child("""
        stop = StopSignals()
        print("ready", flush=True)
        for _ in range(200):
            print(stop.wait(), flush=True)
    """)
    assert proc.stdout is not None
    for _ in range(200):
        time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == str(int(signal.SIGTERM))
    assert proc.wait(timeout=10) == 0


def test_a_signal_before_wait_is_not_lost_and_other_signals_do_not_stop() -> None:
    proc = _child("""
        signal.signal(signal.SIGUSR1, lambda *_: print("usr1", flush=True))
        stop = StopSignals()
        print("ready", flush=True)
        time.sleep(0.5)  # SIGUSR1 then SIGINT arrive now, before wait()
        print("got", stop.wait(), flush=True)
    """)
    proc.send_signal(signal.SIGUSR1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert out.split() == ["usr1", "got", str(int(signal.SIGINT))]


def test_a_stop_that_hangs_prints_the_stacks_and_exits() -> None:
    proc = _child("""
        stop = StopSignals()
        print("ready", flush=True)
        stop.wait(stop_timeout_s=0.5)
        time.sleep(30)  # a shutdown stuck somewhere
    """)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert "Timeout (0:00:00.500000)!" in out and "in <module>" in out
