"""Workload-side sub-health for the Ascend ACL, HIP and CNRT runtimes (issue 20): both modes.

Real parts: the shipped 8-device profile of each vendor through the simulated vendor libraries, a
workload process that really synchronises through the simulated runtime (libascendcl.so,
libamdhip64.so, libcnrt.so) with the fault file's ``sync_us``/``slow`` scenario, and the agent's
HealthMonitor with the workload signal ``start_workload_signals`` builds:

- eBPF: Debian's bpftrace attaches uprobes to the runtime's set-device and synchronise entry
  points (skipped, with bpftrace's reason, where it cannot attach);
- interceptor: libhcs_interceptor.so (LD_PRELOAD) times each synchronise into the per-device rings
  of a compute dir, named from the agent's device list (HCS_SYNC_DEVICES in development);
- driver ioctl path: the simulated driver (driver/build/bin/hcs-simdrv, FUSE) serves the device
  nodes and answers the runtime's synchronise ioctl after the device's delay; bpftrace's
  sys_enter_ioctl / sys_exit_ioctl tracepoints time it per (pid, fd), the agent attributes the fd to
  its device node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hcs.devices.health import HealthMonitor
from hcs.devices.inventory import discover
from hcs.devices.subhealth import Grade
from hcs.devices.workload import (
    EbpfLatencySource,
    TimingFileSignals,
    WorkloadSignals,
    bpftrace_script,
    device_node_key,
    ordinal_map,
    ring_id,
    ring_name,
    start_workload_signals,
)
from hcs.testing.simdrv import stop_simdrv

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "driver" / "build" / "lib"
INTERCEPTOR = ROOT / "interceptor" / "build" / "libhcs_interceptor.so"
SIMDRV = ROOT / "driver" / "build" / "bin" / "hcs-simdrv"

# runtime -> (vendor, library, shipped profile)
RUNTIMES = {
    "acl": ("ascend", "libascendcl.so", "ascend-910b-hccs-8"),
    "hip": ("hygon", "libamdhip64.so", "hygon-k100ai-xgmi-8"),
    "cnrt": ("cambricon", "libcnrt.so", "mlu370-x8-mlulink-8"),
}
SLOW = 5  # the straggler's index

pytestmark = pytest.mark.skipif(not all((LIB / lib).exists() for _, lib, _ in RUNTIMES.values())
                                or not INTERCEPTOR.exists(),
                                reason="simulated runtimes / interceptor not built (make dev)")

# One thread per device: set the device, then alternate the runtime's stream/queue and device
# synchronise (and an event/notifier synchronise every 8th call) for argv[3] seconds.
WORKLOAD = r"""
import ctypes, sys, threading, time
rt, path, seconds, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
lib = ctypes.CDLL(path)
stop = time.monotonic() + seconds
if rt == "acl":
    assert lib.aclInit(None) == 0
def run(i):
    h, ev = ctypes.c_void_p(), ctypes.c_void_p()
    if rt == "acl":
        assert lib.aclrtSetDevice(i) == 0 and lib.aclrtCreateStream(ctypes.byref(h)) == 0
        lib.aclrtCreateEvent(ctypes.byref(ev))
        calls = (lambda: lib.aclrtSynchronizeStream(h), lib.aclrtSynchronizeDevice,
                 lambda: lib.aclrtRecordEvent(ev, h) or lib.aclrtSynchronizeEvent(ev))
    elif rt == "hip":
        assert lib.hipSetDevice(i) == 0 and lib.hipStreamCreate(ctypes.byref(h)) == 0
        lib.hipEventCreate(ctypes.byref(ev))
        calls = (lambda: lib.hipStreamSynchronize(h), lib.hipDeviceSynchronize,
                 lambda: lib.hipEventRecord(ev, h) or lib.hipEventSynchronize(ev))
    else:
        assert lib.cnrtSetDevice(i) == 0 and lib.cnrtQueueCreate(ctypes.byref(h)) == 0
        lib.cnrtNotifierCreate(ctypes.byref(ev))
        calls = (lambda: lib.cnrtQueueSync(h), lib.cnrtSyncDevice,
                 lambda: lib.cnrtPlaceNotifier(ev, h) or lib.cnrtWaitNotifier(ev))
    k = 0
    while time.monotonic() < stop:
        rc = calls[2 if k % 8 == 7 else k % 2]()
        assert rc == 0, (rt, k, rc)
        k += 1
    done[i] = k
done = [0] * n
ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
print(*done)
"""


@pytest.fixture(params=sorted(RUNTIMES))
def node(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, Path]:
    """(runtime, fault file, compute dir) on the runtime's vendor's 8-device node; every device has a
    3 ms synchronise, device SLOW is 40 % slower."""
    rt = str(request.param)
    vendor, _, profile = RUNTIMES[rt]
    prof = tmp_path / f"{profile}.json"
    shutil.copy(ROOT / "driver" / "profiles" / f"{profile}.json", prof)
    faults = tmp_path / "node.faults"
    faults.write_text("".join(f"{vendor} {i} sync_us 3000\n" for i in range(8)) + f"{vendor} {SLOW} slow 40\n")
    monkeypatch.setenv("HCS_SIM_PROFILE", str(prof))
    monkeypatch.setenv("HCS_SIM_FAULTS", str(faults))
    monkeypatch.delenv("HCS_SIM_CLOCK", raising=False)
    monkeypatch.delenv("HCS_WORKLOAD_PROBES", raising=False)
    compute = tmp_path / "compute"
    compute.mkdir()
    return rt, faults, compute


def _workload(rt: str, seconds: float, env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD"))}
    env.update(HCS_SIM_PROFILE=os.environ["HCS_SIM_PROFILE"], HCS_SIM_FAULTS=os.environ["HCS_SIM_FAULTS"],
               **env_extra)
    return subprocess.Popen([sys.executable, "-c", WORKLOAD, rt, str(LIB / RUNTIMES[rt][1]), str(seconds), "8"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _running(rt: str, env_extra: dict[str, str]) -> Iterator[None]:
    """The workload synchronising for 14 s while the body runs; killed after, and it must not have failed."""
    proc = _workload(rt, 14.0, env_extra)
    try:
        yield
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "Traceback" not in err, err


def _until_graded(mon: HealthMonitor, slow: str, seconds: float) -> dict[str, object] | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        mon.poll()
        v = mon.verdicts()
        if v[slow].grade == Grade.DEGRADED:
            return dict(v)
    return None


def _check(graded: dict[str, object] | None, slow: str, keys: list[str], mode: str) -> None:
    assert graded is not None, f"the slow device {slow} was not detected through {mode}"
    assert any("straggler: synchronise latency" in r for r in graded[slow].reasons)  # type: ignore[attr-defined]
    assert {k: graded[k].grade for k in keys if k != slow} == {  # type: ignore[attr-defined]
        k: Grade.HEALTHY for k in keys if k != slow}


def test_ebpf_uprobes_on_the_runtime_find_the_straggler(node: tuple[str, Path, Path],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    rt, _, compute = node
    vendor = RUNTIMES[rt][0]
    inv = discover()
    keys = [d.key for d in inv.devices]
    assert keys == [f"{vendor}-{i}" for i in range(8)]
    caplog.set_level(logging.INFO, logger="hcs.devices.workload")
    workload = start_workload_signals([(d.key, d.model) for d in inv.devices],
                                      uuids={d.key: d.uuid for d in inv.devices},
                                      compute_dir=str(compute), probes="ebpf")
    if not isinstance(workload, WorkloadSignals):
        why = [r.getMessage() for r in caplog.records if "eBPF unavailable" in r.getMessage()]
        pytest.skip(f"bpftrace cannot attach here: {why}")
    try:
        assert RUNTIMES[rt][1] in workload.source.library
        assert "Synchronize" in " ".join(workload.source.probed[vendor]) or "Sync" in " ".join(
            workload.source.probed[vendor])
        with _running(rt, {}), HealthMonitor(inv, workload=workload) as mon:
            graded = _until_graded(mon, f"{vendor}-{SLOW}", 13.0)
    finally:
        workload.source.stop()
    _check(graded, f"{vendor}-{SLOW}", keys, "eBPF uprobes")


def test_interceptor_timing_of_the_runtime_finds_the_straggler(node: tuple[str, Path, Path], tmp_path: Path) -> None:
    rt, _, compute = node
    vendor = RUNTIMES[rt][0]
    inv = discover()
    keys = [d.key for d in inv.devices]
    devices = tmp_path / "devices"  # the agent's device list: "<index> <uuid>", the runtime's ordinals
    devices.write_text("".join(f"{i} {d.uuid}\n" for i, d in enumerate(inv.devices)))
    workload = start_workload_signals([(d.key, d.model) for d in inv.devices],
                                      uuids={d.key: d.uuid for d in inv.devices},
                                      compute_dir=str(compute), probes="interceptor")
    assert isinstance(workload, TimingFileSignals) and len(workload.source.files) == 8
    env = {"HCS_COMPUTE_DIR": str(compute), "HCS_SYNC_DEVICES": str(devices), "LD_PRELOAD": str(INTERCEPTOR)}
    with _running(rt, env), HealthMonitor(inv, workload=workload) as mon:
        graded = _until_graded(mon, f"{vendor}-{SLOW}", 13.0)
    _check(graded, f"{vendor}-{SLOW}", keys, "the interceptor's timing")
    rings = sorted(p.name for p in compute.glob("hcs-sync-*.ring"))
    assert rings == sorted(str(ring_name(d.uuid)) for d in inv.devices)


def test_ebpf_unavailable_falls_back_to_the_interceptor_for_the_runtime(node: tuple[str, Path, Path],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """HCS_WORKLOAD_PROBES=ebpf without bpftrace on an Ascend / Hygon / Cambricon node: one warning with
    the reason, and the interceptor's timing of the runtime's devices."""
    _, _, compute = node
    inv = discover()
    caplog.set_level(logging.INFO, logger="hcs.devices.workload")
    workload = start_workload_signals([(d.key, d.model) for d in inv.devices],
                                      uuids={d.key: d.uuid for d in inv.devices}, compute_dir=str(compute),
                                      probes="ebpf", bpftrace=str(compute / "no-bpftrace"))
    assert isinstance(workload, TimingFileSignals)
    assert sorted(workload.source.files) == sorted(d.key for d in inv.devices)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "eBPF unavailable" in warnings[0] and "falling back" in warnings[0], warnings


@pytest.fixture
def simdrv(node: tuple[str, Path, Path], tmp_path: Path) -> Iterator[Path]:
    """The simulated driver's device nodes, mounted (FUSE) for the node's profile and fault file."""
    if not SIMDRV.exists():
        pytest.skip("driver/build/bin/hcs-simdrv not built (needs libfuse3-dev: make ebpf-tools, then make dev)")
    mnt = tmp_path / "dev"
    mnt.mkdir()
    drv = subprocess.Popen([str(SIMDRV), str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert drv.stdout is not None
    line = drv.stdout.readline()
    if not line.startswith("ready"):
        drv.kill()
        pytest.skip(f"cannot mount the simulated driver's nodes (FUSE): {drv.communicate()[1].strip()[-300:]}")
    try:
        yield mnt
    finally:
        stop_simdrv(drv, mnt)


def test_ebpf_ioctl_tracepoints_time_the_driver_path_and_find_the_straggler(
        node: tuple[str, Path, Path], simdrv: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The workload's synchronise waits in an ioctl on its device's node; the ioctl tracepoints alone
    (their own detector) find the slow device, and the grade's reason names the driver ioctl path."""
    rt, _, compute = node
    vendor = RUNTIMES[rt][0]
    monkeypatch.setenv("HCS_SIM_DEVICE_NODES", str(simdrv))  # the agent side: which fds are device nodes
    inv = discover()
    keys = [d.key for d in inv.devices]
    caplog.set_level(logging.INFO, logger="hcs.devices.workload")
    workload = start_workload_signals([(d.key, d.model) for d in inv.devices], compute_dir=str(compute),
                                      probes="ebpf")
    if not isinstance(workload, WorkloadSignals):
        pytest.skip(f"bpftrace cannot attach here: {[r.getMessage() for r in caplog.records]}")
    slow = f"{vendor}-{SLOW}"
    try:
        if workload.source.ioctl_note:
            pytest.skip(f"no syscall tracepoints: {workload.source.ioctl_note}")
        with _running(rt, {"HCS_SIM_DEVICE_NODES": str(simdrv)}), HealthMonitor(inv, workload=workload) as mon:
            graded = _until_graded(mon, slow, 13.0)
            ioctl_verdicts = workload.ioctl_detector.verdicts()
            ioctl_means = workload.ioctl_detector.means(time.monotonic())
    finally:
        workload.source.stop()
    assert graded is not None, "the slow device was not detected"
    assert list(ioctl_verdicts) == [slow], ioctl_verdicts
    assert sorted(ioctl_means) == sorted(keys)  # every device's node was timed
    assert ioctl_means[slow] > 1.3 * max(v for k, v in ioctl_means.items() if k != slow)
    assert any("driver ioctl latency" in r for r in graded[slow].reasons), graded[slow]  # type: ignore[attr-defined]
    assert {k: graded[k].grade for k in keys if k != slow} == {  # type: ignore[attr-defined]
        k: Grade.HEALTHY for k in keys if k != slow}


def test_device_node_key_attributes_only_device_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = tmp_path / "dev"
    nodes.mkdir()
    for name in ("ascend-2", "ascend-9", "hygon-x"):
        (nodes / name).write_text("")
    monkeypatch.setenv("HCS_SIM_DEVICE_NODES", str(nodes))
    devices = {"ascend": [f"ascend-{i}" for i in range(8)]}
    fds = {name: os.open(nodes / name, os.O_RDONLY) for name in ("ascend-2", "ascend-9", "hygon-x")}
    other = os.open(tmp_path, os.O_RDONLY)
    try:
        pid = os.getpid()
        assert device_node_key(pid, fds["ascend-2"], devices) == "ascend-2"
        assert device_node_key(pid, fds["ascend-9"], devices) is None  # no such device
        assert device_node_key(pid, fds["hygon-x"], devices) is None
        assert device_node_key(pid, other, devices) is None  # not a device node
        assert device_node_key(pid, 999999, devices) is None  # no such fd
        assert device_node_key(2**22 + 7, 0, devices) is None  # no such process
    finally:
        for fd in [*fds.values(), other]:
            os.close(fd)


def test_without_a_device_list_nothing_is_recorded_and_the_workload_runs(node: tuple[str, Path, Path]) -> None:
    """No device list (HCS_SYNC_DEVICES unset in development): the ring cannot be named, so nothing is
    written; every synchronise still succeeds."""
    rt, _, compute = node
    proc = _workload(rt, 1.5, {"HCS_COMPUTE_DIR": str(compute), "LD_PRELOAD": str(INTERCEPTOR),
                               "HCS_INTERCEPTOR_LOG": "2"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    calls = [int(c) for c in out.split()]
    assert len(calls) == 8 and all(c > 0 for c in calls), out
    assert list(compute.iterdir()) == []
    assert "not in the device list" in err


@pytest.mark.parametrize(("uuid", "expected"), [
    ("GPU-d0db5c96-6f0f-055e-aee1-0cbb81d09798", "d0db5c966f0f055eaee10cbb81d09798"),
    ("F6D19118-C02FBE68-2257A531-98743CF5-6885651F", "f6d19118c02fbe682257a53198743cf56885651f"),
    ("0xb7c15d1cc3b6136b", "b7c15d1cc3b6136b"),
    ("MLU-5c4d951a-7842-d1e8-3bc5-8c382cec7865", "5c4d951a7842d1e83bc58c382cec7865"),
    ("not-a-uuid", None), ("0x12", None), ("../../etc/passwd", None), ("a" * 65, None), ("", None),
])
def test_ring_id_of_each_vendors_uuid(uuid: str, expected: str | None) -> None:
    assert ring_id(uuid) == expected


def test_interceptor_names_rings_as_the_agent_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C side (synctime.c hcs_synctime_id) and ring_name agree on a UUID in each vendor's format,
    including odd case and spacing in the device list."""
    prof = tmp_path / "ascend.json"
    shutil.copy(ROOT / "driver" / "profiles" / "ascend-910b-hccs-8.json", prof)
    monkeypatch.setenv("HCS_SIM_PROFILE", str(prof))
    monkeypatch.setenv("HCS_SIM_FAULTS", str(tmp_path / "none"))
    compute = tmp_path / "compute"
    compute.mkdir()
    odd = ["GPU-D0DB5C96-6f0f-055e-aee1-0cbb81d09798", "0xB7C15D1CC3B6136B", "MLU-5c4d951a-7842-d1e8-3bc5-8c382cec7865",
           "F6D19118-C02FBE68-2257A531-98743CF5-6885651F", "garbage!", "0x1"]
    devices = tmp_path / "devices"
    devices.write_text("# comment\n" + "".join(f"{i}\t {u} \r\n" for i, u in enumerate(odd)))
    proc = _workload("acl", 0.5, {"HCS_COMPUTE_DIR": str(compute), "HCS_SYNC_DEVICES": str(devices),
                                  "LD_PRELOAD": str(INTERCEPTOR)})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(p.name for p in compute.iterdir()) == sorted(str(ring_name(u)) for u in odd[:4])


def test_ordinal_map_per_vendor_visible_devices(tmp_path: Path) -> None:
    keys = [f"ascend-{i}" for i in range(8)]
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "environ").write_bytes(b"PATH=/bin\0ASCEND_RT_VISIBLE_DEVICES=6,2\0CUDA_VISIBLE_DEVICES=1\0")
    m = ordinal_map(42, keys, proc=tmp_path, vendor="ascend")
    assert (m(0), m(1), m(2)) == ("ascend-6", "ascend-2", None)
    assert ordinal_map(42, [f"hygon-{i}" for i in range(8)], proc=tmp_path, vendor="hygon")(3) == "hygon-3"
    assert ordinal_map(42, [f"nvidia-{i}" for i in range(8)], proc=tmp_path)(0) == "nvidia-1"
    assert ordinal_map(43, keys, proc=tmp_path, vendor="ascend")(7) == "ascend-7"  # no such process


def test_bpftrace_script_covers_each_runtime() -> None:
    libs = {v: str(LIB / lib) for v, lib, _ in RUNTIMES.values()}
    funcs = {"ascend": ("aclrtSynchronizeStream",), "hygon": ("hipDeviceSynchronize",), "cambricon": ("cnrtQueueSync",)}
    script = bpftrace_script(libs, funcs, ioctl=True)
    for v, fn in (("ascend", "aclrtSetDevice"), ("hygon", "hipSetDevice"), ("cambricon", "cnrtSetDevice")):
        assert f"uprobe:{libs[v]}:{fn} " in script
        assert f"uretprobe:{libs[v]}:{funcs[v][0]} " in script
    assert "tracepoint:syscalls:sys_enter_ioctl /@proc[pid]/" in script
    assert "sys_exit_ioctl" not in bpftrace_script(libs, funcs)


def test_ebpf_source_without_bpftrace_names_every_library(tmp_path: Path) -> None:
    libs = {v: str(LIB / lib) for v, lib, _ in RUNTIMES.values()}
    src = EbpfLatencySource(libs, bpftrace=str(tmp_path / "no-bpftrace"))
    assert src.start(ready_timeout_s=5) is False
    assert "bpftrace" in src.reason and not src.available
