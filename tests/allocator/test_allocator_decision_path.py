"""The extender's fast decision path agrees with the full planner (issue 18: decisions at 5,000 nodes).

``filter`` answers from ``AllocatorState.rank`` (no device plans, no Verdict objects) and ``prioritize``
from the priorities the filter kept; row-wise policies score each distinct node state once. Each must give
exactly what ``explain`` and the plain policy give.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcs.allocator import placement
from hcs.allocator.extender import MAX_EXTENDER_PRIORITY, Extender, priorities
from hcs.allocator.placement import demand_from_pod
from hcs.allocator.policies import POLICIES, NodeView, PolicyContext, Request, TargetWorkload, get_policy
from hcs.allocator.state import AllocatorState, NoFit
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30
MODELS = {"a100-80g": (80, 312_000), "t4": (16, 65_000), "h100": (80, 600_000)}


def k8s_pod(uid: str, gibs: list[int], **ann: str) -> dict[str, Any]:
    return {"metadata": {"name": uid, "namespace": "default", "uid": uid, "annotations": ann},
            "spec": {"containers": [{"name": f"c{i}", "resources": {"requests": {"ai.compute/vram": f"{g}Gi"}}}
                                    for i, g in enumerate(gibs)]}}


nodes_st = st.lists(st.tuples(st.sampled_from(sorted(MODELS)), st.integers(0, 8), st.sampled_from([100, 100, 70, 20]),
                              st.sampled_from([0, 16_000, 64_000])), min_size=1, max_size=14)


@settings(max_examples=60, deadline=None)
@given(nodes_st, st.lists(st.integers(1, 90), max_size=30), st.lists(st.integers(1, 170), min_size=1, max_size=2),
       st.sampled_from(["", "high-bandwidth"]), st.sampled_from(["", "t4", "!t4"]), st.sampled_from(["", "spread"]),
       st.integers(0, 3))
def test_filter_and_prioritize_agree_with_explain(shape: list[tuple[str, int, int, int]], fill: list[int],
                                                 gibs: list[int], topo: str, model: str, policy: str,
                                                 dup: int) -> None:
    s = AllocatorState()
    names = []
    for i, (m, n, health, cpu) in enumerate(shape * (dup + 1)):  # repeated node shapes, as in a real fleet
        vram, tflops = MODELS[m]
        devs = tuple(DeviceInfo(f"d{j}", "nvidia", m, f"u{i}-{j}", j, vram * GI, tflops, f"i{j // 4}",
                                health if j == 0 else 100) for j in range(n))
        names.append(f"n{i:03d}")
        s.set_node(NodeInventory(names[-1], devs, cpu, 256 * GI if cpu else 0))
    for i, g in enumerate(fill):
        with contextlib.suppress(NoFit):
            d = demand_from_pod(k8s_pod(f"f{i}", [g]))
            assert d is not None
            s.reserve(d)
    ann = {k: v for k, v in (("hcs.io/topology-preference", topo), ("hcs.io/model", model),
                             ("hcs.io/scheduling-policy", policy)) if v}
    pod = k8s_pod("x", gibs, **ann)
    demand = demand_from_pod(pod)
    assert demand is not None
    asked = names[::2] + ["ghost"]
    min_rows = placement.DEDUP_MIN_ROWS
    placement.DEDUP_MIN_ROWS = 0  # distinct-state scoring at any size (it engages from 64 rows)
    try:
        verdicts = s.explain(demand, asked, proposals=0)
    finally:
        placement.DEDUP_MIN_ROWS = min_rows
    ext = Extender(s)
    out = ext.filter({"Pod": pod, "NodeNames": asked})
    assert out["NodeNames"] == [v.node for v in verdicts if v.fits]
    assert out["FailedNodes"] == {v.node: v.reason for v in verdicts if not v.fits}
    expected = {v.node: int(round(v.score * MAX_EXTENDER_PRIORITY / 100)) for v in verdicts if v.fits}
    fit = out["NodeNames"]
    assert ext.prioritize({"Pod": pod, "NodeNames": fit}) == [{"Host": n, "Score": expected[n]} for n in fit]
    # the filter's priorities were taken by that prioritize; without them it ranks afresh, same answer
    assert ext.prioritize({"Pod": pod, "NodeNames": fit}) == [{"Host": n, "Score": expected[n]} for n in fit]


def test_priorities_round_exactly_as_python_does() -> None:
    rng = np.random.default_rng(7)
    near = [b + e for b in (5.0, 15.0, 25.0, 35.0, 45.0, 55.0, 65.0, 75.0, 85.0, 95.0)
            for e in (-1e-3, -5e-4, -4.999e-4, -1e-9, 0.0, 1e-9, 4.999e-4, 5e-4, 1e-3)]
    values = np.array([0.0, 100.0, *near, *(rng.random(2000) * 100).tolist()])
    assert priorities(values) == [int(round(round(x, 3) * MAX_EXTENDER_PRIORITY / 100)) for x in values.tolist()]


@pytest.mark.parametrize("name", sorted(set(POLICIES) - {"random"}))
def test_scoring_distinct_node_states_equals_scoring_every_row(name: str) -> None:
    rng = np.random.default_rng(11)
    target = TargetWorkload.from_requests([Request(1000, GI, 1, 250, frozenset({"a"})), Request(0, 0, 2, 1000),
                                           Request(8000, 0, 1, 500)], models=("a", "b"))
    deduped = 0
    for _ in range(40):
        c, g = int(rng.integers(placement.DEDUP_MIN_ROWS, 400)), int(rng.integers(1, 9))
        states = int(rng.integers(1, 12))
        pick = rng.integers(0, states, size=c)
        free = rng.choice([0, 100, 250, 500, 999, 1000], size=(states, g))[pick]
        cpu = rng.choice([0, 1000, 64_000], size=states)[pick]
        mem = rng.choice([0, GI, 2**39], size=states)[pick]
        view = NodeView(free, np.ones((c, g), dtype=bool), cpu, mem, np.maximum(cpu, 1), np.maximum(mem, 1),
                        rng.choice([0.0, 0.2], size=(states, g))[pick], rng.integers(-1, 2, size=states)[pick])
        count = int(rng.choice([1, 1, 2]))
        req = Request(int(rng.choice([0, 1000])), int(rng.choice([0, GI])), count,
                      1000 if count > 1 else int(rng.choice([100, 250, 500])))
        ctx = PolicyContext(np.random.default_rng(0), target, {}, np.array([5000.0, 300.0]))
        calls: list[int] = []
        policy = get_policy(name)

        def counted(v: NodeView, r: Request, cx: PolicyContext, policy: Any = policy, calls: list[int] = calls) -> Any:
            calls.append(len(v.gpu_free))
            return policy(v, r, cx)

        scorer = placement._Scorer(name)
        scorer.policy = counted
        got = scorer(view, req, ctx)
        assert np.array_equal(got, policy(view, req, ctx), equal_nan=True)
        deduped += calls[0] < c
    assert deduped >= 30  # the distinct-state path ran (a scorer that always scores every row fails here)


def test_a_hash_collision_falls_back_to_scoring_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two different node states with one digest must not share a score: the scorer checks the rows."""
    free = np.array([[1000, 0], [0, 1000]] * 40)
    view = NodeView(free, np.ones(free.shape, dtype=bool), np.full(80, 8000), np.full(80, GI), np.full(80, 8000),
                    np.full(80, GI), None, None)
    real_unique = np.unique

    def colliding(a: Any, **kw: Any) -> Any:  # every row hashes alike
        return real_unique(np.zeros_like(a), **kw)

    monkeypatch.setattr(placement.np, "unique", colliding)
    ctx = PolicyContext(np.random.default_rng(0), None)
    got = placement._Scorer("best-fit")(view, Request(0, 0, 1, 250), ctx)
    monkeypatch.undo()
    assert np.array_equal(got, get_policy("best-fit")(view, Request(0, 0, 1, 250), ctx), equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(nodes_st, st.lists(st.integers(1, 90), max_size=20),
       st.lists(st.tuples(st.integers(0, 13), st.sampled_from(["health", "vram", "cpu", "layout"]),
                          st.integers(0, 100)), min_size=1, max_size=6))
def test_a_changed_computenode_updates_the_kept_table_as_a_rebuild_would(
        shape: list[tuple[str, int, int, int]], fill: list[int], changes: list[tuple[int, str, int]]) -> None:
    """Health or capacity changes patch the planner's table and usage arrays in place (no rebuild at 5,000
    nodes); the result equals a table built afresh, and plans from it equal plans from a fresh table."""
    from dataclasses import fields, replace

    from hcs.allocator.placement import DeviceTable, plan

    s = AllocatorState()
    invs = []
    for i, (m, n, health, cpu) in enumerate(shape):
        vram, tflops = MODELS[m]
        invs.append(NodeInventory(f"n{i:03d}", tuple(DeviceInfo(f"d{j}", "nvidia", m, f"u{i}-{j}", j, vram * GI, tflops,
                                                                f"i{j // 4}", health) for j in range(n)),
                                  cpu, 256 * GI if cpu else 0))
        s.set_node(invs[-1])
    for i, g in enumerate(fill):
        with contextlib.suppress(NoFit):
            d = demand_from_pod(k8s_pod(f"f{i}", [g]))
            assert d is not None
            s.reserve(d)
    for which, what, value in changes:
        inv = invs[which % len(invs)]
        devs = list(inv.devices)
        if what == "health" and devs:
            devs[value % len(devs)] = replace(devs[value % len(devs)], health_score=value)
        elif what == "vram" and devs:
            devs[value % len(devs)] = replace(devs[value % len(devs)], vram_bytes=(value + 80) * GI)  # grows
        elif what == "cpu":
            inv = replace(inv, cpu_milli=value * 1000)
        else:  # another layout (one more device): a rebuild
            m = devs[0].model if devs else "t4"
            devs.append(DeviceInfo(f"d{len(devs)}", "nvidia", m, f"new-{value}", len(devs), MODELS[m][0] * GI,
                                   MODELS[m][1]))
        invs[which % len(invs)] = inv = replace(inv, devices=tuple(devs))
        s.set_node(inv)
        s.check_invariants()  # the kept usage arrays equal fresh ones over the kept table
        kept, fresh = s._device_table(), DeviceTable.build(s.nodes())
        for f in fields(DeviceTable):
            a, b = getattr(kept, f.name), getattr(fresh, f.name)
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, f.name
        demand = demand_from_pod(k8s_pod("x", [value % 90 + 1]))
        assert demand is not None
        usage = {n.name: s.usage(n.name) for n in invs}
        cpu_mem = {r.node: (0, 0) for r in s.reservations()}
        got = [(v.node, v.fits, v.reason, v.score) for v in s.explain(demand)]
        want = [(v.node, v.fits, v.reason, v.score)
                for v in plan(demand, s.nodes(), usage, cpu_mem, s._target, np.random.default_rng(0))]
        assert got == want
