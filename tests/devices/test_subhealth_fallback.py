"""Workload-side sub-health without eBPF: the interceptor's own synchronise timing (the fallback).

Real parts: the simulated libcuda.so.1 with the fault file's ``sync_us``/``slow`` scenario, the real
libhcs_interceptor.so through LD_PRELOAD writing its per-device rings into a compute dir, and the
agent's HealthMonitor reading them (hcs.devices.workload)."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hcs.devices.health import HealthMonitor
from hcs.devices.inventory import discover
from hcs.devices.subhealth import Grade, Grader, Signals
from hcs.devices.workload import (
    RING_ENTRY,
    RING_HEADER,
    RING_MAGIC,
    RING_SIZE,
    RING_SLOTS,
    InterceptorTimingSource,
    TimingFileSignals,
    parse_ring,
    ring_name,
    ring_slot,
    start_workload_signals,
)

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "driver" / "profiles" / "a100-80g-nvlink-8.json"
LIB = ROOT / "driver" / "build" / "lib"
INTERCEPTOR = ROOT / "interceptor" / "build" / "libhcs_interceptor.so"

pytestmark = pytest.mark.skipif(not (LIB / "libcuda.so.1").exists() or not INTERCEPTOR.exists(),
                                reason="simulated drivers / interceptor not built (make dev)")

WORKLOAD = r"""
import ctypes, sys, threading, time
lib = ctypes.CDLL(sys.argv[1])
lib.cuInit(0)
stop = time.monotonic() + float(sys.argv[2])
def run(i):
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    lib.cuDeviceGet(ctypes.byref(dev), i)
    lib.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)
    while time.monotonic() < stop:
        lib.cuCtxSynchronize()
ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
"""


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    prof = tmp_path / PROFILE.name
    shutil.copy(PROFILE, prof)
    faults = tmp_path / "node.faults"
    faults.write_text("")
    monkeypatch.setenv("HCS_SIM_PROFILE", str(prof))
    monkeypatch.setenv("HCS_SIM_FAULTS", str(faults))
    monkeypatch.delenv("HCS_SIM_CLOCK", raising=False)
    monkeypatch.delenv("HCS_WORKLOAD_PROBES", raising=False)
    compute = tmp_path / "compute"
    compute.mkdir()
    return faults, compute


def _workload(faults: Path, compute: Path, seconds: float) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD"))}
    env.update(HCS_SIM_PROFILE=os.environ["HCS_SIM_PROFILE"], HCS_SIM_FAULTS=str(faults),
               HCS_COMPUTE_DIR=str(compute), LD_PRELOAD=str(INTERCEPTOR))
    return subprocess.Popen([sys.executable, "-c", WORKLOAD, str(LIB / "libcuda.so.1"), str(seconds)], env=env)


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hcs.devices.workload" and r.levelno == level]


def test_ebpf_unavailable_says_so_once_and_the_fallback_finds_the_straggler(
        node: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    faults, compute = node
    # every device: a 3 ms synchronise (a small training step); nvidia-5 40 % slower
    faults.write_text("".join(f"nvidia {i} sync_us 3000\n" for i in range(8)) + "nvidia 5 slow 40\n")
    inv = discover()
    caplog.set_level(logging.INFO, logger="hcs.devices.workload")
    workload = start_workload_signals([(d.key, d.model) for d in inv.devices],
                                      uuids={d.key: d.uuid for d in inv.devices}, compute_dir=str(compute),
                                      probes="ebpf", bpftrace=str(compute / "no-bpftrace"))
    assert isinstance(workload, TimingFileSignals) and workload.mode == "interceptor"
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "eBPF unavailable" in warnings[0] and "falling back" in warnings[0], warnings
    proc = _workload(faults, compute, 12.0)
    try:
        with HealthMonitor(inv, workload=workload) as mon:
            deadline = time.monotonic() + 11.0
            graded = None
            while time.monotonic() < deadline and graded is None:
                time.sleep(0.5)
                mon.poll()
                v = mon.verdicts()
                if v["nvidia-5"].grade == Grade.DEGRADED:
                    graded = v
    finally:
        proc.kill()
        proc.wait()
    assert graded is not None, "the slow device was not detected through the interceptor's timing"
    assert any("straggler: synchronise latency" in r for r in graded["nvidia-5"].reasons)
    assert {k: v.grade for k, v in graded.items() if k != "nvidia-5"} == {
        f"nvidia-{i}": Grade.HEALTHY for i in range(8) if i != 5}
    assert len(list(compute.glob("hcs-sync-*.ring"))) == 8
    assert _records(caplog, logging.WARNING) == warnings  # said once, not per poll


def test_mode_selection(node: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, compute = node
    devs = [(f"nvidia-{i}", "a100-80g") for i in range(4)]
    uuids = {k: f"GPU-{i:08x}-0000-0000-0000-000000000000" for i, (k, _) in enumerate(devs)}
    caplog.set_level(logging.INFO, logger="hcs.devices.workload")
    w = start_workload_signals(devs, uuids=uuids, compute_dir=str(compute))  # default: the interceptor's timing
    assert isinstance(w, TimingFileSignals)
    assert [m for m in _records(caplog, logging.INFO) if "interceptor's synchronise timing" in m]
    assert _records(caplog, logging.WARNING) == []
    monkeypatch.setenv("HCS_WORKLOAD_PROBES", "off")
    assert start_workload_signals(devs, uuids=uuids, compute_dir=str(compute)) is None
    # no compute dir: no signal, said once
    caplog.clear()
    assert start_workload_signals(devs, uuids=uuids, compute_dir="", probes="interceptor") is None
    assert len(_records(caplog, logging.WARNING)) == 1
    assert start_workload_signals([("hygon-0", "k100")], uuids={}, compute_dir=str(compute)) is None


def _ring(entries: list[tuple[int, int, int]], pid: int = 4242) -> bytearray:
    """A ring in the interceptor's layout (interceptor/src/synctime.h): (n, end_ns, latency_ns) of
    process ``pid``'s n-th sample, each in its slot."""
    data = bytearray(RING_SIZE)
    struct.pack_into("<IIIIQ", data, 0, RING_MAGIC, 1, RING_SLOTS, RING_ENTRY, 0)
    for n, end, lat in entries:
        seq = pid << 32 | n
        struct.pack_into("<QQQ", data, RING_HEADER + ring_slot(seq) * RING_ENTRY, seq, end, lat)
    return data


UUID = "GPU-d0db5c96-6f0f-055e-aee1-0cbb81d09798"


@pytest.mark.parametrize("garbage", ["random", "short", "oversized", "header", "misplaced", "latency", "fifo",
                                     "symlink"])
def test_garbage_in_the_timing_file_is_ignored_with_one_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: str) -> None:
    """A tenant writes garbage into a device's ring (the dir is writable from every container): no
    sample, no crash, no hang, one warning however many polls."""
    name = ring_name(UUID)
    assert name is not None
    path = tmp_path / name
    now = time.monotonic_ns()
    good = _ring([(i, now, 2_000_000) for i in range(1, 41)])
    if garbage == "random":
        path.write_bytes(os.urandom(RING_SIZE))
    elif garbage == "short":
        path.write_bytes(bytes(good[:100]))
    elif garbage == "oversized":
        path.write_bytes(bytes(good) + b"\0" * (1 << 20))
    elif garbage == "header":
        bad = bytearray(good)
        struct.pack_into("<I", bad, 8, 1 << 30)  # slots
        path.write_bytes(bytes(bad))
    elif garbage == "misplaced":
        bad = bytearray(good)
        seq = 4242 << 32 | 7
        struct.pack_into("<QQQ", bad, RING_HEADER + (ring_slot(seq) + 1) % RING_SLOTS * RING_ENTRY, seq, now, 1)
        path.write_bytes(bytes(bad))
    elif garbage == "latency":
        path.write_bytes(bytes(_ring([(1, now, 0), (2, now, 1 << 62)])))
    elif garbage == "fifo":
        os.mkfifo(path)
    else:
        (tmp_path / "elsewhere").write_bytes(bytes(good))
        path.symlink_to(tmp_path / "elsewhere")
    caplog.set_level(logging.INFO, logger="hcs.devices.workload")
    src = InterceptorTimingSource(tmp_path, {"nvidia-0": UUID, "nvidia-1": "not-a-uuid"})
    assert list(src.files) == ["nvidia-0"]
    for _ in range(5):
        assert src.samples() == []
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "ignored" in warnings[0] and name in warnings[0], warnings
    # the interceptor (or anyone) writes a valid ring again: samples flow, "valid again" once
    if garbage in ("fifo", "symlink"):
        path.unlink()
    path.write_bytes(bytes(_ring([(i, time.monotonic_ns(), 2_000_000 + i) for i in range(1, 41)])))
    got = src.samples()
    assert [(k, n, m) for _, k, n, m in got] == [("nvidia-0", 40, 2_000_001.0)]
    assert src.samples() == []  # nothing new
    assert len(_records(caplog, logging.WARNING)) == 1


def test_stale_and_future_entries_are_not_samples(tmp_path: Path) -> None:
    name = ring_name(UUID)
    assert name is not None
    now = time.monotonic_ns()
    (tmp_path / name).write_bytes(bytes(_ring([(1, now - 60 * 10**9, 1000), (2, now + 3600 * 10**9, 1000)])))
    assert InterceptorTimingSource(tmp_path, {"nvidia-0": UUID}).samples() == []


def test_a_forged_ring_can_only_make_a_device_degraded(tmp_path: Path) -> None:
    """The attack: a container forges its device's ring to look 100x slower than its peers. The
    straggler signal grades it degraded (NoSchedule for new pods) and never failing, however long."""
    uuids = {f"nvidia-{i}": f"GPU-{i:08x}-1111-2222-3333-444455556666" for i in range(8)}
    signals = TimingFileSignals(InterceptorTimingSource(tmp_path, uuids), {k: "a100-80g" for k in uuids})
    grader = Grader()
    seq = 0
    worst = Grade.HEALTHY
    for step in range(12):
        seq += 50
        for k, u in uuids.items():
            name = ring_name(u)
            assert name is not None
            lat = 200_000_000 if k == "nvidia-3" else 2_000_000
            ring = _ring([(s, time.monotonic_ns(), lat) for s in range(seq - 49, seq + 1)])
            (tmp_path / name).write_bytes(bytes(ring))
        verdicts = signals()
        for k in uuids:
            v = grader.observe(k, float(step), Signals(straggler=verdicts.get(k, "")))
            if k == "nvidia-3":
                worst = max(worst, v.grade)
            else:
                assert v.grade == Grade.HEALTHY
        time.sleep(0.05)
    assert worst == Grade.DEGRADED


COUNTING = r"""
import ctypes, os, sys, threading
lib = ctypes.CDLL(sys.argv[1])
lib.cuInit(0)
n = [0] * 4
def run(i):
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    lib.cuDeviceGet(ctypes.byref(dev), 0)
    lib.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)
    for _ in range(int(sys.argv[2])):
        n[i] += lib.cuStreamSynchronize(None) == 0
ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
print(os.getpid(), sum(n))
"""


def test_concurrent_writers_share_one_ring_without_tearing(node: tuple[Path, Path]) -> None:
    """Two processes x 4 threads synchronising on one device: every slot the reader sees holds a
    valid sample of one of them, in the slot its sequence names (no torn or misplaced entry)."""
    faults, compute = node
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD"))}
    env.update(HCS_SIM_PROFILE=os.environ["HCS_SIM_PROFILE"], HCS_SIM_FAULTS=str(faults),
               HCS_COMPUTE_DIR=str(compute), LD_PRELOAD=str(INTERCEPTOR))
    procs = [subprocess.Popen([sys.executable, "-c", COUNTING, str(LIB / "libcuda.so.1"), "3000"], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [int(c) for _, c in results] == [4 * 3000, 4 * 3000]
    rings = list(compute.glob("hcs-sync-*.ring"))
    assert len(rings) == 1
    data = rings[0].read_bytes()
    assert len(parse_ring(data, None, 0, 2**63)) == RING_SLOTS  # every slot: a valid sample (or BadRing)
    writers = {struct.unpack_from("<Q", data, RING_HEADER + j * RING_ENTRY)[0] >> 32 for j in range(RING_SLOTS)}
    assert writers <= {int(pid) for pid, _ in results} and writers


def test_a_tenant_truncating_the_ring_cannot_crash_another_process(node: tuple[Path, Path]) -> None:
    """The attack: another container truncates / replaces the shared ring while a process synchronises
    (a mapped ring would take SIGBUS). The process finishes every synchronise and exits cleanly."""
    faults, compute = node
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD"))}
    env.update(HCS_SIM_PROFILE=os.environ["HCS_SIM_PROFILE"], HCS_SIM_FAULTS=str(faults),
               HCS_COMPUTE_DIR=str(compute), LD_PRELOAD=str(INTERCEPTOR))
    proc = subprocess.Popen([sys.executable, "-c", COUNTING, str(LIB / "libcuda.so.1"), "20000"], env=env,
                            stdout=subprocess.PIPE, text=True)
    attacks = 0
    while proc.poll() is None:
        for ring in compute.glob("hcs-sync-*.ring"):
            os.truncate(ring, 0)
            attacks += 1
        time.sleep(0.002)
    out = proc.communicate(timeout=60)[0].split()
    assert proc.returncode == 0 and int(out[1]) == 4 * 20000
    assert attacks > 0
