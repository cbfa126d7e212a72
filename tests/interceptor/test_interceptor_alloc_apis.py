"""Issue 22: every allocation API real frameworks use is held to the quota at the exact boundary.

One test per API (parametrised ids are the API names): in one process, and across processes (a
holder process keeps part of the quota through the same API; a second process gets exactly the rest,
and not one allocation unit more). Plus, per API family, what gives memory back and what must not
(VMM released while mapped, pools holding cached memory until trim/synchronisation, ...). Every case
is a real C program (interceptor/tests/t_alloc.c) with the interceptor preloaded in front of the
simulated runtimes, plainly and under ASan/UBSan.
"""

from __future__ import annotations

import pytest
from interceptor_harness import MIB, Harness, Result

GRANULE = 2 * MIB

# api -> allocation unit (one byte, one pitch row, one VMM granule, ...) and the quota used
APIS: dict[str, tuple[int, int]] = {
    "cuMemAlloc_v1": (1, 16 * MIB),
    "cuMemAllocManaged": (1, 16 * MIB),
    "cuMemAllocPitch": (512, 16 * MIB),
    "cuMemAllocAsync": (1, 16 * MIB),
    "cuMemAllocFromPoolAsync": (1, 16 * MIB),
    "cuMemCreate": (GRANULE, 16 * MIB),
    "cuArrayCreate": (512, 16 * MIB),
    "cuArray3DCreate": (1024, 16 * MIB),
    "cuMipmappedArrayCreate": (1536, 12 * MIB),
    "hipMallocAsync": (1, 16 * MIB),
    "hipMallocManaged": (1, 16 * MIB),
    "hipExtMallocWithFlags": (1, 16 * MIB),
    "hipMemCreate": (GRANULE, 16 * MIB),
    "aclrtMallocCached": (1, 16 * MIB),
    "aclrtMallocAlign32": (32, 16 * MIB),
    "aclrtMallocPhysical": (GRANULE, 16 * MIB),
    "cnrtMallocConstant": (1, 16 * MIB),
}


def ok(res: Result, case: str) -> None:
    assert res.rc == 0, f"{case}: rc={res.rc}\nstdout:\n{res.out}\nstderr:\n{res.err}"
    assert f"ok {case}" in res.out, res.out


def quota_env(quota: int) -> dict[str, str]:
    return {"HCS_VRAM_QUOTA": str(quota), "HCS_TEST_QUOTA": str(quota)}


@pytest.mark.parametrize("api", list(APIS))
def test_api_exact_boundary_in_one_process(h: Harness, api: str) -> None:
    """The whole quota through the API is granted, one unit more is refused with the vendor's OOM
    code, and the free gives it all back (stream-ordered frees once synchronised)."""
    unit, quota = APIS[api]
    assert quota % unit == 0
    ok(h.run("t_alloc", api, "edge", str(quota), **quota_env(quota)), f"{api} edge")


@pytest.mark.parametrize("api", list(APIS))
def test_api_exact_boundary_across_processes(h: Harness, api: str) -> None:
    """Another process holds a quarter of the quota through the same API: this one gets exactly
    the rest and not one unit more; when the holder is killed its share comes back."""
    unit, quota = APIS[api]
    held = (quota // unit // 4) * unit
    h.base_env.update(quota_env(quota))
    holder = h.popen("t_alloc", api, "hold", str(held))
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("ready"), line + (holder.stderr.read() if holder.stderr else "")
        ok(h.run("t_alloc", api, "edge", str(quota - held)), f"{api} edge")
        holder.kill()
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    ok(h.run("t_alloc", api, "edge", str(quota)), f"{api} edge")


def test_vmm_charges_physical_handles_until_released_and_unmapped(h: Harness) -> None:
    """cuMemCreate is charged, address reservations are not; a handle released while mapped (or
    retained) stays charged until its last mapping is unmapped; host locations are not charged; a
    size off the 2 MiB granularity is the driver's error."""
    ok(h.run("t_alloc", "cuMemCreate", "returns", **quota_env(16 * MIB)), "cuMemCreate returns")


def test_pools_charged_what_they_hold_until_trim_or_sync(h: Harness) -> None:
    """A pool that keeps its memory (release threshold) stays charged after the free; it reuses its
    cache without new quota; cuMemPoolTrimTo and synchronisation give memory back; an async free is
    not complete before synchronisation; a destroyed pool with a block outstanding stays charged
    until the block is freed and synchronised; cuDeviceSetMemPool routes cuMemAllocAsync."""
    ok(h.run("t_alloc", "cuMemAllocFromPoolAsync", "returns", **quota_env(16 * MIB)),
       "cuMemAllocFromPoolAsync returns")


def test_hip_vmm_released_while_mapped_stays_charged(h: Harness) -> None:
    ok(h.run("t_alloc", "hipMemCreate", "returns", **quota_env(16 * MIB)), "hipMemCreate returns")


def test_acl_vmm_freed_while_mapped_stays_charged(h: Harness) -> None:
    ok(h.run("t_alloc", "aclrtMallocPhysical", "returns", **quota_env(16 * MIB)), "aclrtMallocPhysical returns")


def test_acl_align32_charged_the_rounded_size(h: Harness) -> None:
    ok(h.run("t_alloc", "aclrtMallocAlign32", "returns", **quota_env(16 * MIB)), "aclrtMallocAlign32 returns")


def test_v1_cumemalloc_through_cugetprocaddress_for_old_versions(h: Harness) -> None:
    ok(h.run("t_alloc", "cuMemAlloc_v1", "returns", **quota_env(16 * MIB)), "cuMemAlloc_v1 returns")


@pytest.mark.parametrize("api", ["cuMemAllocManaged", "aclrtMallocCached", "hipMallocManaged", "cnrtMallocConstant"],
                         ids=["nvml", "dcmi", "rocm-smi", "cndev"])
def test_management_library_reports_quota_and_own_usage(h: Harness, api: str) -> None:
    """nvidia-smi / npu-smi / rocm-smi / cnmon inside the container agree with the quota: NVML
    (v1, v2 with nothing 'reserved'), DCMI memory_info_v3 + hbm_info, rsmi VRAM total/usage and
    cndevGetMemoryUsageV2 report total = quota and used = the container's own usage."""
    ok(h.run("t_alloc", api, "smi", **quota_env(64 * MIB)), f"{api} smi")


def test_simulated_runtimes_follow_the_vendor_semantics(h: Harness) -> None:
    """Without the interceptor (the card's own numbers): VMM granularity, mapping rules, memory freed
    only when released and unmapped; pools keep cached memory until synchronisation or trim, async
    frees pending until synchronisation, the default pool cannot be destroyed; arrays' 512-byte rows;
    v1 32-bit pointers; HIP/ACL VMM; aclrtMallocAlign32 rounding; cnrtHostMalloc is host memory."""
    ok(h.run("t_alloc", "cuMemCreate", "sim", preload=False), "cuMemCreate sim")
