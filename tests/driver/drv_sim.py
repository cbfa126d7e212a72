"""Helpers for the simulated-driver tests: paths, the build, ctypes layouts, and child processes.

The simulated libraries cache the profile named by HCS_SIM_PROFILE, so every check that needs its own
profile (or its own fault file) runs in a child Python process: ``run_child(code, profile)`` runs
``code`` with this module importable and returns the JSON object the child printed last.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from ctypes import (
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_double,
    c_int,
    c_int32,
    c_int64,
    c_uint,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_ulong,
    c_ulonglong,
)
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "driver"
LIB = DRIVER / "build" / "lib"
ASAN = DRIVER / "build" / "asan"
PROFILES = DRIVER / "profiles"
HERE = Path(__file__).resolve().parent

SONAMES = {
    "nvidia": "libnvidia-ml.so.1",
    "ascend": "libdcmi.so",
    "hygon": "librocm_smi64.so.2",
    "cambricon": "libcndev.so",
}

SHIPPED = [
    "a100-80g-nvlink-8",
    "a100-40g-nvlink-2x4",
    "h100-nvlink-8",
    "t4-pcie-4",
    "ascend-910b-hccs-8",
    "hygon-k100ai-xgmi-8",
    "mlu370-x8-mlulink-8",
    "mixed-a100-910b",
    "hgx-a100-nvswitch-8",
    "hgx-h100-nvswitch-8",
    "hgx-h200-nvswitch-8",
    "h100-nvl-bridge-4",
    "a100-pcie-bridge-4",
    "atlas800-910a-8",
    "atlas800t-a2-910b-8",
    "mlu370-x8-bridge-2x4",
]


def build(target: str = "all") -> None:
    """``make -C driver <target>`` (a no-op when up to date); fails the caller with make's output."""
    proc = subprocess.run(["nice", "make", "-s", "-C", str(DRIVER), target], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"make -C driver {target} failed:\n{proc.stdout}\n{proc.stderr}")


def profile_path(name: str) -> Path:
    return PROFILES / f"{name}.json"


def load_profile(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(profile_path(name).read_text())
    return data


def vendor_devices(profile: dict[str, Any], vendor: str) -> list[dict[str, Any]]:
    return [d for d in profile["devices"] if d["vendor"] == vendor]


def run_child(code: str, profile: str | Path | None, env: dict[str, str] | None = None,
              timeout: float = 60, libdir: Path = LIB) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; return the JSON object it printed on its last stdout line.

    The child has ``drv_sim`` importable, ``LIBDIR`` set, and HCS_SIM_PROFILE pointing at ``profile``
    (a shipped profile name, or a path; None leaves it unset).
    """
    proc = run_child_raw(code, profile, env=env, timeout=timeout, libdir=libdir)
    if proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, f"child printed nothing; stderr:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["_stderr"] = proc.stderr
    return result


def run_child_raw(code: str, profile: str | Path | None, env: dict[str, str] | None = None,
                  timeout: float = 60, libdir: Path = LIB) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("HCS_SIM_")}
    child_env["PYTHONPATH"] = str(HERE)
    child_env["LIBDIR"] = str(libdir)
    if profile is not None:
        child_env["HCS_SIM_PROFILE"] = str(profile_path(profile) if isinstance(profile, str) else profile)
    child_env.update(env or {})
    prelude = "import json, os, sys\nfrom drv_sim import *\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          timeout=timeout, env=child_env)


def lib(vendor: str) -> ctypes.CDLL:
    """Load a simulated library (in a child) from $LIBDIR."""
    return ctypes.CDLL(str(Path(os.environ.get("LIBDIR", str(LIB))) / SONAMES[vendor]), mode=ctypes.RTLD_GLOBAL)


def cstr(buf: Any) -> str:
    return bytes(buf).split(b"\0", 1)[0].decode()


# ---- DCMI ----------------------------------------------------------------------------------------

class DcmiChipInfo(Structure):
    _fields_ = [("chip_type", c_char * 32), ("chip_name", c_char * 32), ("chip_ver", c_char * 32),
                ("aicore_cnt", c_uint)]


class DcmiChipInfoV2(Structure):
    _fields_ = [("chip_type", c_char * 32), ("chip_name", c_char * 32), ("chip_ver", c_char * 32),
                ("aicore_cnt", c_uint), ("npu_name", c_char * 32)]


class DcmiPcieInfoAll(Structure):
    _fields_ = [("venderid", c_uint), ("subvenderid", c_uint), ("deviceid", c_uint), ("subdeviceid", c_uint),
                ("domain", c_int), ("bdf_busid", c_uint), ("bdf_deviceid", c_uint), ("bdf_funcid", c_uint),
                ("reserve", c_uint8 * 32)]


class DcmiDieId(Structure):
    _fields_ = [("soc_die", c_uint * 5)]


class DcmiMemoryInfo(Structure):
    _fields_ = [("memory_size", c_ulonglong), ("memory_available", c_ulonglong), ("freq", c_uint),
                ("hugepagesize", c_ulong), ("hugepages_total", c_ulong), ("hugepages_free", c_ulong),
                ("utiliza", c_uint), ("reserve", c_uint8 * 60)]


class DcmiHbmInfo(Structure):
    _fields_ = [("memory_size", c_ulonglong), ("freq", c_uint), ("memory_usage", c_ulonglong), ("temp", c_int),
                ("bandwith_util_rate", c_uint)]


class DcmiEccInfo(Structure):
    _fields_ = [("enable_flag", c_int), ("single_bit_error_cnt", c_uint), ("double_bit_error_cnt", c_uint),
                ("total_single_bit_error_cnt", c_uint), ("total_double_bit_error_cnt", c_uint),
                ("single_bit_isolated_pages_cnt", c_uint), ("double_bit_isolated_pages_cnt", c_uint),
                ("single_bit_next_isolated_pages_cnt", c_uint), ("double_bit_next_isolated_pages_cnt", c_uint)]


class DcmiHccsBandwidth(Structure):
    _fields_ = [("profiling_time", c_int), ("total_txbw", c_double), ("total_rxbw", c_double),
                ("tx_bandwidth", c_double * 16), ("rx_bandwidth", c_double * 16)]


# ---- ROCm-SMI ------------------------------------------------------------------------------------

class RsmiErrorCount(Structure):
    _fields_ = [("correctable_err", c_uint64), ("uncorrectable_err", c_uint64)]


class RsmiEvent(Structure):
    _fields_ = [("dv_ind", c_uint32), ("event", c_int), ("message", c_char * 64)]


# ---- CNDev ---------------------------------------------------------------------------------------

CNDEV_VERSION_6 = 6


class CnCardInfo(Structure):
    _fields_ = [("version", c_int32), ("number", c_uint32)]


class CnCardName(Structure):
    _fields_ = [("version", c_int32), ("id", c_int)]


class CnUUID(Structure):
    _fields_ = [("version", c_int32), ("uuid", c_uint8 * 37), ("ncsUUID64", c_uint64)]


class CnCardSN(Structure):
    _fields_ = [("version", c_int32), ("sn", c_uint64), ("motherBoardSn", c_uint64)]


class CnPCIeInfoV2(Structure):
    _fields_ = [("subsystemId", c_uint32), ("deviceId", c_uint32), ("vendor", c_uint16),
                ("subsystemVendor", c_uint16), ("domain", c_uint32), ("bus", c_uint32), ("device", c_uint32),
                ("function", c_uint32), ("moduleId", c_uint16), ("slotId", c_uint16), ("reserved", c_uint32 * 8)]


class CnMemoryInfoV2(Structure):
    _fields_ = [("physicalMemoryTotal", c_int64), ("physicalMemoryUsed", c_int64), ("reservedMemory", c_int64),
                ("virtualMemoryTotal", c_int64), ("virtualMemoryUsed", c_int64), ("globalMemory", c_uint64),
                ("reserved", c_uint64 * 16)]


class CnNUMANodeId(Structure):
    _fields_ = [("version", c_int32), ("nodeId", c_int32)]


class CnTopologyRelationship(Structure):
    _fields_ = [("version", c_int32), ("relation", c_int)]


class CnMLULinkStatusV2(Structure):
    _fields_ = [("macState", c_int), ("serdesState", c_int), ("presenceState", c_int),
                ("serdesProgress", c_uint32), ("reserved", c_uint32 * 7)]


class CnMLULinkRemoteInfo(Structure):
    _fields_ = [("version", c_int32), ("mcSn", c_uint64), ("baSn", c_uint64), ("slotId", c_uint32),
                ("portId", c_uint32), ("devIp", c_uint8 * 16), ("uuid", c_uint8 * 37), ("devIpVersion", c_uint32),
                ("isIpValid", c_uint32), ("connectType", c_int32), ("ncsUUID64", c_uint64),
                ("mac_addr", c_uint8 * 6), ("port_name", c_char * 256)]


class CnCardHealthState(Structure):
    _fields_ = [("version", c_int32), ("health", c_int32), ("deviceState", c_int), ("driverState", c_int)]


class CnTemperatureInfo(Structure):
    _fields_ = [("version", c_int32), ("board", c_int32), ("cluster", c_int32 * 20), ("memoryDie", c_int32 * 8),
                ("chip", c_int32), ("airInlet", c_int32), ("airOutlet", c_int32), ("memory", c_int32),
                ("videoInput", c_int32), ("cpu", c_int32), ("isp", c_int32)]


class CnUtilizationInfo(Structure):
    _fields_ = [("version", c_int32), ("averageCoreUtilization", c_int32), ("coreUtilization", c_int32 * 80)]


class CnECCInfo(Structure):
    _fields_ = [("version", c_int32), ("oneBitError", c_uint64), ("multipleOneError", c_uint64),
                ("multipleError", c_uint64), ("multipleMultipleError", c_uint64), ("correctedError", c_uint64),
                ("uncorrectedError", c_uint64), ("totalError", c_uint64), ("addressForbiddenError", c_uint64)]


def cndev(vendor_lib: ctypes.CDLL) -> ctypes.CDLL:
    vendor_lib.cndevGetCardNameStringByDevId.restype = c_char_p
    vendor_lib.cndevGetErrorString.restype = c_char_p
    return vendor_lib


def rsmi(vendor_lib: ctypes.CDLL) -> ctypes.CDLL:
    vendor_lib.rsmi_init.argtypes = [c_uint64]
    vendor_lib.rsmi_dev_name_get.argtypes = [c_uint32, c_char_p, ctypes.c_size_t]
    return vendor_lib


__all__ = [n for n in dir() if not n.startswith("_")] + ["POINTER"]
