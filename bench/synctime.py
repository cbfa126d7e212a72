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

  runtimes            the same per runtime, for the ACL, HIP and CNRT synchronise hooks too:
                      {"acl": {"added_ns_per_sync", "ns_per_sync_direct", "ns_per_sync_off",
                      "ns_per_sync_on", "ring_files"}, "hip": ..., "cnrt": ...}; a small C loop
                      (compiled here, linked to the simulated runtime) calls aclrtSynchronizeDevice /
                      hipDeviceSynchronize / cnrtSyncDevice on device 0; "on" also sets
                      HCS_SYNC_DEVICES (the device list that names their ring)

Usage: python3 bench/synctime.py [--runs 7] [--calls 200000] [--runtimes acl,hip,cnrt]
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

# runtime -> (library, profile, setup, synchronise call)
RUNTIMES = {
    "acl": ("libascendcl.so", "ascend-910b-hccs-8",
            "int aclInit(const char *); int aclrtSetDevice(int); int aclrtSynchronizeDevice(void);",
            "aclInit(0) == 0 && aclrtSetDevice(0) == 0", "aclrtSynchronizeDevice()"),
    "hip": ("libamdhip64.so", "hygon-k100ai-xgmi-8", "int hipSetDevice(int); int hipDeviceSynchronize(void);",
            "hipSetDevice(0) == 0", "hipDeviceSynchronize()"),
    "cnrt": ("libcnrt.so", "mlu370-x8-mlulink-8", "int cnrtSetDevice(int); int cnrtSyncDevice(void);",
             "cnrtSetDevice(0) == 0", "cnrtSyncDevice()"),
}
LOOP_C = r"""
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
%(decls)s
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}
int main(int argc, char **argv) {
    long calls = argc > 1 ? atol(argv[1]) : 0;
    if (calls < 1 || !(%(setup)s)) {
        fprintf(stderr, "setup failed\n");
        return 2;
    }
    int errors = 0;
    for (int i = 0; i < 1000; i++) /* warm-up: lazy symbols, the ring's first open */
        errors += %(call)s != 0;
    double t0 = now();
    for (long i = 0; i < calls; i++)
        errors += %(call)s != 0;
    double dt = now() - t0;
    printf("{\"calls\": %%ld, \"ns_per_sync\": %%.2f, \"errors\": %%d}\n", calls, dt / (double)calls, errors);
    return errors ? 1 : 0;
}
"""


def build_loop(rt: str, dest: Path) -> Path:
    """The C synchronise loop for runtime ``rt``, linked to the simulated runtime library."""
    lib, _, decls, setup, call = RUNTIMES[rt]
    src = dest / f"sync_{rt}.c"
    src.write_text(LOOP_C % {"decls": decls, "setup": setup, "call": call})
    exe = dest / f"sync_{rt}"
    libdir = REPO / "driver" / "build" / "lib"
    subprocess.run(["cc", "-O2", "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(src), f"-L{libdir}",
                    f"-l:{lib}", f"-Wl,-rpath,{libdir}"], check=True)
    return exe


def run_rt(exe: Path, rt: str, calls: int, preload: bool, compute: str | None, devices: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD"))}
    env["HCS_SIM_PROFILE"] = str(REPO / "driver" / "profiles" / f"{RUNTIMES[rt][1]}.json")
    if preload:
        env["LD_PRELOAD"] = str(LIB)
    if compute is not None:
        env["HCS_COMPUTE_DIR"] = compute
        env["HCS_SYNC_DEVICES"] = devices
    out = subprocess.run([str(exe), str(calls)], env=env, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["ns_per_sync"])


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
    ap.add_argument("--runtimes", default="acl,hip,cnrt", help="non-CUDA runtimes to measure too ('' for none)")
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
    runtimes: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="hcs-synctime-rt-") as work:
        for rt in [r for r in args.runtimes.split(",") if r]:
            exe = build_loop(rt, Path(work))
            prof = json.loads((REPO / "driver" / "profiles" / f"{RUNTIMES[rt][1]}.json").read_text())
            devices = Path(work) / f"devices-{rt}"
            devices.write_text("".join(f"{i} {d['uuid']}\n" for i, d in enumerate(prof["devices"])))
            compute = Path(work) / f"compute-{rt}"
            compute.mkdir()
            r: dict[str, list[float]] = {"direct": [], "off": [], "on": []}
            for _ in range(args.runs):
                r["direct"].append(run_rt(exe, rt, args.calls, False, None, ""))
                r["off"].append(run_rt(exe, rt, args.calls, True, None, ""))
                r["on"].append(run_rt(exe, rt, args.calls, True, str(compute), str(devices)))
            b = {k: min(v) for k, v in r.items()}
            files = list(compute.glob("hcs-sync-*.ring"))
            runtimes[rt] = {"added_ns_per_sync": round(b["on"] - b["off"], 1),
                            "ns_per_sync_direct": round(b["direct"], 1), "ns_per_sync_off": round(b["off"], 1),
                            "ns_per_sync_on": round(b["on"], 1), "ring_files": len(files),
                            "ring_samples": len(parse_ring(files[0].read_bytes(), None, 0, 2**63)) if files else 0}
    print(json.dumps({
        "added_ns_per_sync": round(best["on"] - best["off"], 1),
        "ns_per_sync_direct": round(best["direct"], 1), "ns_per_sync_off": round(best["off"], 1),
        "ns_per_sync_on": round(best["on"], 1), "ring_samples": samples, "ring_files": len(rings),
        "runs": args.runs, "calls": args.calls,
        "raw": {k: [round(x, 1) for x in v] for k, v in res.items()},
        "runtimes": runtimes,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
