"""Real-time straggler scenario for bench/subhealth.py: "one of 8 devices 30% slower".

A workload process (one thread per device of the 8-GPU A100 profile) loops cuCtxSynchronize on the
simulated libcuda.so.1; the fault file gives every device a 10 ms synchronise (``sync_us 10000``, a small
training step) and,
from 10 s after the scenario epoch, makes nvidia-5 30 % slower (``@10 nvidia 5 slow 30``). The
bench's own process runs the agent's workload-side path: bpftrace uprobes (hcs.devices.workload)
→ straggler detector → the same Grader the HealthMonitor uses. Nothing is stepped here: onset and
detection are wall-clock seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

WORKLOAD = r"""
import ctypes, sys, threading, time
lib = ctypes.CDLL(sys.argv[1])
lib.cuInit(0)
stop = time.time() + float(sys.argv[2])
def run(i):
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    lib.cuDeviceGet(ctypes.byref(dev), i)
    lib.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)
    while time.time() < stop:
        lib.cuCtxSynchronize()
ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
"""

SLOW_DEVICE = "nvidia-5"
ONSET_S = 10.0
DURATION_S = 30.0
POLL_S = 0.5  # the grader's poll (the agent's healthPollInterval default is 0.2 s)


def straggler_scenario(root: Path, work: Path) -> dict[str, object]:
    from hcs.devices.subhealth import Grader, Signals
    from hcs.devices.workload import EbpfLatencySource, WorkloadSignals

    lib = root / "driver" / "build" / "lib" / "libcuda.so.1"
    source = EbpfLatencySource(str(lib))
    if not source.start():
        return {"ebpf": False, "ebpf_note": source.reason}
    faults = work / "straggler.faults"
    epoch = time.time() + 1.0
    faults.write_text(f"epoch {epoch:.3f}\n" + "".join(f"nvidia {i} sync_us 10000\n" for i in range(8))
                      + f"@{ONSET_S} nvidia 5 slow 30\n")
    env = {k: v for k, v in os.environ.items() if k != "HCS_SIM_CLOCK"}
    env.update(HCS_SIM_PROFILE=str(root / "driver" / "profiles" / "a100-80g-nvlink-8.json"),
               HCS_SIM_FAULTS=str(faults))
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(lib), str(DURATION_S + 1)], env=env)
    keys = [f"nvidia-{i}" for i in range(8)]
    signals = WorkloadSignals(source, keys, {k: "a100-80g" for k in keys})
    grader = Grader()
    first: float | None = None
    false_pos: set[str] = set()
    t_start = time.monotonic()
    cpu_start = _cpu_s(source.pid)
    try:
        while time.time() < epoch + DURATION_S:
            time.sleep(POLL_S)
            now = time.time()
            verdicts = signals()
            for k in keys:
                v = grader.observe(k, now, Signals(straggler=verdicts.get(k, "")))
                if v.grade.label != "healthy":
                    if k == SLOW_DEVICE and now >= epoch + ONSET_S:
                        first = first if first is not None else now
                    else:
                        false_pos.add(k)
        bpftrace_cpu_pct = 100.0 * (_cpu_s(source.pid) - cpu_start) / (time.monotonic() - t_start)
    finally:
        proc.kill()
        proc.wait()
        source.stop()
    detected = first is not None and not false_pos
    return {
        "ebpf": True,
        "ebpf_probes": "bpftrace uprobes on libcuda.so.1 cuCtxCreate_v2/cuDevicePrimaryCtxRetain/cuCtxSynchronize",
        "straggler_false_positive_devices": sorted(false_pos),
        "bpftrace_cpu_pct_one_core": round(bpftrace_cpu_pct, 3),  # its user-space side, 8 busy devices
        "scenario": {"detected": detected, "detect_s": round(first - (epoch + ONSET_S), 3) if first else None,
                     "grade": "degraded" if first else "healthy", "device": SLOW_DEVICE},
    }


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
