"""``hcs defrag``: move checkpointable pods so whole devices (and whole nodes' worth) come free.

The measure is the allocator's: FGD's expected fragmented capacity :func:`hcs.allocator.policies.
node_fragmentation` of each node's free-device vector, against a target workload of whole-device requests
of 1, 2, 4 and 8 devices (equal popularity). A candidate move takes one opted-in pod (``hcs.io/checkpoint``
``auto`` or ``manual``) off its device onto a free healthy device of another node; the plan greedily takes
the move that lowers the cluster's total fragmentation most, re-plans on the result, and stops when no move
helps. ``--apply`` performs the plan one move at a time through :meth:`Migrator.migrate` with the planned
target node, re-reading the cluster before each move: a move whose target has no free device any more is
skipped, so nothing is ever over-committed (a device holds at most one pod).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hcs.allocator.policies import TargetWorkload, node_fragmentation
from hcs.checkpoint.migrate import ANN_DEVICE, BAD_VERDICTS, CheckpointError, Migrator, mode_of

WHOLE = 1000
TARGET_COUNTS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Move:
    namespace: str
    pod: str
    from_node: str
    to_node: str
    fragmentation_before: float
    fragmentation_after: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _target() -> TargetWorkload:
    n = len(TARGET_COUNTS)
    return TargetWorkload.from_arrays(np.array(TARGET_COUNTS, dtype=np.int64), np.full(n, WHOLE, dtype=np.int64),
                                      np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                                      [frozenset()] * n)


@dataclass
class State:
    nodes: list[str]
    devices: dict[str, list[str]]  # node -> device UUIDs
    used: dict[str, set[str]]  # node -> devices holding a pod
    bad: dict[str, set[str]]  # node -> failing devices (never a target; not counted free)
    movable: list[tuple[str, str, str]]  # (namespace, pod, node) of opted-in running pods

    def free_matrix(self) -> np.ndarray:
        g = max((len(d) for d in self.devices.values()), default=0)
        m = np.zeros((len(self.nodes), g), dtype=np.int64)
        for i, n in enumerate(self.nodes):
            for j, d in enumerate(self.devices[n]):
                m[i, j] = WHOLE if d not in self.used[n] and d not in self.bad[n] else 0
        return m

    def total(self, target: TargetWorkload) -> float:
        free = self.free_matrix()
        cpu = np.full(len(self.nodes), 1 << 40, dtype=np.int64)
        return float(node_fragmentation(target, free, cpu).sum())


def read_state(m: Migrator) -> State:
    nodes = sorted(n for n in m.c.nodes if m.node_ok(n))
    devices = {n: m.c.nodes[n].devices() for n in nodes}
    bad = {n: {u for u, v in m.node_verdicts(n).items() if v in BAD_VERDICTS} for n in nodes}
    used: dict[str, set[str]] = {n: set() for n in nodes}
    movable = []
    for p in m.c.kube.request("GET", "/api/v1/pods").get("items", []):
        node = p["spec"].get("nodeName")
        if node not in used or p.get("status", {}).get("phase") in ("Succeeded", "Failed") or \
                p["metadata"].get("deletionTimestamp"):
            continue
        dev = (p["metadata"].get("annotations") or {}).get(ANN_DEVICE)
        if dev:
            used[node].add(dev)
            if mode_of(p) in ("auto", "manual") and not p["metadata"].get("ownerReferences") and \
                    p.get("status", {}).get("phase") == "Running":
                movable.append((p["metadata"]["namespace"], p["metadata"]["name"], node))
    return State(nodes, devices, used, bad, movable)


def plan(state: State, max_moves: int = 16) -> list[Move]:
    target = _target()
    moves: list[Move] = []
    # which device a pod holds does not matter to the measure (devices are whole and equal): a move frees
    # one device of its node and fills one free device of the target
    for _ in range(max_moves):
        before = state.total(target)
        best: tuple[float, tuple[str, str, str], str] | None = None
        for ns, pod, node in state.movable:
            for to in state.nodes:
                if to == node:
                    continue
                free = [d for d in state.devices[to] if d not in state.used[to] and d not in state.bad[to]]
                if not free:
                    continue
                # simulate: one device on `node` frees, one on `to` fills
                held = next(iter(state.used[node]))
                state.used[node].discard(held)
                state.used[to].add(free[0])
                after = state.total(target)
                state.used[to].discard(free[0])
                state.used[node].add(held)
                if after < before - 1e-9 and (best is None or after < best[0]):
                    best = (after, (ns, pod, node), to)
        if best is None:
            break
        after, (ns, pod, node), to = best
        held = next(iter(state.used[node]))
        state.used[node].discard(held)
        free = [d for d in state.devices[to] if d not in state.used[to] and d not in state.bad[to]]
        state.used[to].add(free[0])
        state.movable = [(a, b, c) if (a, b) != (ns, pod) else (a, b, to) for a, b, c in state.movable]
        moves.append(Move(ns, pod, node, to, round(before, 3), round(after, 3)))
    return moves


def apply(m: Migrator, moves: list[Move]) -> list[dict[str, Any]]:
    """Perform the moves one at a time; each target is re-checked (free device) right before its move."""
    done = []
    current: dict[tuple[str, str], str] = {}
    for mv in moves:
        name = current.get((mv.namespace, mv.pod), mv.pod)
        try:
            res = m.migrate(mv.namespace, name, to_node=mv.to_node, reason="hcs defrag", allow_periodic=False)
        except CheckpointError as e:
            done.append(dict(mv.as_dict(), skipped=str(e)))
            continue
        current[(mv.namespace, mv.pod)] = res.new_pod
        done.append(dict(mv.as_dict(), new_pod=res.new_pod, device=res.device, pause_s=round(res.pause_s, 3)))
    return done
