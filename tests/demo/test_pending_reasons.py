"""A pending pod's reason names what is actually short, from the one planner (one container or several):
VRAM vs TFLOPS on a shared device, node size vs island size vs busy devices for whole devices, and the
vendor/model filter."""

from __future__ import annotations

import pytest

from hcs.allocator.placement import Constraints, ContainerDemand, PodDemand, PodRef
from hcs.allocator.state import AllocatorState
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30


def a100s(n: int, islands: list[str] | None = None) -> tuple[DeviceInfo, ...]:
    isl = islands or ["nvl0"] * n
    return tuple(DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, 312_000, isl[i])
                 for i in range(n))


def pod(name: str, *containers: tuple[int, int], cons: Constraints | None = None) -> PodDemand:
    return PodDemand(PodRef(f"uid-{name}", "t", name),
                     tuple(ContainerDemand(f"c{i}", v * GI, t * 1000) for i, (v, t) in enumerate(containers)),
                     cons or Constraints())


def reason(state: AllocatorState, demand: PodDemand, node: str = "n1") -> str:
    [v] = [v for v in state.explain(demand) if v.node == node]
    assert not v.fits, v
    return v.reason


@pytest.fixture()
def one_gpu() -> AllocatorState:
    state = AllocatorState(seed=0)
    state.set_node(NodeInventory("n1", a100s(1)))
    return state


def test_tflops_short_says_tflops_not_vram(one_gpu: AllocatorState) -> None:
    one_gpu.reserve(pod("hog", (8, 300)))  # little VRAM, nearly all the compute
    why = reason(one_gpu, pod("want", (16, 50)))
    assert why == ("not enough free TFLOPS: needs 50 TFLOPS on one device; the devices with 16.0Gi VRAM free "
                   "have at most 12 TFLOPS free")


def test_vram_short_says_vram(one_gpu: AllocatorState) -> None:
    one_gpu.reserve(pod("hog", (70, 0)))
    assert reason(one_gpu, pod("want", (16, 10))) == ("not enough free VRAM: needs 16.0Gi VRAM on one device, "
                                                       "the most free is 10.0Gi of 80.0Gi")


@pytest.mark.parametrize("second", [False, True], ids=["fast-path", "multi-container"])
def test_both_planners_agree_on_the_blocker(one_gpu: AllocatorState, second: bool) -> None:
    one_gpu.reserve(pod("hog", (8, 300)))
    containers = [(16, 50)] + ([(1, 0)] if second else [])
    why = reason(one_gpu, pod("want", *containers))
    assert "not enough free TFLOPS: needs 50 TFLOPS on one device" in why, why


def test_node_size_vs_island_size_vs_busy() -> None:
    state = AllocatorState(seed=0)
    state.set_node(NodeInventory("n1", a100s(8, ["a", "a", "b", "b", "c", "c", "d", "d"])))
    hb = Constraints(high_bandwidth=True)
    assert reason(state, pod("huge", (800, 0), cons=hb)).startswith(
        "node too small: needs 10 whole a100-80g devices (80.0Gi each) for 800.0Gi VRAM, the node has 8")
    assert reason(state, pod("island", (240, 0), cons=hb)) == (
        "island too small: needs 3 whole a100-80g devices (80.0Gi each) for 240.0Gi VRAM on one interconnect "
        "island (high-bandwidth), the largest island has 2")
    for i in range(6):
        state.reserve(pod(f"busy{i}", (80, 0)))
    assert reason(state, pod("three", (240, 0))) == (
        "devices busy: needs 3 whole a100-80g devices (80.0Gi each) for 240.0Gi VRAM, 2 of 8 idle")


def test_vendor_and_model_filters_are_named() -> None:
    state = AllocatorState(seed=0)
    state.set_node(NodeInventory("n1", a100s(2)))
    assert reason(state, pod("asc", (16, 0), cons=Constraints(vendors_in=frozenset({"ascend"})))) == (
        "vendor filter: hcs.io/vendor=ascend excludes this node's nvidia devices")
    assert reason(state, pod("notnv", (16, 0), cons=Constraints(vendors_out=frozenset({"nvidia"})))) == (
        "vendor filter: hcs.io/vendor=!nvidia excludes this node's nvidia devices")
    assert reason(state, pod("h100", (16, 0), cons=Constraints(models_in=frozenset({"h100"})))) == (
        "model filter: hcs.io/model=h100 excludes this node's a100-80g devices")
    two = pod("two", (16, 0), (16, 0), cons=Constraints(models_in=frozenset({"h100"})))
    assert reason(state, two) == "model filter: hcs.io/model=h100 excludes this node's a100-80g devices"
