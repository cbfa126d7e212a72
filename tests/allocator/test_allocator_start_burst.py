"""A burst is not all handed to one kubelet (``AllocatorState(start_burst=K)``, issue 15): a node already
starting K pods (reserved, not yet running) ranks after the fitting nodes starting fewer; a running pod,
a released one and one past the window stop counting; with K = 0 the policy's order is untouched."""

from __future__ import annotations

import numpy as np
import pytest

from hcs.allocator import state as state_mod
from hcs.allocator.extender import Extender
from hcs.allocator.placement import GREEDY, ContainerDemand, PodDemand, PodRef
from hcs.allocator.state import AllocatorState
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30
A100 = 312_000


def _inv(node: str) -> NodeInventory:
    devs = tuple(DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{node}-{i}", i, 80 * GI, A100, "nvl0", 100)
                 for i in range(2))
    return NodeInventory(node, devs, 64_000, 512 * GI)


def _pod(uid: str, gib: int = 1) -> PodDemand:
    return PodDemand(PodRef(uid, "default", uid), (ContainerDemand("main", gib * GI, 0),), cpu_milli=0,
                     memory_bytes=0)


def _state(burst: int, nodes: int = 3) -> AllocatorState:
    s = AllocatorState(start_burst=burst)
    for i in range(nodes):
        s.set_node(_inv(f"n{i}"))
    return s


def _place(s: AllocatorState, uid: str) -> str:
    """What the scheduler does with the extender's answer: the top-ranked node, then a bind there."""
    ranking, _ = s.rank(_pod(uid))
    node = str(ranking.table.names[ranking.node[0]])
    s.reserve(_pod(uid), node)
    return node


def test_without_a_burst_limit_binpack_puts_every_pod_of_a_burst_on_one_node() -> None:
    s = _state(0)
    placed = [_place(s, f"p{i}") for i in range(12)]
    assert len(set(placed)) == 1, placed  # the control: binpack alone packs the whole burst
    assert s.starting(placed[0]) == 12  # counted all the same, only not used


def test_a_node_starting_a_full_burst_ranks_after_the_others() -> None:
    s = _state(4)
    nodes = [_place(s, f"p{i}") for i in range(12)]
    # four to one node, then four to the next: no node gets more than one burst while others have none
    assert [nodes.count(n) for n in sorted(set(nodes))] == [4, 4, 4], nodes
    assert nodes[:4] == [nodes[0]] * 4 and nodes[4] != nodes[0]
    # a 13th pod: every node is one burst in, so binpack's order decides again (the first node)
    assert _place(s, "p12") == nodes[0]
    s.check_invariants()


def test_running_released_and_expired_pods_stop_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _state(2, nodes=2)
    first = _place(s, "a")
    assert _place(s, "b") == first and s.starting(first) == 2
    other = _place(s, "c")
    assert other != first
    s.started("a")  # its phase turned Running
    assert s.starting(first) == 1
    assert _place(s, "d") == first  # back to binpack's choice: the fuller node
    s.release("b")
    assert s.starting(first) == 1  # d only
    monkeypatch.setattr(state_mod, "START_WINDOW_S", 0.0)
    assert s.starting(first) == 0 and s.starting(other) == 0  # never-running pods stop counting


def test_a_restored_reservation_counts_as_starting_until_its_pod_runs() -> None:
    src = _state(1, nodes=2)
    src.reserve(_pod("x"), "n0")
    s = _state(1, nodes=2)
    assert s.restore(src.reservations()) == []
    assert s.starting("n0") == 1
    s.started("x")
    assert s.starting("n0") == 0


def test_defer_moves_higher_tiers_last_and_keeps_greedy_plans_last() -> None:
    s = _state(1, nodes=3)
    ranking, _ = s.rank(_pod("probe"))
    base = ranking.table.names[ranking.node].tolist()
    tiers = np.zeros(len(ranking.table.nodes), dtype=np.int64)
    tiers[ranking.node[0]] = 2
    tiers[ranking.node[1]] = 1
    moved = ranking.defer(tiers)
    assert moved.table.names[moved.node].tolist() == [base[2], base[1], base[0]]
    norm = moved.normalised()
    assert norm[0] > norm[1] > norm[2]  # the extender's priorities follow the new order
    assert ranking.defer(np.ones(len(tiers), dtype=np.int64)) is ranking  # all alike: nothing moves
    greedy = type(ranking)(ranking.table, ranking.node, np.array([GREEDY, 5.0, 1.0]), ranking.row, ranking.col,
                           ranking.scope, ranking.why, ranking.cons)
    tiers[:] = 0
    tiers[ranking.node[1]] = 1
    out = greedy.defer(tiers)
    assert out.node.tolist() == [ranking.node[2], ranking.node[1], ranking.node[0]]  # greedy still last


def test_the_extenders_priorities_prefer_a_node_not_starting_a_burst() -> None:
    s = _state(2, nodes=2)
    ext = Extender(s)
    pod = {"metadata": {"name": "p", "namespace": "default", "uid": "p-uid"},
           "spec": {"containers": [{"name": "main", "resources": {"limits": {"ai.compute/vram": "1Gi"}}}]}}

    def top() -> str:
        ext.filter({"Pod": pod, "NodeNames": ["n0", "n1"]})
        scores = {p["Host"]: p["Score"] for p in ext.prioritize({"Pod": pod, "NodeNames": ["n0", "n1"]})}
        assert scores["n0"] != scores["n1"], scores
        return max(scores, key=lambda n: scores[n])

    s.reserve(_pod("a"), "n0")
    assert top() == "n0"  # one starting: binpack's choice (the fuller node) stands
    s.reserve(_pod("b"), "n0")
    assert top() == "n1"  # a full burst: the other node
    s.started("a")
    assert top() == "n0"  # one of them runs: back to binpack
