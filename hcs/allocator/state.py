"""Allocator state: inventory, reservations, usage. One lock; every mutation is all-or-nothing.

Invariants (hypothesis-tested): the VRAM and TFLOPS reserved on a device never exceed what it
offers; releasing a reservation restores usage exactly; a pod holds at most one reservation.
The API server is the source of truth: :meth:`AllocatorState.restore` rebuilds reservations from
pods' ``hcs.io/assignment`` annotations after a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hcs.allocator.fastpath import DeviceTable, fast_plan
from hcs.allocator.inventory import NodeInventory
from hcs.allocator.placement import (
    ContainerDemand,
    Grant,
    PodDemand,
    PodRef,
    Verdict,
    device_count,
    plan,
    share_milli,
)
from hcs.allocator.policies import Request, TargetWorkload
from hcs.errors import HcsError

log = logging.getLogger(__name__)

PENDING = "pending"
CONFIRMED = "confirmed"
#: default request mix (device shares) until enough real requests have been seen
DEFAULT_MIX = (250, 500, 500, 1000, 1000, 1000)


class NoFit(HcsError):
    """No node can take the request; ``verdicts`` say why, per node."""

    def __init__(self, message: str, verdicts: Sequence[Verdict] = ()) -> None:
        super().__init__(message)
        self.verdicts = tuple(verdicts)


class Conflict(HcsError):
    """The request conflicts with existing state (e.g. pod already reserved on another node)."""


@dataclass(frozen=True)
class Reservation:
    pod: PodRef
    node: str
    containers: tuple[tuple[str, tuple[Grant, ...]], ...]
    state: str = PENDING
    reserved_at_ms: int = 0
    cpu_milli: int = 0
    memory_bytes: int = 0

    def grants(self) -> Iterable[Grant]:
        for _, gs in self.containers:
            yield from gs


class AllocatorState:
    def __init__(self, seed: int = 0, history: int = 256) -> None:
        self._lock = threading.RLock()
        self._nodes: dict[str, NodeInventory] = {}
        self._res: dict[str, Reservation] = {}
        self._usage: dict[str, dict[str, tuple[int, int]]] = {}
        self._cpu_mem: dict[str, tuple[int, int]] = {}
        self._rng = np.random.default_rng(seed)
        self._recent: deque[ContainerDemand] = deque(maxlen=history)
        self._targets: dict[str, TargetWorkload] = {}
        self._table: DeviceTable | None = None
        self._used: tuple[Any, Any] | None = None  # (R, W) arrays in step with _usage while _table lives
        self.version = 0  # bumped by every change of inventory or usage

    # ------------------------------------------------------------------ inventory
    def set_node(self, inv: NodeInventory) -> None:
        with self._lock:
            if self._nodes.get(inv.name) != inv:
                self._nodes[inv.name] = inv
                self._table = self._used = None
                self.version += 1

    def remove_node(self, name: str) -> None:
        """The ComputeNode went away: no new placements there; existing reservations stay (the pods
        are bound) until released."""
        with self._lock:
            if self._nodes.pop(name, None) is not None:
                self._table = self._used = None
                self.version += 1

    def nodes(self) -> list[NodeInventory]:
        with self._lock:
            return list(self._nodes.values())

    # ------------------------------------------------------------------ queries
    def reservation(self, uid: str) -> Reservation | None:
        with self._lock:
            return self._res.get(uid)

    def reservations(self, node: str | None = None) -> list[Reservation]:
        with self._lock:
            out = [r for r in self._res.values() if node is None or r.node == node]
        return sorted(out, key=lambda r: (r.pod.created_ms, r.reserved_at_ms, r.pod.uid))

    def usage(self, node: str) -> dict[str, tuple[int, int]]:
        with self._lock:
            return dict(self._usage.get(node, {}))

    # ------------------------------------------------------------------ policy input
    def _target(self, model: str) -> TargetWorkload:
        cached = self._targets.get(model)
        if cached is not None:
            return cached
        node = next((n for n in self._nodes.values() for d in n.devices if d.model == model), None)
        dev = next(d for d in node.devices if d.model == model) if node else None
        reqs: list[Request] = []
        if dev is not None and len(self._recent) >= 16:
            for c in self._recent:
                k = device_count(c, dev)
                reqs.append(Request(0, 0, k, share_milli(c, dev) if k == 1 else 1000))
        if not reqs:
            reqs = [Request(0, 0, 1, m) for m in DEFAULT_MIX]
        target = TargetWorkload.from_requests(reqs)
        self._targets[model] = target
        return target

    def explain(self, demand: PodDemand, nodes: Sequence[str] | None = None, proposals: int = 16) -> list[Verdict]:
        """Verdicts per node, best first; the best ``proposals`` fitting nodes carry a device plan."""
        with self._lock:
            wanted = set(nodes) if nodes else None  # a set: `in` on the scheduler's list was O(nodes²)
            missing = [n for n in (nodes or []) if n not in self._nodes]
            if len(demand.containers) == 1:
                if self._table is None or self._used is None:
                    self._table = DeviceTable.build(list(self._nodes.values()))
                    self._used = self._table.scatter(self._usage)
                verdicts = fast_plan(demand, self._table, self._usage, self._cpu_mem, self._target, self._rng,
                                     wanted, proposals, self._used)
            else:
                inv = [n for n in self._nodes.values() if wanted is None or n.name in wanted]
                verdicts = plan(demand, inv, self._usage, self._cpu_mem, self._target, self._rng)
        return verdicts + [Verdict(n, False, "no ComputeNode for this node (no HCS node agent reporting)")
                           for n in missing]

    # ------------------------------------------------------------------ mutations
    def reserve(self, demand: PodDemand, node: str | None = None) -> Reservation:
        """Reserve devices for a pod (on ``node`` if given). Idempotent per pod uid."""
        if not demand.pod.uid:
            raise Conflict(f"pod {demand.pod.ref}: no uid; reservations are keyed by pod uid")
        with self._lock:
            have = self._res.get(demand.pod.uid)
            if have is not None:
                if node and have.node != node:
                    raise Conflict(f"pod {demand.pod.ref} already holds devices on node {have.node}, not {node}; "
                                   "release it first")
                return have
            if node and node not in self._nodes:
                raise NoFit(f"pod {demand.pod.ref}: node {node} has no ComputeNode (no HCS node agent reporting)",
                            [Verdict(node, False, "no ComputeNode")])
            verdicts = self.explain(demand, [node] if node else None, proposals=1)
            best = next((v for v in verdicts if v.fits and v.plan is not None), None)
            if best is None or best.plan is None:
                reasons = "; ".join(f"{v.node}: {v.reason}" for v in verdicts[:5]) or "no nodes with HCS devices"
                raise NoFit(f"pod {demand.pod.ref} fits no node ({reasons})", verdicts)
            res = Reservation(demand.pod, best.plan.node, best.plan.containers, PENDING,
                              int(time.time() * 1000), demand.cpu_milli, demand.memory_bytes)
            self._apply(res)
            self._recent.extend(demand.containers)
            if len(self._recent) >= 16:
                self._targets.clear()
            return res

    def _apply(self, res: Reservation, sign: int = 1) -> None:
        self.version += 1
        inv = self._nodes.get(res.node)
        nu = self._usage.setdefault(res.node, {})
        if sign > 0 and inv is not None:  # check everything before changing anything
            for g in res.grants():
                d = inv.device(g.device)
                u = nu.get(g.device, (0, 0))
                if d is None:
                    raise Conflict(f"node {res.node} has no device {g.device}")
                if u[0] + g.vram_bytes > d.vram_bytes or u[1] + g.tflops_milli > d.tflops_milli:
                    raise Conflict(f"device {res.node}/{g.device} cannot hold pod {res.pod.ref}'s grant "
                                   f"({g.vram_bytes} B): would over-commit")
        for g in res.grants():
            u = nu.get(g.device, (0, 0))
            nu[g.device] = (u[0] + sign * g.vram_bytes, u[1] + sign * g.tflops_milli)
            if nu[g.device] == (0, 0):
                del nu[g.device]
            self._track(res.node, g, sign)
        cm = self._cpu_mem.get(res.node, (0, 0))
        self._cpu_mem[res.node] = (cm[0] + sign * res.cpu_milli, cm[1] + sign * res.memory_bytes)
        if self._cpu_mem[res.node] == (0, 0):
            del self._cpu_mem[res.node]
        if not nu:
            del self._usage[res.node]
        if sign > 0:
            self._res[res.pod.uid] = res
        else:
            self._res.pop(res.pod.uid, None)

    def confirm(self, uid: str, node: str = "") -> Reservation:
        with self._lock:
            res = self._res.get(uid)
            if res is None:
                raise NoFit(f"pod uid {uid}: no reservation to confirm; it was released or never made")
            if node and res.node != node:
                raise Conflict(f"pod {res.pod.ref} is reserved on node {res.node}, not {node}")
            res = replace(res, state=CONFIRMED)
            self._res[uid] = res
            return res

    def release(self, uid: str) -> Reservation | None:
        with self._lock:
            res = self._res.get(uid)
            if res is not None:
                self._apply(res, -1)
            return res

    def restore(self, reservations: Iterable[Reservation]) -> list[str]:
        """Adopt reservations read back from pod annotations; returns problems (never raises)."""
        problems = []
        with self._lock:
            for r in reservations:
                if r.pod.uid in self._res:
                    continue
                try:
                    self._apply(r)
                except Conflict as exc:
                    problems.append(f"pod {r.pod.ref}: {exc}")
                    # keep the bound pod's claim anyway so nothing else is placed on top of it
                    self._apply_unchecked(r)
        return problems

    def _apply_unchecked(self, r: Reservation) -> None:
        self.version += 1
        nu = self._usage.setdefault(r.node, {})
        for g in r.grants():
            u = nu.get(g.device, (0, 0))
            nu[g.device] = (u[0] + g.vram_bytes, u[1] + g.tflops_milli)
            self._track(r.node, g, 1)
        self._res[r.pod.uid] = r

    def _track(self, node: str, g: Grant, sign: int) -> None:
        """Keep the fast path's usage arrays in step with ``_usage``."""
        if self._table is None or self._used is None:
            return
        rc = self._table.where.get((node, g.device))
        if rc is not None:
            self._used[0][rc] += sign * g.vram_bytes
            self._used[1][rc] += sign * g.tflops_milli

    def check_invariants(self) -> None:
        """Raise AssertionError if usage differs from the sum of reservations or exceeds capacity."""
        with self._lock:
            total: dict[str, dict[str, tuple[int, int]]] = {}
            for r in self._res.values():
                nu = total.setdefault(r.node, {})
                for g in r.grants():
                    u = nu.get(g.device, (0, 0))
                    nu[g.device] = (u[0] + g.vram_bytes, u[1] + g.tflops_milli)
            assert {n: {d: u for d, u in m.items() if u != (0, 0)} for n, m in total.items()
                    if any(u != (0, 0) for u in m.values())} == self._usage
            if self._table is not None and self._used is not None:
                uv, ut = self._table.scatter(self._usage)
                assert (uv == self._used[0]).all() and (ut == self._used[1]).all(), "fast-path usage drifted"
            for name, nu in self._usage.items():
                inv = self._nodes.get(name)
                if inv is None:
                    continue
                for dev, (v, t) in nu.items():
                    d = inv.device(dev)
                    assert d is not None and v <= d.vram_bytes and t <= d.tflops_milli, (name, dev, v, t)


def usage_of(reservations: Iterable[Reservation]) -> Mapping[str, Mapping[str, tuple[int, int]]]:
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for r in reservations:
        nu = out.setdefault(r.node, {})
        for g in r.grants():
            u = nu.get(g.device, (0, 0))
            nu[g.device] = (u[0] + g.vram_bytes, u[1] + g.tflops_milli)
    return out
