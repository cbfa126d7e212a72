"""The cluster behind the `hcs alloc explain` example in docs/operations.md ("A pod stays Pending")."""

from __future__ import annotations

from hcs.allocator.placement import Constraints, ContainerDemand, PodDemand, PodRef
from hcs.allocator.state import AllocatorState
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30


def _devs(vendor: str, model: str, n: int, vram_gi: int, tflops: int, islands: list[str]) -> tuple[DeviceInfo, ...]:
    return tuple(DeviceInfo(f"{vendor}-{i}", vendor, model, f"{model}-{i}", i, vram_gi * GI, tflops * 1000,
                            islands[i]) for i in range(n))


def scenario() -> tuple[AllocatorState, PodDemand]:
    state = AllocatorState(seed=0)
    state.set_node(NodeInventory("gpu-1", _devs("nvidia", "a100-80g", 4, 80, 312, ["nvl0"] * 4)))
    state.set_node(NodeInventory("gpu-2", _devs("nvidia", "a100-40g", 8, 40, 312,
                                                ["nvl0", "nvl0", "nvl1", "nvl1", "nvl2", "nvl2", "nvl3", "nvl3"])))
    state.set_node(NodeInventory("npu-1", _devs("ascend", "910b3", 8, 64, 265, ["hccs0"] * 8)))
    state.set_node(NodeInventory("t4-1", _devs("nvidia", "t4", 4, 15, 65, ["", "", "", ""])))
    for i in range(3):  # three inference pods on gpu-1: one A100 stays idle
        small = PodDemand(PodRef(f"u-{i}", "team", f"infer-{i}"), (ContainerDemand("main", 60 * GI, 0),))
        state.reserve(small, "gpu-1")
    want = PodDemand(PodRef("u-train", "team", "train"), (ContainerDemand("main", 160 * GI, 0),),
                     Constraints(high_bandwidth=True, vendors_in=frozenset({"nvidia"})))
    return state, want
