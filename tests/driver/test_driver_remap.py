"""The simulated CUDA runtime re-maps its devices when the process is restored onto another device.

A process restored from a checkpoint (docs/checkpoint.md) keeps its memory and environment, but runs on
another node/device: its new container's files say which. With HCS_SIM_VISIBLE_DEVICES_FILE the simulated
libcuda reads the visible devices from that file, and the calls that name devices (cuDeviceGet,
cuDeviceGetCount, cuDeviceGetUuid, cuMemGetInfo) read it again: when it names other devices, the ordinals
the application holds now lead to them (new node profile re-read), and the memory the process holds is
charged to the device it moved to - freed there, never on the old one.

Each case runs in a child process (the runtime loads its profile once per process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from drv_sim import LIB

MIB = 1 << 20


def profile(name: str, uuids: list[str], mib: int) -> dict[str, object]:
    return {"name": name, "driver_version": "550.54.15", "devices": [
        {"vendor": "nvidia", "model": f"NVIDIA {name}", "uuid": u, "pci_bus_id": f"0000:{i + 1:02x}:00.0",
         "memory_mib": mib, "numa_node": 0} for i, u in enumerate(uuids)]}


A = [f"GPU-aaaaaaaa-0000-0000-0000-00000000000{i}" for i in range(2)]
B = [f"GPU-bbbbbbbb-0000-0000-0000-00000000000{i}" for i in range(3)]

CHILD = r'''
import ctypes, json, sys
from pathlib import Path
cu = ctypes.CDLL(sys.argv[1])
prof, vis, new_prof, new_vis = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]
MIB = 1 << 20
def ok(rc, what):
    if rc != 0:
        print(json.dumps({"error": what, "rc": rc})); sys.exit(1)
def state():
    n = ctypes.c_int(); ok(cu.cuDeviceGetCount(ctypes.byref(n)), "count")
    d = ctypes.c_int(); ok(cu.cuDeviceGet(ctypes.byref(d), 0), "get")
    u = (ctypes.c_ubyte * 16)(); ok(cu.cuDeviceGetUuid(u, d), "uuid")
    f, t = ctypes.c_size_t(), ctypes.c_size_t(); ok(cu.cuMemGetInfo_v2(ctypes.byref(f), ctypes.byref(t)), "info")
    return {"count": n.value, "uuid": bytes(u).hex(), "free": f.value // MIB, "total": t.value // MIB}
ok(cu.cuInit(0), "init")
d = ctypes.c_int(); ok(cu.cuDeviceGet(ctypes.byref(d), 0), "get")
ctx = ctypes.c_void_p(); ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), d), "retain")
ok(cu.cuCtxSetCurrent(ctx), "set")
p = ctypes.c_uint64(); ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(32 * MIB)), "alloc")
ctypes.memset(p.value, 0x5a, 32 * MIB)  # simulated device memory is host memory: the state to keep
out = {"before": state()}
# the restore: the same paths now hold the new node's profile and the new assignment
prof.write_text(new_prof); vis.write_text(new_vis)
out["after"] = state()
out["intact"] = ctypes.string_at(p.value, 32 * MIB) == b"\x5a" * (32 * MIB)
q = ctypes.c_uint64()
out["over"] = cu.cuMemAlloc_v2(ctypes.byref(q), ctypes.c_size_t((out["after"]["free"] + 1) * MIB))
ok(cu.cuMemFree_v2(p), "free")
out["freed"] = state()
print(json.dumps(out))
'''


def run(tmp_path: Path, first: dict[str, object], vis: str, second: dict[str, object], new_vis: str,
        env_extra: dict[str, str] | None = None) -> dict[str, object]:
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps(first))
    visf = tmp_path / "uuid"
    visf.write_text(vis)
    env = {"HCS_SIM_PROFILE": str(prof), "HCS_SIM_VISIBLE_DEVICES_FILE": str(visf), **(env_extra or {})}
    r = subprocess.run([sys.executable, "-c", CHILD, str(LIB / "libcuda.so.1"), str(prof), str(visf),
                        json.dumps(second), new_vis], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def hexu(u: str) -> str:
    return u.removeprefix("GPU-").replace("-", "")


def test_restored_process_runs_on_the_new_device_with_its_memory_charged_there(tmp_path: Path) -> None:
    out = run(tmp_path, profile("A", A, 1024), A[1], profile("B", B, 2048), B[2])
    assert out["before"] == {"count": 1, "uuid": hexu(A[1]), "free": 1024 - 32, "total": 1024}
    # ordinal 0 is now B[2] (another node's card: its capacity), and the 32 MiB the process holds moved there
    assert out["after"] == {"count": 1, "uuid": hexu(B[2]), "free": 2048 - 32, "total": 2048}
    assert out["intact"] is True
    assert out["over"] == 2  # CUDA_ERROR_OUT_OF_MEMORY: the new card's capacity is enforced
    assert out["freed"] == {"count": 1, "uuid": hexu(B[2]), "free": 2048, "total": 2048}  # freed on B[2]


def test_unknown_device_in_the_file_keeps_the_old_mapping(tmp_path: Path) -> None:
    out = run(tmp_path, profile("A", A, 1024), A[0], profile("B", B, 2048), "GPU-not-on-this-node")
    assert out["after"] == out["before"] == {"count": 1, "uuid": hexu(A[0]), "free": 1024 - 32, "total": 1024}
    assert out["freed"]["free"] == 1024  # type: ignore[index]


def test_without_the_file_cuda_visible_devices_still_rules(tmp_path: Path) -> None:
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps(profile("A", A, 1024)))
    code = ("import ctypes,sys; cu=ctypes.CDLL(sys.argv[1]); cu.cuInit(0); n=ctypes.c_int(); "
            "cu.cuDeviceGetCount(ctypes.byref(n)); print(n.value)")
    r = subprocess.run([sys.executable, "-c", code, str(LIB / "libcuda.so.1")], capture_output=True, text=True,
                       env={"HCS_SIM_PROFILE": str(prof), "CUDA_VISIBLE_DEVICES": A[1],
                            "HCS_SIM_VISIBLE_DEVICES_FILE": str(tmp_path / "missing")}, timeout=60)
    assert r.stdout.strip() == "1", r.stderr
