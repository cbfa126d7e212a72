"""Real-time straggler scenarios for bench/subhealth.py: "one of 8 devices 30% slower", per vendor.

For each vendor's shipped 8-device profile, a workload process (one thread per device) loops the
vendor runtime's synchronise calls on the simulated library (``cuCtxSynchronize`` on libcuda.so.1;
``aclrtSynchronizeStream``/``aclrtSynchronizeDevice`` on libascendcl.so; ``hipStreamSynchronize``/
``hipDeviceSynchronize`` on libamdhip64.so; ``cnrtQueueSync``/``cnrtSyncDevice`` on libcnrt.so); the
fault file gives every device a 10 ms synchronise (``sync_us 10000``, a small training step) and,
from ``ONSET_S`` after the scenario epoch, makes device 5 30 % slower (``@<onset> <vendor> 5 slow
30``). The bench's own process runs the agent's workload-side path into the same Grader the
HealthMonitor uses. Nothing is stepped here: onset and detection are wall-clock seconds.

Modes (``mode``):
- "ebpf": bpftrace uprobes on the runtime library (hcs.devices.workload.EbpfLatencySource) and the
  ioctl syscall tracepoints: the simulated driver (driver/build/bin/hcs-simdrv, when built) serves
  the device nodes and the runtime's synchronise waits in an ioctl on its device's node, so the
  driver ioctl path is timed too; ``ioctl_detect_s`` is when the ioctl signal's detector alone named
  the slow device, ``uprobe_detect_s`` the synchronise uprobes' (no hold time). When bpftrace cannot
  attach (not installed, not root, the kernel refuses) the scenario runs the fallback, as the agent
  does, and says so (``workload_signal``);
- "interceptor": the workload runs under libhcs_interceptor.so (LD_PRELOAD) with a compute dir and
  the agent's device list (HCS_SYNC_DEVICES); the interceptor times each synchronise into
  per-device rings there, and the bench reads them (``InterceptorTimingSource``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hcs.testing.simdrv import stop_simdrv

WORKLOAD = r"""
import ctypes, sys, threading, time
rt, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
lib = ctypes.CDLL(path)
stop = time.time() + seconds
if rt == "cuda":
    lib.cuInit(0)
if rt == "acl":
    lib.aclInit(None)
def run(i):
    h = ctypes.c_void_p()
    if rt == "cuda":
        dev = ctypes.c_int()
        lib.cuDeviceGet(ctypes.byref(dev), i)
        lib.cuCtxCreate_v2(ctypes.byref(h), 0, dev)
        calls = (lib.cuCtxSynchronize,)
    elif rt == "acl":
        lib.aclrtSetDevice(i); lib.aclrtCreateStream(ctypes.byref(h))
        calls = (lambda: lib.aclrtSynchronizeStream(h), lib.aclrtSynchronizeDevice)
    elif rt == "hip":
        lib.hipSetDevice(i); lib.hipStreamCreate(ctypes.byref(h))
        calls = (lambda: lib.hipStreamSynchronize(h), lib.hipDeviceSynchronize)
    else:
        lib.cnrtSetDevice(i); lib.cnrtQueueCreate(ctypes.byref(h))
        calls = (lambda: lib.cnrtQueueSync(h), lib.cnrtSyncDevice)
    k = 0
    while time.time() < stop:
        calls[k % len(calls)]()
        k += 1
ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
"""

# vendor -> (runtime, library, profile, model)
VENDORS = {
    "nvidia": ("cuda", "libcuda.so.1", "a100-80g-nvlink-8"),
    "ascend": ("acl", "libascendcl.so", "ascend-910b-hccs-8"),
    "hygon": ("hip", "libamdhip64.so", "hygon-k100ai-xgmi-8"),
    "cambricon": ("cnrt", "libcnrt.so", "mlu370-x8-mlulink-8"),
}
SLOW_INDEX = 5
ONSET_S = 6.0
DURATION_S = 16.0
POLL_S = 0.5  # the grader's poll (the agent's healthPollInterval default is 0.2 s)


def scenario_name(vendor: str, mode: str) -> str:
    return f"{vendor}-one-of-8-devices-30pct-slower-{mode}"


def straggler_scenario(root: Path, work: Path, mode: str = "ebpf", vendor: str = "nvidia") -> dict[str, object]:
    """``mode``: "ebpf" (else the interceptor's timing, as the agent falls back) or "interceptor"."""
    from hcs.devices.subhealth import Grader, Signals
    from hcs.devices.workload import (
        EbpfLatencySource,
        InterceptorTimingSource,
        TimingFileSignals,
        WorkloadSignals,
    )

    rt, libname, profname = VENDORS[vendor]
    lib = root / "driver" / "build" / "lib" / libname
    profile = root / "driver" / "profiles" / f"{profname}.json"
    devices = [d for d in json.loads(profile.read_text())["devices"] if d.get("vendor") == vendor]
    keys = [f"{vendor}-{i}" for i in range(len(devices))]
    slow = f"{vendor}-{SLOW_INDEX}"
    model = {k: str(d.get("model", vendor)) for k, d in zip(keys, devices, strict=True)}
    source: EbpfLatencySource | None = None
    note = "not tried (interceptor mode asked for)"
    drv: subprocess.Popen[str] | None = None
    nodes = work / f"dev-{vendor}"
    if mode != "interceptor":
        source = EbpfLatencySource({vendor: str(lib)}, ioctl=True)
        if not source.start():
            note, source = source.reason, None
    signals: WorkloadSignals | TimingFileSignals
    env = {k: v for k, v in os.environ.items() if k not in ("HCS_SIM_CLOCK", "LD_PRELOAD")}
    if source is not None:
        signals = WorkloadSignals(source, keys, model)
    else:
        interceptor = root / "interceptor" / "build" / "libhcs_interceptor.so"
        if not interceptor.exists():
            return {"ebpf": False, "ebpf_note": note, "workload_signal": "none (interceptor not built)"}
        compute = work / f"compute-{vendor}"
        compute.mkdir(exist_ok=True)
        uuids = {k: str(d["uuid"]) for k, d in zip(keys, devices, strict=True)}  # the inventory's order
        device_list = work / f"devices-{vendor}"  # the agent's device list: "<index> <uuid>"
        device_list.write_text("".join(f"{i} {uuids[k]}\n" for i, k in enumerate(keys)))
        signals = TimingFileSignals(InterceptorTimingSource(compute, uuids), model)
        env.update(LD_PRELOAD=str(interceptor), HCS_COMPUTE_DIR=str(compute), HCS_SYNC_DEVICES=str(device_list))
    faults = work / f"straggler-{vendor}.faults"
    epoch = time.time() + 1.0
    faults.write_text(f"epoch {epoch:.3f}\n" + "".join(f"{vendor} {i} sync_us 10000\n" for i in range(len(keys)))
                      + f"@{ONSET_S} {vendor} {SLOW_INDEX} slow 30\n")
    env.update(HCS_SIM_PROFILE=str(profile), HCS_SIM_FAULTS=str(faults))
    simdrv = root / "driver" / "build" / "bin" / "hcs-simdrv"
    ioctl_note = "interceptor mode" if source is None else source.ioctl_note
    if source is not None and not ioctl_note:
        if simdrv.exists():
            drv = _mount_nodes(simdrv, nodes, env)
            ioctl_note = "" if drv is not None else "hcs-simdrv could not mount the device nodes (FUSE)"
        else:
            ioctl_note = "driver/build/bin/hcs-simdrv not built (libfuse3-dev)"
    if drv is not None:
        env["HCS_SIM_DEVICE_NODES"] = os.environ["HCS_SIM_DEVICE_NODES"] = str(nodes)
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, rt, str(lib), str(DURATION_S + 1)], env=env)
    grader = Grader()
    first: float | None = None
    ioctl_first: float | None = None
    uprobe_first: float | None = None
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
            if isinstance(signals, WorkloadSignals) and now >= epoch + ONSET_S:  # each eBPF signal on its own
                if ioctl_first is None and list(signals.ioctl_detector.verdicts()) == [slow]:
                    ioctl_first = now
                if uprobe_first is None and list(signals.detector.verdicts()) == [slow]:
                    uprobe_first = now
            for k in keys:
                v = grader.observe(k, now, Signals(straggler=verdicts.get(k, "")))
                if v.grade.label != "healthy":
                    if k == slow and now >= epoch + ONSET_S:
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
        os.environ.pop("HCS_SIM_DEVICE_NODES", None)
        if drv is not None:
            stop_simdrv(drv, nodes)
    detected = first is not None and not false_pos
    probed = signals.source.probed.get(vendor, ()) if isinstance(signals, WorkloadSignals) else ()
    mode_info: dict[str, object] = {
        "ebpf": True, "workload_signal": "ebpf",
        "ebpf_probes": f"bpftrace uprobes on {libname}: {'/'.join(probed)}",
        "bpftrace_cpu_pct_one_core": round(bpftrace_cpu_pct, 3),  # its user-space side, 8 busy devices
        "ioctl_tracepoints": not ioctl_note, "ioctl_note": ioctl_note,
        # when each detector alone first named the slow device (no hold time: the grade adds ~2 s)
        "uprobe_detect_s": round(uprobe_first - (epoch + ONSET_S), 3) if uprobe_first else None,
        "ioctl_detect_s": round(ioctl_first - (epoch + ONSET_S), 3) if ioctl_first else None,
    } if source is not None else {
        "ebpf": False, "ebpf_note": note,
        "workload_signal": f"interceptor (libhcs_interceptor.so {rt} synchronise timing rings in the compute dir)",
    }
    return {
        **mode_info,
        "straggler_false_positive_devices": sorted(false_pos),
        "workload_reader_cpu_pct_one_core": round(100.0 * reader_cpu / wall, 3),  # 8 busy devices, poll 0.5 s
        "scenario": {"detected": detected, "detect_s": round(first - (epoch + ONSET_S), 3) if first else None,
                     "grade": "degraded" if first else "healthy", "device": slow},
    }


def _mount_nodes(simdrv: Path, mnt: Path, env: dict[str, str]) -> subprocess.Popen[str] | None:
    """Start the simulated driver serving the device nodes at ``mnt``; None when it cannot mount."""
    mnt.mkdir(exist_ok=True)
    drv = subprocess.Popen([str(simdrv), str(mnt)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)
    assert drv.stdout is not None
    if drv.stdout.readline().startswith("ready"):
        return drv
    drv.kill()
    drv.wait()
    return None


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
