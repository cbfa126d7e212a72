"""Run inside a demo "container" (a process with the pod's env, ``LD_PRELOAD`` interceptor and quota file):
allocate device memory through the vendor runtime as a framework would, and print one JSON object.

    python -m hcs.demo.quota_check VENDOR QUOTA_BYTES

Steps on device 0: ask the runtime how much memory there is (the interceptor answers the quota), allocate
half the quota (must succeed), then more than what is left (must fail with the vendor's out-of-memory code).
"""

from __future__ import annotations

import ctypes
import json
import sys
from ctypes import byref, c_size_t, c_uint64, c_void_p
from typing import Any

#: vendor -> (runtime library, out-of-memory code, its name)
RUNTIMES = {
    "nvidia": ("libcuda.so.1", 2, "CUDA_ERROR_OUT_OF_MEMORY"),
    "ascend": ("libascendcl.so", 207001, "ACL_ERROR_RT_MEMORY_ALLOCATION"),
    "hygon": ("libamdhip64.so", 2, "hipErrorOutOfMemory"),
    "cambricon": ("libcnrt.so", 100100, "cnrtErrorNoMem"),
}


def check(vendor: str, quota: int) -> dict[str, Any]:
    soname, oom, oom_name = RUNTIMES[vendor]
    lib: Any = ctypes.CDLL(soname)
    free, total = c_size_t(), c_size_t()
    malloc: Any = None
    release: Any = None
    if vendor == "nvidia":
        dev, ctx = ctypes.c_int(), c_void_p()
        for rc in (lib.cuInit(0), lib.cuDeviceGet(byref(dev), 0), lib.cuCtxCreate_v2(byref(ctx), 0, dev)):
            if rc:
                raise RuntimeError(f"CUDA set-up failed: {rc}")

        def alloc(n: int) -> tuple[int, Any]:
            p = c_uint64()
            return int(lib.cuMemAlloc_v2(byref(p), c_size_t(n))), p

        release = lib.cuMemFree_v2

        api = ("cuMemGetInfo_v2", "cuMemAlloc_v2")
        info_rc = lib.cuMemGetInfo_v2(byref(free), byref(total))
    else:
        if vendor == "ascend":
            lib.aclInit(None)
            lib.aclrtSetDevice(0)
            malloc = lambda p, n: lib.aclrtMalloc(byref(p), c_size_t(n), 0)  # noqa: E731
            api = ("aclrtGetMemInfo", "aclrtMalloc")
            info_rc = lib.aclrtGetMemInfo(1, byref(free), byref(total))
            release = lambda p: lib.aclrtFree(p)  # noqa: E731
        elif vendor == "hygon":
            lib.hipSetDevice(0)
            malloc = lambda p, n: lib.hipMalloc(byref(p), c_size_t(n))  # noqa: E731
            api = ("hipMemGetInfo", "hipMalloc")
            info_rc = lib.hipMemGetInfo(byref(free), byref(total))
            release = lambda p: lib.hipFree(p)  # noqa: E731
        else:
            lib.cnrtSetDevice(0)
            malloc = lambda p, n: lib.cnrtMalloc(byref(p), c_size_t(n))  # noqa: E731
            api = ("cnrtMemGetInfo", "cnrtMalloc")
            info_rc = lib.cnrtMemGetInfo(byref(free), byref(total))
            release = lambda p: lib.cnrtFree(p)  # noqa: E731

        def alloc(n: int) -> tuple[int, Any]:
            p = c_void_p()
            return int(malloc(p, n)), p

    half = quota // 2
    first_rc, first = alloc(half)
    over = quota - half + (1 << 20)
    second_rc, second = alloc(over)
    if second_rc == 0:
        release(second)
    if first_rc == 0:
        release(first)
    return {"vendor": vendor, "quota_bytes": quota, "info_api": api[0], "info_rc": int(info_rc),
            "reported_total_bytes": total.value, "alloc_api": api[1],
            "within": {"bytes": half, "rc": first_rc}, "over": {"bytes": over, "rc": second_rc},
            "oom_code": oom, "oom_name": oom_name,
            "enforced": first_rc == 0 and second_rc == oom}


def main() -> int:
    vendor, quota = sys.argv[1], int(sys.argv[2])
    try:
        out = check(vendor, quota)
    except (OSError, RuntimeError, AttributeError) as exc:
        out = {"vendor": vendor, "error": str(exc), "enforced": False}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
