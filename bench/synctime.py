#!/usr/bin/env python3
"""Cost of the interceptor's synchronise timing (the sub-health fallback signal) per synchronise.

interceptor/tests/t_sync calls ``cuStreamSynchronize(NULL)`` on the simulated libcuda.so.1 ``--calls``
times, directly and under libhcs_interceptor.so (LD_PRELOAD, development mode) with ``HCS_COMPUTE_DIR``
unset (timing off) and set (timing on: two clock reads, one atomic add and one pwrite into the
per-device ring). Runs are interleaved; interference only adds time, so the minimum per
configuration estimates the intrinsic cost. Prints ONE JSON object:

  added_ns_per_sync   best ns/sync with timing minus best ns/sync without
  ns_per_sync_off / ns_per_sync_on / ns_per_sync_direct   the minima (direct: no interceptor)
  ring_samples        the samples the last timed run left in the ring (= its calls, capped at 512)

Usage: python3 bench/synctime.py [--runs 7] [--calls 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "interceptor" / "build" / "libhcs_interceptor.so"
CUDA = REPO / "driver" / "build" / "lib" / "libcuda.so.1"
PROFILE = REPO / "driver" / "profiles" / "a100-80g-nvlink-8.json"

T_SYNC = REPO / "interceptor" / "build" / "tests" / "t_sync"


def run(calls: int, preload: bool, compute: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD"))}
    env["HCS_SIM_PROFILE"] = str(PROFILE)
    if preload:
        env["LD_PRELOAD"] = str(LIB)
    if compute is not None:
        env["HCS_COMPUTE_DIR"] = compute
    out = subprocess.run([str(T_SYNC), str(calls)], env=env, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["ns_per_sync"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200000)
    args = ap.parse_args()
    if not T_SYNC.exists() or not LIB.exists():
        subprocess.run(["make", "-s", "-C", str(REPO / "interceptor"), "all", "build/tests/t_sync"], check=True)
    from hcs.devices.workload import parse_ring

    res: dict[str, list[float]] = {"direct": [], "off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="hcs-synctime-") as d:
        for _ in range(args.runs):
            res["direct"].append(run(args.calls, False, None))
            res["off"].append(run(args.calls, True, None))
            res["on"].append(run(args.calls, True, d))
        rings = list(Path(d).glob("hcs-sync-*.ring"))
        samples = 0
        if rings:
            samples = len(parse_ring(rings[0].read_bytes(), None, 0, 2**63))
    best = {k: min(v) for k, v in res.items()}
    print(json.dumps({
        "added_ns_per_sync": round(best["on"] - best["off"], 1),
        "ns_per_sync_direct": round(best["direct"], 1), "ns_per_sync_off": round(best["off"], 1),
        "ns_per_sync_on": round(best["on"], 1), "ring_samples": samples, "ring_files": len(rings),
        "runs": args.runs, "calls": args.calls,
        "raw": {k: [round(x, 1) for x in v] for k, v in res.items()},
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
