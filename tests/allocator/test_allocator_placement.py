"""Placement of real requests and the reservation invariants (hypothesis)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcs.allocator.placement import (
    Constraints,
    ContainerDemand,
    PodDemand,
    PodRef,
    RequestError,
    demand_from_pod,
)
from hcs.allocator.state import AllocatorState, Conflict, NoFit
from hcs.cluster_inventory import (
    DeviceInfo,
    ExchangeRates,
    InventoryError,
    NodeInventory,
    parse_computenode,
    with_node,
)

GI = 2**30
A100 = 312_000


def dev(i: int, model: str = "a100-80g", vendor: str = "nvidia", vram: int = 80 * GI, tflops: int = A100,
        island: str = "nvl0", health: int = 100) -> DeviceInfo:
    return DeviceInfo(f"{vendor}-{i}", vendor, model, f"GPU-{model}-{i}", i, vram, tflops, island, health)


def node(name: str, devices: list[DeviceInfo], cpu: int = 0, mem: int = 0) -> NodeInventory:
    return NodeInventory(name, tuple(devices), cpu, mem)


def pod(uid: str, *containers: tuple[int, int], cons: Constraints | None = None, cpu: int = 0) -> PodDemand:
    return PodDemand(PodRef(uid, "default", uid), tuple(ContainerDemand(f"c{i}", v, t)
                                                         for i, (v, t) in enumerate(containers)),
                     cons or Constraints(), cpu, 0)


def state(*nodes: NodeInventory) -> AllocatorState:
    s = AllocatorState()
    for n in nodes:
        s.set_node(n)
    return s


def test_fractional_request_lands_on_one_device_and_packs() -> None:
    s = state(node("n1", [dev(0), dev(1)]), node("n2", [dev(0), dev(1)]))
    a = s.reserve(pod("a", (16 * GI, 0)))
    b = s.reserve(pod("b", (16 * GI, 0)))
    ga, gb = next(a.grants()), next(b.grants())
    assert (a.node, ga.device) == (b.node, gb.device)  # binpack: the same device
    assert ga.vram_bytes == 16 * GI
    s.check_invariants()


def test_spread_policy_uses_the_emptiest_node() -> None:
    s = state(node("n1", [dev(0), dev(1)]), node("n2", [dev(0), dev(1)]))
    a = s.reserve(pod("a", (16 * GI, 0)))
    b = s.reserve(pod("b", (16 * GI, 0), cons=Constraints(policy="spread")))
    assert a.node != b.node


def test_160gi_high_bandwidth_takes_two_devices_of_one_island() -> None:
    devices = [dev(0, island="a"), dev(1, island="b"), dev(2, island="b"), dev(3, island="c")]
    s = state(node("n1", devices))
    r = s.reserve(pod("big", (160 * GI, 0), cons=Constraints(high_bandwidth=True)))
    grants = list(r.grants())
    assert len(grants) == 2 and {g.island for g in grants} == {"b"}
    assert sum(g.vram_bytes for g in grants) == 160 * GI


def test_high_bandwidth_without_a_big_enough_island_is_refused_with_a_reason() -> None:
    s = state(node("n1", [dev(0, island="a"), dev(1, island="b")]))
    with pytest.raises(NoFit, match="one interconnect island"):
        s.reserve(pod("big", (160 * GI, 0), cons=Constraints(high_bandwidth=True)))
    # without the preference it may span islands
    assert len(list(s.reserve(pod("big", (160 * GI, 0))).grants())) == 2


def test_impossible_request_says_so_for_every_node() -> None:
    s = state(node("n1", [dev(0)]), node("n2", [dev(0, vram=16 * GI, model="t4", tflops=65_000)]))
    with pytest.raises(NoFit) as err:
        s.reserve(pod("huge", (1024 * GI, 0), cons=Constraints(high_bandwidth=True)))
    assert {v.node for v in err.value.verdicts} == {"n1", "n2"}
    assert all(not v.fits and "needs" in v.reason for v in err.value.verdicts)


def test_unhealthy_devices_are_excluded_and_degraded_ones_avoided() -> None:
    s = state(node("n1", [dev(0, health=10), dev(1, health=70), dev(2)]))
    r = s.reserve(pod("a", (8 * GI, 0)))
    assert next(r.grants()).device == "nvidia-2"
    s2 = state(node("n1", [dev(0, health=10)]))
    with pytest.raises(NoFit, match="unhealthy"):
        s2.reserve(pod("a", (8 * GI, 0)))


def test_vendor_and_model_include_exclude() -> None:
    s = state(node("nv", [dev(0)]), node("asc", [dev(0, model="910b3", vendor="ascend", vram=64 * GI)]))
    assert s.reserve(pod("a", (8 * GI, 0), cons=Constraints(vendors_in=frozenset({"ascend"})))).node == "asc"
    assert s.reserve(pod("b", (8 * GI, 0), cons=Constraints(vendors_out=frozenset({"ascend"})))).node == "nv"
    assert s.reserve(pod("c", (8 * GI, 0), cons=Constraints(models_out=frozenset({"a100-80g"})))).node == "asc"


def test_tflops_use_exchange_rates() -> None:
    # 200 A100-TFLOPS do not fit a 910b (0.85 x 312 = 265) twice, but fit an h100 (468) twice
    s = state(node("asc", [dev(0, model="910b3", vendor="ascend", tflops=265_200)]),
              node("h", [dev(0, model="h100", tflops=468_000)]))
    s.reserve(pod("a", (0, 200_000)))
    s.reserve(pod("b", (0, 200_000)))
    assert {s.reservation("a").node, s.reservation("b").node} == {"asc", "h"} or \
        s.reservation("a").node == s.reservation("b").node == "h"  # type: ignore[union-attr]
    s.check_invariants()


def test_reserve_is_idempotent_and_conflicting_node_is_refused() -> None:
    s = state(node("n1", [dev(0)]), node("n2", [dev(0)]))
    r1 = s.reserve(pod("a", (8 * GI, 0)), "n1")
    assert s.reserve(pod("a", (8 * GI, 0)), "n1") == r1
    with pytest.raises(Conflict, match="already holds devices on node n1"):
        s.reserve(pod("a", (8 * GI, 0)), "n2")


def test_node_disappearing_keeps_reservations_but_takes_no_new_ones() -> None:
    s = state(node("n1", [dev(0)]))
    s.reserve(pod("a", (8 * GI, 0)))
    s.remove_node("n1")
    with pytest.raises(NoFit):
        s.reserve(pod("b", (8 * GI, 0)), "n1")
    assert s.reservation("a") is not None
    assert s.release("a") is not None and s.usage("n1") == {}


def test_demand_from_pod_and_bad_annotations() -> None:
    ann = {"hcs.io/vendor": "nvidia,!ascend", "hcs.io/topology-preference": "high-bandwidth"}
    requests = {"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "100", "cpu": "2"}
    p = {"metadata": {"uid": "u1", "namespace": "ns", "name": "p", "annotations": ann},
         "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}]}}
    d = demand_from_pod(p)
    assert d is not None and d.containers[0] == ContainerDemand("c", 16 * GI, 100_000) and d.cpu_milli == 2000
    assert d.constraints.high_bandwidth and d.constraints.vendors_out == {"ascend"}
    p["metadata"]["annotations"] = {"hcs.io/vendor": "nvdia"}  # type: ignore[index]
    with pytest.raises(RequestError, match="ns/p annotation hcs.io/vendor: unknown value 'nvdia'"):
        demand_from_pod(p)
    p["metadata"]["annotations"] = {"hcs.io/model": "a100-81g"}  # type: ignore[index]
    with pytest.raises(RequestError, match="unknown value 'a100-81g'"):
        demand_from_pod(p)
    p["metadata"]["annotations"] = {}  # type: ignore[index]
    p["spec"]["containers"][0]["resources"]["requests"]["ai.compute/vram"] = "lots"  # type: ignore[index]
    with pytest.raises(RequestError, match="ai.compute/vram"):
        demand_from_pod(p)


def test_parse_computenode_with_rates_and_node_allocatable() -> None:
    obj = {"metadata": {"name": "n1"}, "spec": {"nodeName": "n1", "vendor": "nvidia", "devices": [
        {"name": "nvidia-0", "vendor": "nvidia", "model": "a100-80g", "uuid": "GPU-0", "index": 0,
         "vramBytes": 80 * GI, "compute": {"fp16Tflops": 312, "fp32Tflops": 19.5, "int8Tops": 624, "rate": 1.0},
         "topology": {"busId": "0000:18:00.0", "numaNode": 0, "island": "nvl-0"}, "healthScore": 100}]}}
    inv = parse_computenode(obj)
    assert inv.devices[0].tflops_milli == 312_000 and inv.devices[0].island == "nvl-0"
    assert parse_computenode(obj, ExchangeRates.from_config({"a100": 2.0})).devices[0].tflops_milli == 624_000
    inv = with_node(inv, {"status": {"allocatable": {"cpu": "8", "memory": "32Gi"}}})
    assert (inv.cpu_milli, inv.memory_bytes) == (8000, 32 * GI)
    del obj["spec"]["devices"][0]["uuid"]  # type: ignore[attr-defined]
    with pytest.raises(Exception, match=r"ComputeNode n1 spec.devices\[0\]: missing field 'uuid'"):
        parse_computenode(obj)


@pytest.mark.parametrize("obj", [
    {"metadata": "x", "spec": {"nodeName": "n", "devices": ["not an object"]}},
    {"metadata": {"name": "n"}, "spec": {"nodeName": "n", "devices": "nvidia-0"}},
    {"metadata": {"name": "n"}, "spec": {"nodeName": "n", "devices": [{"name": "d", "vendor": "nvidia",
     "model": "a100-80g", "uuid": "u", "index": 0, "vramBytes": 1, "compute": "fast", "topology": 7}]}},
    {"metadata": {"name": "n"}, "spec": "x"},
    "not an object",
])
def test_parse_computenode_rejects_malformed_objects_with_inventory_error(obj: Any) -> None:
    """The allocator's sync and the webhook skip what raises InventoryError; anything else would
    stop them."""
    with contextlib.suppress(InventoryError):
        parse_computenode(obj)


ops = st.lists(st.tuples(st.sampled_from(["reserve", "release"]), st.integers(0, 11),
                         st.integers(1, 100), st.integers(0, 400)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_never_overcommit_and_release_restores_exactly(seq: list[tuple[str, int, int, int]]) -> None:
    s = state(node("n1", [dev(0), dev(1, island="nvl0")]), node("n2", [dev(0, model="t4", vram=16 * GI,
                                                                             tflops=65_000, island="")]))
    before = {n: s.usage(n) for n in ("n1", "n2")}
    for op, uid, gib, tfl in seq:
        if op == "reserve":
            with contextlib.suppress(NoFit):
                s.reserve(pod(str(uid), (gib * GI, tfl * 1000)))
        else:
            s.release(str(uid))
        s.check_invariants()
    for r in s.reservations():
        s.release(r.pod.uid)
    assert {n: s.usage(n) for n in ("n1", "n2")} == before == {"n1": {}, "n2": {}}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.sampled_from(["a100-80g", "t4"]), st.integers(0, 100)),
                min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(1, 60), st.integers(0, 100)), max_size=8),
       st.lists(st.integers(1, 200), min_size=1, max_size=3), st.booleans())
def test_planner_on_live_state_agrees_with_a_fresh_table(shape: list[tuple[int, str, int]],
                                                         fill: list[tuple[int, int]], gibs: list[int],
                                                         hb: bool) -> None:
    """The allocator keeps the planner's device table and usage arrays across reservations; a plan from
    a table built afresh from the same inventory and usage is the same, single- or multi-container."""
    import numpy as np

    from hcs.allocator.placement import plan

    nodes = [node(f"n{i}", [dev(j, model=m, vram=(80 if m == "a100-80g" else 16) * GI, health=h if j == 0 else 100,
                                island=f"i{j // 2}") for j in range(n)])
             for i, (n, m, h) in enumerate(shape)]
    s = state(*nodes)
    for i, (g, t) in enumerate(fill):
        with contextlib.suppress(NoFit):
            s.reserve(pod(f"f{i}", (g * GI, t * 1000)))
    demand = pod("x", *[(g * GI, 0) for g in gibs], cons=Constraints(high_bandwidth=hb))
    usage = {n.name: s.usage(n.name) for n in nodes}
    fresh = plan(demand, nodes, usage, {}, s._target, np.random.default_rng(0))
    kept = s.explain(demand)
    assert [(v.node, v.fits, v.reason) for v in fresh] == [(v.node, v.fits, v.reason) for v in kept]
    # a reservation's shortcut (no reasons, the best plan only) picks what the full answer ranks first
    quick = s.explain(demand, proposals=1, best_only=True)
    first = [v for v in plan(demand, nodes, usage, {}, s._target, np.random.default_rng(0))[:1] if v.plan]
    assert [(v.node, v.plan) for v in quick] == [(v.node, v.plan) for v in first]
    for v in fresh:
        if v.plan is None:
            continue
        # a plan covers every container, on one node, within each device's free capacity
        assert [c for c, _ in v.plan.containers] == [c.name for c in demand.containers]
        inv = next(n for n in nodes if n.name == v.node)
        taken: dict[str, int] = {}
        for _, grants in v.plan.containers:
            for g in grants:
                taken[g.device] = taken.get(g.device, 0) + g.vram_bytes
        for name, vram in taken.items():
            d = inv.device(name)
            assert d is not None and d.healthy
            assert vram + usage[v.node].get(name, (0, 0))[0] <= d.vram_bytes


def test_a_multi_container_pod_gets_one_plan_and_nodes_that_cannot_hold_every_container_say_which() -> None:
    s = state(node("small", [dev(0)]), node("mixed", [dev(0), dev(1), dev(2, model="t4", vram=16 * GI,
                                                                          tflops=65_000)]))
    verdicts = s.explain(pod("p", (60 * GI, 0), (60 * GI, 0)))
    assert [(v.node, v.fits) for v in verdicts] == [("mixed", True), ("small", False)]
    assert verdicts[1].reason == ("container c1: not enough free VRAM: needs 60.0Gi VRAM on one device, the "
                                  "most free is 20.0Gi of 80.0Gi")
    assert verdicts[0].plan is not None and len({g.device for _, gs in verdicts[0].plan.containers for g in gs}) == 2
    r = s.reserve(pod("p", (100 * GI, 0), (8 * GI, 0)))
    assert r.node == "mixed" and [len(g) for _, g in r.containers] == [2, 1]
    s.check_invariants()


def test_across_models_the_least_wasteful_placement_wins() -> None:
    """A 16Gi/100 TFLOPS job takes a slice of one A100, not two whole MLU370s (96 TFLOPS each); a 160Gi job
    takes 2x80Gi, not 4x48Gi."""
    mlu = [dev(i, "mlu370-x8", "cambricon", 48 * GI, 96_000, "mlu0") for i in range(8)]
    s = state(node("mlu", mlu), node("a100", [dev(i) for i in range(8)]))
    small = s.reserve(pod("small", (16 * GI, 100_000)))
    assert small.node == "a100" and [g.vram_bytes for g in small.grants()] == [16 * GI]
    big = s.reserve(pod("big", (160 * GI, 0), cons=Constraints(high_bandwidth=True)))
    assert big.node == "a100" and [g.vram_bytes for g in big.grants()] == [80 * GI, 80 * GI]
    s.check_invariants()


def test_live_target_carries_the_real_cpu_memory_and_model_mix() -> None:
    """The live target workload is built from what was placed: CPU and memory per device share (the
    stranding term's input; zero before this was fixed) and the model constraints (the scarcity term's)."""
    s = state(node("a", [dev(i) for i in range(8)], cpu=64_000, mem=256 * GI),
              node("t", [dev(i, "t4", vram=16 * GI, tflops=65_000) for i in range(8)], cpu=64_000, mem=256 * GI))
    for i in range(20):
        cons = Constraints(models_in=frozenset({"t4"})) if i % 4 == 0 else Constraints()
        s.reserve(PodDemand(PodRef(f"p{i}", "d", f"p{i}"), (ContainerDemand("c", 4 * GI, 0),), cons, 2000, 8 * GI))
    t = s._target("a100-80g")
    assert t.cpu_per_milli > 0 and t.mem_per_milli > 0
    assert t.models == ("a100-80g", "t4")
    assert t.sets is not None and t.sets.tolist() == [[False, True]]  # the t4-only pods
    assert t.set_share is not None and t.set_share[0] == pytest.approx(5 / 20, rel=0.2)  # decayed share
    # on the T4 the same 4Gi request is a quarter of a device, on the A100 a twentieth
    assert s._target("t4").milli.tolist() == [250] and t.milli.tolist() == [50]
