"""The simulated device seen through two runtime libraries of one process (issue 19).

Each fake runtime links its own copy of the device model (driver/runtime/sim_device.c). A process
that launches through CNRT and through CNDrv (or ACL and the aclnn libraries) has one context on the
device, as on real hardware; the second library must find it, not reset it as if the pid had been
recycled by a dead process's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from drv_sim import run_child  # noqa: E402

CODE = r"""
import ctypes
libdir = os.environ["LIBDIR"]
cnrt = ctypes.CDLL(libdir + "/libcnrt.so", mode=ctypes.RTLD_GLOBAL)
cndrv = ctypes.CDLL(libdir + "/libcndrv.so", mode=ctypes.RTLD_GLOBAL)
flops = ctypes.c_ulonglong(96 * 10**9)  # 1 ms on the 96-TFLOPS device
params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(flops), ctypes.c_void_p))
class Dim(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]
assert cnrt.cnrtSetDevice(0) == 0
q = ctypes.c_void_p()
assert cnrt.cnrtQueueCreate(ctypes.byref(q)) == 0
assert cnrt.cnrtInvokeKernel(ctypes.c_void_p(1), Dim(1, 1, 1), 1, params, ctypes.c_size_t(0), q) == 0
assert cnrt.cnrtQueueSync(q) == 0
dev, ctx, dq = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
assert cndrv.cnInit(0) == 0 and cndrv.cnDeviceGet(ctypes.byref(dev), 0) == 0
assert cndrv.cnCtxCreate(ctypes.byref(ctx), 0, dev) == 0 and cndrv.cnCreateQueue(ctypes.byref(dq), 0) == 0
assert cndrv.cnInvokeKernel(ctypes.c_void_p(1), 1, 1, 1, 1, 0, dq, params, None) == 0
assert cndrv.cnQueueSync(dq) == 0
done, pending = ctypes.c_uint64(), ctypes.c_uint64()
assert cnrt.hcs_sim_cnrt_device_time(0, ctypes.byref(done), ctypes.byref(pending)) == 0
d2, p2 = ctypes.c_uint64(), ctypes.c_uint64()
assert cndrv.hcs_sim_cndrv_device_time(0, ctypes.byref(d2), ctypes.byref(p2)) == 0
print(json.dumps({"cnrt_done": done.value, "cndrv_done": d2.value, "pending": pending.value + p2.value}))
"""


def test_cnrt_and_cndrv_in_one_process_share_one_context(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"name": "layers", "devices": [
        {"vendor": "cambricon", "model": "MLU370-X8", "uuid": "mlu-layers-0", "pci_bus_id": "0000:10:00.0",
         "memory_mib": 4096, "numa_node": 0, "tflops_fp16": 96, "timeslice_us": 2000}]}))
    out = run_child(CODE, profile, env={"HCS_SIM_DEVICE_DIR": str(tmp_path)})
    # both kernels (1 ms each) in the one context, whichever library is asked
    assert out["cnrt_done"] == out["cndrv_done"] == 2_000_000, out
    assert out["pending"] == 0, out
