#!/usr/bin/env python3
"""Compute limits under a host stall: ``converge_s`` of each split when every workload process is
stopped (SIGSTOP) for ``--stall-ms`` at ``--at-s`` after start, as a frozen VM or a CPU-starved node
stops the launching threads, next to the same split without the stop.

Same workload, device model and ``converge_s`` definition as ``bench/compute_share.py`` (trailing
500 ms share within ±2 points of the target for a whole second, from each process's first kernel),
shorter runs (``--seconds``, default 3.5). ``--interceptor`` compares another build (e.g. one with
another token cushion). Prints one JSON object:
``{"stall_ms", "at_s", "runtime", "repeats", "converge_s": {"<split>": [..], "<split>@stall": [..]}}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import compute_share as cs  # bench/ is sys.path[0] when a bench script runs

from hcs.testing.compute_converge import converge_windows


def converge(samples: list[tuple[int, dict[int, int]]], pids: list[int], shares: list[float]) -> float:
    """``converge_s`` as bench/compute_share.py measures it, from each process's first kernel."""
    firsts = [next((t for t, d in samples if d.get(pid, 0) > 0), samples[0][0]) for pid in pids]
    return converge_windows(samples, pids, shares, firsts, cs.TOL)[0]


def run(rt: str, shares: list[float], seconds: float, stall_ms: float, at_s: float) -> float:
    with tempfile.TemporaryDirectory(prefix="hcs-compute-stall-") as tmp:
        prof = Path(tmp) / "profile.json"
        cs.profile(prof)
        env = dict(os.environ)
        env.update({"HCS_SIM_PROFILE": str(prof), "HCS_SIM_DEVICE_DIR": tmp, "HCS_COMPUTE_DIR": tmp,
                    "HCS_INTERCEPTOR_LOG": "1"})
        os.environ.update({"HCS_SIM_PROFILE": str(prof), "HCS_SIM_DEVICE_DIR": tmp})
        dev = cs.Device(rt)
        procs = [cs.spawn(rt, env, s, f"stall-{i}", seconds) for i, s in enumerate(shares)]

        def stop() -> None:
            time.sleep(at_s)
            for p in procs:
                os.kill(p.pid, signal.SIGSTOP)
            time.sleep(stall_ms / 1000)
            for p in procs:
                os.kill(p.pid, signal.SIGCONT)

        if stall_ms > 0:
            threading.Thread(target=stop, daemon=True).start()
        samples: list[tuple[int, dict[int, int]]] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append(dev.sample())
            time.sleep(0.02)
        cs.finish(procs)
        return round(converge(samples, [p.pid for p in procs], shares), 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime", default="cuda", choices=cs.RUNTIMES)
    ap.add_argument("--stall-ms", type=float, default=200.0)
    ap.add_argument("--at-s", type=float, default=0.8)
    ap.add_argument("--seconds", type=float, default=3.5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--interceptor", default=str(cs.INTERCEPTOR))
    args = ap.parse_args()
    cs.INTERCEPTOR = Path(args.interceptor)
    if not cs.INTERCEPTOR.exists() or not cs.WORKLOAD.exists():
        print("build first: make -C driver && make -C interceptor tests", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.nice(-5)
    out: dict[str, list[float]] = {}
    for name, shares in cs.SPLITS.items():
        for stall in (0.0, args.stall_ms):
            key = f"{name}@stall" if stall else name
            out[key] = [run(args.runtime, shares, args.seconds, stall, args.at_s) for _ in range(args.repeats)]
    print(json.dumps({"stall_ms": args.stall_ms, "at_s": args.at_s, "runtime": args.runtime,
                      "repeats": args.repeats, "interceptor": str(cs.INTERCEPTOR), "converge_s": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
