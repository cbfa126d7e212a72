"""Each shipped profile's islands, read back through the vendor libraries by ``hcs inspect``, match the
topology the vendor documents for that machine (sources in driver/README.md and each profile's ``source``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HCS = Path(sys.executable).parent / "hcs"
PROFILES = Path(__file__).resolve().parents[2] / "driver" / "profiles"

#: profile -> (islands as sorted member lists, the weakest link inside an island in GB/s)
DOCUMENTED = {
    # HGX boards: every GPU reaches every other through the NVSwitches at its full NVLink bandwidth.
    "hgx-a100-nvswitch-8": ([[f"nvidia-{i}" for i in range(8)]], 600.0),
    "hgx-h100-nvswitch-8": ([[f"nvidia-{i}" for i in range(8)]], 900.0),
    "hgx-h200-nvswitch-8": ([[f"nvidia-{i}" for i in range(8)]], 900.0),
    "a100-80g-nvlink-8": ([[f"nvidia-{i}" for i in range(8)]], 600.0),
    "h100-nvlink-8": ([[f"nvidia-{i}" for i in range(8)]], 900.0),
    # NVLink bridges join pairs of PCIe cards (three bridges, 600 GB/s); pairs talk over PCIe.
    "h100-nvl-bridge-4": ([["nvidia-0", "nvidia-1"], ["nvidia-2", "nvidia-3"]], 600.0),
    "a100-pcie-bridge-4": ([["nvidia-0", "nvidia-1"], ["nvidia-2", "nvidia-3"]], 600.0),
    # Two HGX A100 4-GPU meshes: 4 NVLinks between any two GPUs of a board.
    "a100-40g-nvlink-2x4": ([[f"nvidia-{i}" for i in range(4)], [f"nvidia-{i}" for i in range(4, 8)]], 200.0),
    # Atlas 800 (910A): two HCCS groups of 4; Atlas 800T A2 (910B): one HCCS mesh of 8.
    "atlas800-910a-8": ([[f"ascend-{i}" for i in range(4)], [f"ascend-{i}" for i in range(4, 8)]], 30.0),
    "atlas800t-a2-910b-8": ([[f"ascend-{i}" for i in range(8)]], 56.0),
    # MLU370-X8: a 4-card MLU-Link bridge per group of 4 cards.
    "mlu370-x8-bridge-2x4": ([[f"cambricon-{i}" for i in range(4)], [f"cambricon-{i}" for i in range(4, 8)]],
                             28.5),
    "t4-pcie-4": ([[f"nvidia-{i}"] for i in range(4)], 0.0),
}


def inspect(profile: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run([str(HCS), "inspect", "--profile", profile, "--output", "json"],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("profile", sorted(DOCUMENTED))
def test_islands_match_the_documented_topology(profile: str) -> None:
    want, min_gbps = DOCUMENTED[profile]
    got = inspect(profile)
    islands = sorted(sorted(i["members"]) for i in got["islands"])
    assert islands == sorted(want)
    for island in got["islands"]:
        if len(island["members"]) > 1:
            assert island["min_gbps"] == pytest.approx(min_gbps)
    by_key = {d["key"]: d["island"] for d in got["devices"]}
    for island in got["islands"]:
        assert {by_key[m] for m in island["members"]} == {island["id"]}


@pytest.mark.parametrize("profile", ["atlas800-910a-8", "atlas800t-a2-910b-8", "mixed-a100-910b"])
def test_ascend_numa_is_the_profiles(profile: str) -> None:
    """NUMA comes from the (simulated) host's sysfs for the device's PCI address, as on a real host."""
    devices = json.loads((PROFILES / f"{profile}.json").read_text())["devices"]
    want = {d["pci_bus_id"]: d["numa_node"] for d in devices}
    got = inspect(profile)
    assert {d["pci_bus_id"]: d["numa_node"] for d in got["devices"]} == want
