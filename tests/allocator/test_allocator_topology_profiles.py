"""Placement on the documented machine topologies: each simulated node is discovered through its vendor
library (``hcs inspect``), turned into the ComputeNode the agent would publish, and planned on.

A ``high-bandwidth`` multi-device pod must stay in one interconnect island, so on an HGX NVSwitch
board 8 whole GPUs fit (one island), on an Atlas 800 (910A) at most 4 NPUs do (two HCCS groups), and
on NVLink-bridged PCIe cards at most 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hcs.allocator.placement import Constraints, ContainerDemand, PodDemand, PodRef
from hcs.allocator.state import AllocatorState, NoFit
from hcs.cluster_inventory import NodeInventory, parse_computenode

PROFILES = Path(__file__).resolve().parents[2] / "driver" / "profiles"

#: profile -> (device memory GiB, the largest island a high-bandwidth pod can use)
MACHINES = {
    "hgx-h100-nvswitch-8": (79, 8),
    "hgx-a100-nvswitch-8": (80, 8),
    "hgx-h200-nvswitch-8": (140, 8),
    "h100-nvl-bridge-4": (93, 2),
    "a100-pcie-bridge-4": (80, 2),
    "atlas800-910a-8": (32, 4),
    "atlas800t-a2-910b-8": (64, 8),
    "mlu370-x8-bridge-2x4": (48, 4),
}


#: what the node agent does: discover through the vendor libraries, publish a ComputeNode spec
AGENT_VIEW = """
import json, sys
from hcs.devices.catalog import default_catalog
from hcs.devices.inventory import discover
from hcs.node.computenode import IslandInfo, build_spec
inv = discover(default_catalog())
islands = [IslandInfo(i.id, str(i.vendor), str(i.link_type), i.members, i.min_gbps) for i in inv.islands]
print(json.dumps(build_spec(sys.argv[1], inv.devices, islands)))
"""


def computenode(profile: str) -> NodeInventory:
    env = dict(os.environ, HCS_SIM_PROFILE=str(PROFILES / f"{profile}.json"))
    out = subprocess.run([sys.executable, "-c", AGENT_VIEW, profile], capture_output=True, text=True, timeout=120,
                         check=True, env=env)
    return parse_computenode({"metadata": {"name": profile}, "spec": json.loads(out.stdout)})


def whole_devices(k: int, gib: int, high_bandwidth: bool) -> PodDemand:
    return PodDemand(PodRef(f"p{k}", "default", f"p{k}"), (ContainerDemand("c", k * gib * 2**30, 0),),
                     Constraints(high_bandwidth=high_bandwidth), 0, 0)


@pytest.mark.parametrize("profile", sorted(MACHINES))
def test_high_bandwidth_pods_fit_exactly_the_largest_island(profile: str) -> None:
    gib, island = MACHINES[profile]
    node = computenode(profile)
    assert max(sum(1 for d in node.devices if d.island == i) for i in {d.island for d in node.devices}) == island
    s = AllocatorState()
    s.set_node(node)
    r = s.reserve(whole_devices(island, gib, True))
    granted = {g.device for g in r.grants()}
    assert len(granted) == island and len({d.island for d in node.devices if d.name in granted}) == 1
    s.release(r.pod.uid)
    with pytest.raises(NoFit):
        s.reserve(whole_devices(island + 1, gib, True))
    # without the preference the same request may span islands (PCIe between them)
    if island < len(node.devices):
        assert s.reserve(whole_devices(island + 1, gib, False)).node == profile
