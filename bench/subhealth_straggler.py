"""Real-time straggler scenario for bench/subhealth.py: "one of 8 devices 30% slower".

A workload process (one thread per device of the 8-GPU A100 profile) loops cuCtxSynchronize on the
simulated libcuda.so.1; the fault file gives every device a 10 ms synchronise (``sync_us 10000``, a small
training step) and,
from 10 s after the scenario epoch, makes nvidia-5 30 % slower (``@10 nvidia 5 slow 30``). The
bench's own process runs the agent's workload-side path: bpftrace uprobes (hcs.devices.workload)
→ straggler detector → the same Grader the HealthMonitor uses. Nothing is stepped here: onset and
detection are wall-clock seconds.

Without eBPF (no bpftrace, not root, the kernel refuses; or ``mode="interceptor"``) the scenario runs
the agent's fallback instead: the workload runs under libhcs_interceptor.so (LD_PRELOAD) with a
compute dir, the interceptor times each synchronise into per-device rings there, and the bench reads
them (``InterceptorTimingSource``) into the same detector and Grader; ``workload_signal`` names the
mode that produced the scenario's result.
"""

from __future__ import annotations

import json
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


def straggler_scenario(root: Path, work: Path, mode: str = "auto") -> dict[str, object]:
    """``mode``: "auto" (eBPF, else the interceptor's timing) or "interceptor"."""
    from hcs.devices.subhealth import Grader, Signals
    from hcs.devices.workload import (
        EbpfLatencySource,
        InterceptorTimingSource,
        TimingFileSignals,
        WorkloadSignals,
    )

    lib = root / "driver" / "build" / "lib" / "libcuda.so.1"
    profile = root / "driver" / "profiles" / "a100-80g-nvlink-8.json"
    keys = [f"nvidia-{i}" for i in range(8)]
    source: EbpfLatencySource | None = None
    note = "not tried (interceptor mode asked for)"
    if mode != "interceptor":
        source = EbpfLatencySource(str(lib))
        if not source.start():
            note, source = source.reason, None
    signals: WorkloadSignals | TimingFileSignals
    env = {k: v for k, v in os.environ.items() if k not in ("HCS_SIM_CLOCK", "LD_PRELOAD")}
    if source is not None:
        signals = WorkloadSignals(source, keys, {k: "a100-80g" for k in keys})
    else:
        interceptor = root / "interceptor" / "build" / "libhcs_interceptor.so"
        if not interceptor.exists():
            return {"ebpf": False, "ebpf_note": note, "workload_signal": "none (interceptor not built)"}
        compute = work / "compute"
        compute.mkdir(exist_ok=True)
        devices = [d for d in json.loads(profile.read_text())["devices"] if d.get("vendor") == "nvidia"]
        uuids = {f"nvidia-{i}": str(d["uuid"]) for i, d in enumerate(devices)}  # the inventory's order
        signals = TimingFileSignals(InterceptorTimingSource(compute, uuids), {k: "a100-80g" for k in keys})
        env.update(LD_PRELOAD=str(interceptor), HCS_COMPUTE_DIR=str(compute))
    faults = work / "straggler.faults"
    epoch = time.time() + 1.0
    faults.write_text(f"epoch {epoch:.3f}\n" + "".join(f"nvidia {i} sync_us 10000\n" for i in range(8))
                      + f"@{ONSET_S} nvidia 5 slow 30\n")
    env.update(HCS_SIM_PROFILE=str(profile), HCS_SIM_FAULTS=str(faults))
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(lib), str(DURATION_S + 1)], env=env)
    grader = Grader()
    first: float | None = None
    false_pos: set[str] = set()
    t_start = time.monotonic()
    reader_cpu = 0.0  # the agent side: reading the samples + the detector (this process's CPU)
    pid = source.pid if source is not None else None
    cpu_start = _cpu_s(pid)
    try:
        while time.time() < epoch + DURATION_S:
            time.sleep(POLL_S)
            now = time.time()
            c0 = time.process_time()
            verdicts = signals()
            reader_cpu += time.process_time() - c0
            for k in keys:
                v = grader.observe(k, now, Signals(straggler=verdicts.get(k, "")))
                if v.grade.label != "healthy":
                    if k == SLOW_DEVICE and now >= epoch + ONSET_S:
                        first = first if first is not None else now
                    else:
                        false_pos.add(k)
        wall = time.monotonic() - t_start
        bpftrace_cpu_pct = 100.0 * (_cpu_s(pid) - cpu_start) / wall
    finally:
        proc.kill()
        proc.wait()
        if source is not None:
            source.stop()
    detected = first is not None and not false_pos
    mode_info: dict[str, object] = {
        "ebpf": True, "workload_signal": "ebpf",
        "ebpf_probes": "bpftrace uprobes on libcuda.so.1 cuCtxCreate_v2/cuDevicePrimaryCtxRetain/cuCtxSynchronize",
        "bpftrace_cpu_pct_one_core": round(bpftrace_cpu_pct, 3),  # its user-space side, 8 busy devices
    } if source is not None else {
        "ebpf": False, "ebpf_note": note,
        "workload_signal": "interceptor (libhcs_interceptor.so synchronise timing rings in the compute dir)",
    }
    return {
        **mode_info,
        "straggler_false_positive_devices": sorted(false_pos),
        "workload_reader_cpu_pct_one_core": round(100.0 * reader_cpu / wall, 3),  # 8 busy devices, poll 0.5 s
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
