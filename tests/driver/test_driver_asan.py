"""The AddressSanitizer/UBSan builds (driver/build/asan/): the C self-test, and a subset of the Python
checks with the sanitized libraries loaded into Python (LD_PRELOAD of the ASan runtime)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from drv_sim import ASAN, PROFILES, build, load_profile, run_child, vendor_devices
from test_driver_cndev import INVENTORY as CNDEV_INVENTORY
from test_driver_dcmi import INVENTORY as DCMI_INVENTORY
from test_driver_faults import CONCURRENT, PRELUDE
from test_driver_nvml import INVENTORY as NVML_INVENTORY
from test_driver_rocm_smi import INVENTORY as RSMI_INVENTORY


def _libasan() -> str | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    build("asan")


def test_c_selftest_under_asan_and_ubsan() -> None:
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    env.pop("HCS_SIM_PROFILE", None)
    proc = subprocess.run([str(ASAN / "sim_selftest"), str(ASAN), str(PROFILES)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failures" in proc.stdout
    assert "ERROR: AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr


def _asan_env() -> dict[str, str]:
    libasan = _libasan()
    if libasan is None:
        pytest.skip("no libasan.so next to the C compiler; the C self-test covers the sanitized build")
    return {"LD_PRELOAD": libasan, "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "halt_on_error=1"}


@pytest.mark.parametrize("profile, code, vendor", [
    ("a100-80g-nvlink-8", NVML_INVENTORY, "nvidia"),
    ("ascend-910b-hccs-8", DCMI_INVENTORY, "ascend"),
    ("hygon-k100ai-xgmi-8", RSMI_INVENTORY, "hygon"),
    ("mlu370-x8-mlulink-8", CNDEV_INVENTORY, "cambricon"),
])
def test_python_inventory_on_sanitized_libraries(profile: str, code: str, vendor: str) -> None:
    out = run_child(code, profile, env=_asan_env(), libdir=ASAN, timeout=120)
    assert out["count"] == len(vendor_devices(load_profile(profile), vendor))
    assert "AddressSanitizer" not in out["_stderr"] and "runtime error" not in out["_stderr"]


def test_xid_event_on_sanitized_nvml(tmp_path: Path) -> None:
    code = r"""
import threading
lib("nvidia")
import pynvml as n
n.nvmlInit()
s = n.nvmlEventSetCreate()
for i in range(n.nvmlDeviceGetCount()):
    n.nvmlDeviceRegisterEvents(n.nvmlDeviceGetHandleByIndex(i), 0xB, s)
def inject():
    with open(os.environ["HCS_SIM_FAULTS"], "a") as f:
        f.write("nvidia 1 xid 79\nnvidia 1 health critical\n")
threading.Timer(0.2, inject).start()
ev = n.nvmlEventSetWait(s, 20000)
try:
    n.nvmlDeviceGetMemoryInfo(n.nvmlDeviceGetHandleByIndex(1))
    lost = 0
except n.NVMLError as e:
    lost = e.value
n.nvmlEventSetFree(s)
print(json.dumps({"count": 0, "xid": ev.eventData, "lost": lost}))
"""
    env = {**_asan_env(), "HCS_SIM_FAULTS": str(tmp_path / "f.faults")}
    out = run_child(code, "t4-pcie-4", env=env, libdir=ASAN, timeout=120)
    assert (out["xid"], out["lost"]) == (79, 15)
    assert "AddressSanitizer" not in out["_stderr"]


def test_concurrency_on_sanitized_nvml(tmp_path: Path) -> None:
    env = {**_asan_env(), "HCS_SIM_FAULTS": str(tmp_path / "f.faults")}
    out = run_child(PRELUDE + CONCURRENT, "a100-80g-nvlink-8", env=env, libdir=ASAN, timeout=180)
    assert out["xids"] == list(range(1, 21)) and out["consistent"]
    assert "AddressSanitizer" not in out["_stderr"] and "runtime error" not in out["_stderr"]
