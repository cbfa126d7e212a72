"""e2e/gpu/check.sh, dry-run against the simulated CUDA driver (an H200-sized simulated card), so the
real-GPU script cannot rot unnoticed between the rare runs on a lent GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from interceptor_harness import DRIVER_LIB, REPO, build


def test_gpu_check_script_runs_end_to_end_on_the_simulated_driver(tmp_path: Path) -> None:
    build()
    profile = tmp_path / "h200.json"
    profile.write_text(json.dumps({"name": "h200-sim", "devices": [
        {"vendor": "nvidia", "model": "NVIDIA H200 (simulated)", "uuid": "GPU-00000000-0000-0000-0000-0000000000c1",
         "pci_bus_id": "0000:01:00.0", "memory_mib": 143771, "numa_node": 0}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD"))}
    env.update(OUT=str(tmp_path), HCS_SIM_PROFILE=str(profile),
               LD_LIBRARY_PATH=f"{DRIVER_LIB}:{env.get('LD_LIBRARY_PATH', '')}")
    proc = subprocess.run([str(REPO / "e2e" / "gpu" / "check.sh")], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert result["all_functional_checks_pass"] is True
    assert result["driver_api_limits_dlsym"]["pass"] is True
    assert result["driver_api_limits_cugetprocaddress"]["pass"] is True
    assert result["driver_api_two_processes"]["pass"] is True
    assert result["driver_api_limits_dlsym"]["total_reported"] == 4 << 30
    assert "overhead_pct" in result["driver_api_alloc_free_1MiB"]
    # issue 22: VMM released while mapped stays charged; a pool caching freed memory stays charged
    assert result["driver_api_vmm"]["pass"] is True, result["driver_api_vmm"]
    assert result["driver_api_vmm"]["free_released_but_mapped"] == 0
    assert result["driver_api_stream_ordered_pools"]["pass"] is True, result["driver_api_stream_ordered_pools"]
    assert result["driver_api_stream_ordered_pools"]["other_pool_512MiB"] == 2
    assert result["compute_share"]["pass"] is True, result["compute_share"]
