"""Shared accounting under contention: 4 processes x 8 threads allocate and free at random against
one container quota (cuMemAlloc_v2, stream-ordered cuMemAllocAsync with occasional synchronisation, and
VMM handles released while mapped, then unmapped) while an independent observer process (not
preloaded) samples the shared region under the ledger lock (the kernel's lock table). The quota must
never be exceeded and nothing may be left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from interceptor_harness import MIB, VARIANTS, Harness, write_profile

QUOTA = 64 * MIB
MAX_BLOCK = 8 * MIB  # 32 threads x up to 4 blocks x up to 8 MiB: demand far beyond the quota


@pytest.mark.parametrize("variant", VARIANTS)
def test_four_processes_eight_threads_never_exceed_quota(built: None, tmp_path: Path, variant: str) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    h = Harness(variant=variant, shm_dir=shm, profile=write_profile(tmp_path / "profile.json"))
    stop = tmp_path / "stop"
    iters = "3000" if variant == "plain" else "1500"
    workers = [
        h.popen("t_stress", "worker", "8", iters, str(MAX_BLOCK), str(seed), HCS_VRAM_QUOTA=str(QUOTA))
        for seed in range(1, 5)
    ]
    observer = h.popen("t_stress", "observer", str(shm), str(QUOTA), str(stop), preload=False)
    results = []
    try:
        for w in workers:
            out, err = w.communicate(timeout=300)
            assert w.returncode == 0, f"worker rc={w.returncode}\n{out}\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.touch()
        for w in workers:
            if w.poll() is None:
                w.kill()
    out, err = observer.communicate(timeout=120)
    assert observer.returncode == 0, err
    seen = json.loads(out.strip().splitlines()[-1])

    assert all(r["other"] == 0 for r in results), results  # only success or CUDA_ERROR_OUT_OF_MEMORY
    assert sum(r["ok"] for r in results) > 1000
    assert sum(r["oom"] for r in results) > 100, "the quota was never the limit: the test proves nothing"
    assert seen["samples"] >= 20
    assert seen["violations"] == 0, seen
    assert seen["max"] <= QUOTA
    assert seen["max"] > QUOTA // 2, seen  # the observer really saw the pressure
    assert seen["errors"] == 0, seen  # the ledger could always be read
    assert seen["final"] == 0, seen  # every byte came back (frees + exited processes)
