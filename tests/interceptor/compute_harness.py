"""Helpers for the compute-limit tests: a simulated node whose devices execute work, workload
processes (interceptor/build/tests/t_compute) under the real interceptor, and the simulated
device's own accounting of the device time each process received (read through the runtime
library, hcs_sim_<runtime>_accounting). No mocks: every number comes from the device model."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "interceptor" / "build"
DRIVER_LIB = REPO / "driver" / "build" / "lib"
WORKLOAD = BUILD / "tests" / "t_compute"
RUNTIMES = ("cuda", "acl", "hip", "cnrt")
LIBS = {"cuda": "libcuda.so.1", "acl": "libascendcl.so", "hip": "libamdhip64.so", "cnrt": "libcnrt.so"}
TFLOPS = {"cuda": 989, "acl": 320, "hip": 192, "cnrt": 96}
KERNEL_MS = 0.5
#: launch paths beyond each runtime's kernel launches (t_compute modes) -> the device they run on
EXTRA_PATHS = {"acl-op": "acl", "aclnn": "acl", "cndrv": "cnrt"}


def _prio() -> None:
    """Launch threads get the priority an application has on its node (else a loaded CI machine
    starves them and idles the device); best effort."""
    with contextlib.suppress(OSError):
        os.nice(-10)


def profile_doc(tag: str) -> dict[str, object]:
    """One device per vendor; the UUIDs carry ``tag`` so each test has its own device."""
    vendors = (("nvidia", "NVIDIA H100 80GB HBM3", f"GPU-c0de0000-0000-4000-8000-{tag:0>12}"),
               ("ascend", "Ascend910B", f"npu-{tag}"), ("hygon", "K100_AI", f"dcu-{tag}"),
               ("cambricon", "MLU370-X8", f"mlu-{tag}"))
    rts = ("cuda", "acl", "hip", "cnrt")
    return {"name": "compute-test", "devices": [
        {"vendor": v, "model": m, "uuid": u, "pci_bus_id": f"0000:{0x10 + i:02x}:00.0", "memory_mib": 4096,
         "numa_node": 0, "tflops_fp16": TFLOPS[rts[i]], "timeslice_us": 2000}
        for i, (v, m, u) in enumerate(vendors)]}


class _Acct(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_int32), ("pad", ctypes.c_int32), ("done_ns", ctypes.c_uint64),
                ("pending_ns", ctypes.c_uint64), ("launches", ctypes.c_uint64)]


@dataclass
class SimNode:
    """A node profile + device/ledger directories private to one test."""

    root: Path
    tag: str

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.profile = self.root / "profile.json"
        self.profile.write_text(json.dumps(profile_doc(self.tag)))
        self.devdir = self.root / "devices"
        self.devdir.mkdir(exist_ok=True)
        self.ledger = self.root / "compute"
        self.ledger.mkdir(exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD"))}
        env.update(HCS_SIM_PROFILE=str(self.profile), HCS_SIM_DEVICE_DIR=str(self.devdir),
                   HCS_COMPUTE_DIR=str(self.ledger), HCS_SHM_DIR=str(self.root), HCS_INTERCEPTOR_LOG="1")
        env.update(extra)
        return env

    def workload(self, rt: str, seconds: float, *, preload: bool = True, kernel_ms: float = KERNEL_MS,
                 **extra: str) -> subprocess.Popen[str]:
        env = self.env(**extra)
        if preload:
            env["LD_PRELOAD"] = str(BUILD / "libhcs_interceptor.so")
        flops = int(TFLOPS[EXTRA_PATHS.get(rt, rt)] * 1e12 * kernel_ms / 1e3)
        return subprocess.Popen([str(WORKLOAD), rt, "0", f"{seconds:.3f}", str(flops), "32"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_prio)

    def accounting(self, rt: str) -> tuple[int, dict[int, int]]:
        """(device clock ns, {pid: device time received ns}) from the device model itself."""
        rt = EXTRA_PATHS.get(rt, rt)
        os.environ["HCS_SIM_PROFILE"] = str(self.profile)
        os.environ["HCS_SIM_DEVICE_DIR"] = str(self.devdir)
        lib = ctypes.CDLL(str(DRIVER_LIB / LIBS[rt]))
        fn = getattr(lib, f"hcs_sim_{rt}_accounting")
        buf = (_Acct * 64)()
        now, busy = ctypes.c_uint64(), ctypes.c_uint64()
        n = fn(0, buf, 64, ctypes.byref(now), ctypes.byref(busy))
        assert n >= 0, f"device accounting failed: {n}"
        return now.value, {buf[i].pid: buf[i].done_ns for i in range(n)}

    def shares(self, rt: str, procs: list[subprocess.Popen[str]], start: float, end: float,
               t0: float | None = None) -> list[float]:
        """Each process's share of the device between start and end seconds after t0 (default now)."""
        t0 = time.monotonic() if t0 is None else t0
        time.sleep(max(0.0, t0 + start - time.monotonic()))
        a = self.accounting(rt)
        time.sleep(max(0.0, t0 + end - time.monotonic()))
        b = self.accounting(rt)
        span = b[0] - a[0]
        return [(b[1].get(p.pid, 0) - a[1].get(p.pid, 0)) / span for p in procs]


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[dict[str, object], str]]:
    """Wait for the workloads; each one's JSON line and stderr (failing the test on a bad exit)."""
    out = []
    for p in procs:
        so, se = p.communicate(timeout=120)
        assert p.returncode == 0, f"workload failed ({p.returncode}): {so} {se}"
        out.append((json.loads(so.strip().splitlines()[-1]), se))
    return out
