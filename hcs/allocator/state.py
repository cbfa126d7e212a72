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
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from hcs.allocator.placement import (
    NO_COMPUTENODE,
    Constraints,
    ContainerDemand,
    DeviceTable,
    Grant,
    PodDemand,
    PodRef,
    Ranking,
    TableUsage,
    Verdict,
    plan_table,
    rank_table,
)
from hcs.allocator.policies import FloatArray, IntArray, RecentMix, TargetWorkload, default_target
from hcs.cluster_inventory import NodeInventory
from hcs.errors import HcsError

log = logging.getLogger(__name__)

PENDING = "pending"
#: how long a reserved pod counts as starting on its node at most (one that never runs stops counting)
START_WINDOW_S = 60.0
CONFIRMED = "confirmed"
#: one recorded request of the live mix: a container's demand, the pod's CPU and memory (on its first
#: container), its vendor/model constraints
MixItem = tuple[ContainerDemand, int, int, Constraints]
#: the mix as arrays: VRAM, milli-TFLOPS, CPU, memory, allowed models (empty: any), weights
MixArrays = tuple[FloatArray, FloatArray, IntArray, IntArray, list[frozenset[str]], FloatArray]


class NoFit(HcsError):
    """No node can take the request; ``verdicts`` say why, per node."""

    def __init__(self, message: str, verdicts: Sequence[Verdict] | Callable[[], Sequence[Verdict]] = ()) -> None:
        super().__init__(message)
        self._verdicts = verdicts

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        """Per node (computed on first use when the refusal was made without them)."""
        if callable(self._verdicts):
            self._verdicts = tuple(self._verdicts())
        return tuple(self._verdicts)


class Conflict(HcsError):
    """The request conflicts with existing state (e.g. pod already reserved on another node)."""


@dataclass(frozen=True)
class RestoreConflict:
    """A restored reservation that overlapped earlier pods' and was not adopted."""

    loser: Reservation
    winners: tuple[Reservation, ...]
    reason: str


@dataclass(frozen=True)
class Reservation:
    pod: PodRef
    node: str
    containers: tuple[tuple[str, tuple[Grant, ...]], ...]
    state: str = PENDING
    reserved_at_ms: int = 0
    cpu_milli: int = 0
    memory_bytes: int = 0
    #: the pod is bound (or its Binding is on its way): its grant is a fact a restore never takes away
    bound: bool = False

    def grants(self) -> Iterable[Grant]:
        for _, gs in self.containers:
            yield from gs


def _age(r: Reservation) -> tuple[int, int, str]:
    """Who came first (conflicts in :meth:`AllocatorState.restore`: the later pod loses)."""
    return (r.pod.created_ms, r.reserved_at_ms, r.pod.uid)


def _precedence(first: Callable[[Reservation], bool] | None) -> Callable[[Reservation], tuple[int, int, int, str]]:
    """Restore order: bound pods (and those ``first`` names, e.g. binds in flight) before all others, then
    by age. A bound pod's grant is a fact (its containers may already use the devices), so it never loses
    to an unbound pod's record, whatever their ages."""
    def key(r: Reservation) -> tuple[int, int, int, str]:
        return (0 if r.bound or (first is not None and first(r)) else 1, *_age(r))
    return key


class AllocatorState:
    """``start_burst``: see :meth:`rank` (0: off, the planner's order as is)."""

    def __init__(self, seed: int = 0, history: int = 256, decay: float = 0.99, start_burst: int = 0) -> None:
        self._lock = threading.RLock()
        self._nodes: dict[str, NodeInventory] = {}
        self._res: dict[str, Reservation] = {}
        self._usage: dict[str, dict[str, tuple[int, int]]] = {}
        self._cpu_mem: dict[str, tuple[int, int]] = {}
        self._rng = np.random.default_rng(seed)
        self._mix: RecentMix[MixItem] = RecentMix(history, decay)
        #: (device VRAM, milli-TFLOPS) -> (generation, table, target): the target in that device's units
        self._targets: dict[tuple[int, int], tuple[int, object, TargetWorkload]] = {}
        self._mix_cache: tuple[int, object, MixArrays | None] | None = None
        #: the mix's items converted for the planner's table (aligned with the newest items)
        self._rows: deque[tuple[int, int, int, int, frozenset[str]]] = deque(maxlen=history)
        self._rows_of: tuple[object, int] = (None, 0)  # (table, mix generation converted up to)
        self._table: DeviceTable | None = None
        self._used: TableUsage | None = None  # arrays in step with _usage and _cpu_mem while _table lives
        self.version = 0  # bumped by every change of inventory or usage
        self.start_burst = start_burst
        #: pods reserved but not yet seen running, oldest first: uid -> (node, monotonic time reserved)
        self._starting: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._starting_on: Counter[str] = Counter()  # node -> how many of them
        self._busy: set[str] = set()  # nodes starting at least start_burst (what rank looks at)

    # ------------------------------------------------------------------ inventory
    def set_node(self, inv: NodeInventory) -> None:
        with self._lock:
            if self._nodes.get(inv.name) != inv:
                self._nodes[inv.name] = inv
                # health or capacity only: the planner's table and usage arrays change in place of a rebuild
                table = self._table.replace_node(inv) if self._table is not None else None
                if table is None or self._used is None:
                    self._table = self._used = None
                else:
                    self._table = table
                    self._used.refresh(table, table.node_index[inv.name])
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
        """The live target workload in ``model``'s units: the recent request mix (real CPU, memory,
        device shape on this model, and which of the cluster's models each request may use)."""
        table = self._device_table()
        dev = table.reference.get(model)
        key = (dev.vram_bytes, dev.tflops_milli) if dev is not None else (0, 0)  # models alike share one
        cached = self._targets.get(key)
        if cached is not None and cached[0] == self._mix.generation and cached[1] is table:
            return cached[2]
        mix = self._mix_arrays(table)
        if mix is None or dev is None or dev.vram_bytes <= 0:
            target = default_target(table.models)
        else:
            vram, tfl, cpu, mem, allowed, weights = mix
            # device_count / share_milli of every recorded container on this model, vectorised
            fv = vram / dev.vram_bytes
            ft = tfl / dev.tflops_milli if dev.tflops_milli else np.where(tfl > 0, np.inf, 0.0)
            frac = np.minimum(np.maximum(fv, ft), 1e12)
            k = np.where(frac <= 1.0, 1, np.ceil(frac - 1e-9)).astype(np.int64)
            share = np.maximum(fv, tfl / dev.tflops_milli if dev.tflops_milli else 0.0)
            milli = np.where(k == 1, np.maximum(1, np.ceil(1000 * share - 1e-9)), 1000).astype(np.int64)
            target = TargetWorkload.from_arrays(k, milli, cpu, mem, allowed, models=table.models, weights=weights)
        self._targets[key] = (self._mix.generation, table, target)
        return target

    def _mix_arrays(self, table: DeviceTable) -> MixArrays | None:
        """The recorded mix as arrays (VRAM, milli-TFLOPS, CPU, memory, allowed models, weights), once
        per generation; None while warming up."""
        if self._mix_cache is not None and self._mix_cache[0] == self._mix.generation and self._mix_cache[1] is table:
            return self._mix_cache[2]
        got = self._mix.entries()
        out = None
        if got is not None:
            items, weights = got
            if self._rows_of[0] is not table:  # allowed sets are over this inventory's models
                self._rows_of = (table, self._mix.generation - len(items))
                self._rows.clear()
            new = min(len(items), self._mix.generation - self._rows_of[1])
            everything = frozenset(table.models)
            for c, cpu, mem, cons in items[len(items) - new:]:  # each item converted once
                a = frozenset(m for m, d in table.reference.items() if cons.allows(d))
                a = frozenset() if a == everything else a or frozenset({"\0none"})
                self._rows.append((c.vram_bytes, c.tflops_milli, cpu, mem, a))
            self._rows_of = (table, self._mix.generation)
            rows = list(self._rows)
            cols = np.array([r[:4] for r in rows], dtype=np.float64).reshape(-1, 4)
            out = (cols[:, 0], cols[:, 1], np.array([r[2] for r in rows], dtype=np.int64),
                   np.array([r[3] for r in rows], dtype=np.int64), [r[4] for r in rows], weights)
        self._mix_cache = (self._mix.generation, table, out)
        return out

    def _device_table(self) -> DeviceTable:
        if self._table is None or self._used is None:
            self._table = DeviceTable.build(list(self._nodes.values()))
            self._used = TableUsage.of(self._table, self._usage, self._cpu_mem)
        return self._table

    def explain(self, demand: PodDemand, nodes: Sequence[str] | None = None, proposals: int = 16,
                best_only: bool = False) -> list[Verdict]:
        """Verdicts per node, best first; the best ``proposals`` fitting nodes carry a device plan
        (``best_only``: only those, no reasons — empty when nothing fits)."""
        with self._lock:
            missing = [n for n in (nodes or []) if n not in self._nodes]
            table = self._device_table()
            verdicts = plan_table(demand, table, self._usage, self._cpu_mem, self._target, self._rng,
                                  set(nodes) if nodes else None, proposals, self._used, best_only)
        if best_only:
            return verdicts
        return verdicts + [Verdict(n, False, NO_COMPUTENODE) for n in missing]

    def rank(self, demand: PodDemand, nodes: Sequence[str] | None = None) -> tuple[Ranking, list[str]]:
        """What :meth:`explain` decides without device plans or verdict objects (the extender's filter):
        the fitting nodes best first, why the others are out; and the names asked about that have no
        ComputeNode.

        With ``start_burst`` > 0, a node already starting that many pods (reserved, not yet running) ranks
        after the fitting nodes starting fewer bursts (:meth:`Ranking.defer`): the policy packs the steady
        state, but a burst of pods is not all handed to one kubelet, which starts them one after another
        at about half the speed (issue 15's measurement). Only the ranking moves; every fit check is the
        planner's."""
        with self._lock:
            missing = [n for n in (nodes or []) if n not in self._nodes]
            table = self._device_table()
            ranking = rank_table(demand, table, self._usage, self._cpu_mem, self._target, self._rng,
                                 nodes or None, 0, self._used)
            if self.start_burst > 0:
                ranking = ranking.defer(self._start_tiers(table))
        return ranking, missing

    def _start_tiers(self, table: DeviceTable) -> IntArray:
        """``(N,)`` per node of the table: how many full bursts of pods it is starting (pods reserved there
        in the last :data:`START_WINDOW_S` and not yet running, // ``start_burst``)."""
        self._expire_starting()
        tiers = np.zeros(len(table.nodes), dtype=np.int64)
        index = table.node_index
        for node in self._busy:
            ni = index.get(node)
            if ni is not None:
                tiers[ni] = self._starting_on[node] // self.start_burst
        return tiers

    def _expire_starting(self) -> None:
        horizon = time.monotonic() - START_WINDOW_S
        while self._starting:
            uid, (node, at) = next(iter(self._starting.items()))
            if at > horizon:
                break
            self._drop_starting(uid)

    def _drop_starting(self, uid: str) -> None:
        got = self._starting.pop(uid, None)
        if got is None:
            return
        node, left = got[0], self._starting_on[got[0]] - 1
        if left > 0:
            self._starting_on[node] = left
        else:
            del self._starting_on[node]
        if left < self.start_burst:
            self._busy.discard(node)

    def _add_starting(self, r: Reservation) -> None:
        self._drop_starting(r.pod.uid)
        self._starting[r.pod.uid] = (r.node, time.monotonic())
        self._starting_on[r.node] += 1
        if self.start_burst > 0 and self._starting_on[r.node] >= self.start_burst:
            self._busy.add(r.node)

    def started(self, uid: str) -> None:
        """The pod runs (its phase says so): it no longer counts as starting on its node (:meth:`rank`)."""
        with self._lock:
            self._drop_starting(uid)

    def starting(self, node: str) -> int:
        """Pods reserved on ``node`` in the last :data:`START_WINDOW_S` that are not yet running."""
        with self._lock:
            self._expire_starting()
            return self._starting_on.get(node, 0)

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
            verdicts = self.explain(demand, [node] if node else None, proposals=1, best_only=True)
            best = next((v for v in verdicts if v.fits and v.plan is not None), None)
            if best is None or best.plan is None:
                # the reasons for the message only (every node's verdict is computed if asked for)
                head = self.explain(demand, [node] if node else sorted(self._nodes)[:5], proposals=1)
                reasons = "; ".join(f"{v.node}: {v.reason}" for v in head[:5]) or "no nodes with HCS devices"
                scope = [node] if node else None
                raise NoFit(f"pod {demand.pod.ref} fits no node ({reasons})",
                            lambda: self.explain(demand, scope, proposals=1))
            res = Reservation(demand.pod, best.plan.node, best.plan.containers, PENDING,
                              int(time.time() * 1000), demand.cpu_milli, demand.memory_bytes)
            self._apply(res)
            self._add_starting(res)
            for i, c in enumerate(demand.containers):
                self._mix.add((c, demand.cpu_milli if i == 0 else 0, demand.memory_bytes if i == 0 else 0,
                               demand.constraints))
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
        if self._table is not None and self._used is not None and res.node in self._table.node_index:
            self._used.add_host(self._table.node_index[res.node], sign * res.cpu_milli, sign * res.memory_bytes)
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
            self._drop_starting(uid)
            return res

    def mark_bound(self, uid: str, bound: bool = True) -> None:
        """Record that the pod is bound (no change of usage)."""
        with self._lock:
            res = self._res.get(uid)
            if res is not None and res.bound != bound:
                self._res[uid] = replace(res, bound=bound)

    def restore(self, reservations: Iterable[Reservation],
                on_conflict: Callable[[RestoreConflict], None] | None = None,
                first: Callable[[Reservation], bool] | None = None) -> list[str]:
        """Adopt reservations read back from pod annotations; returns problems (never raises).

        Never over-commits: when records overlap (a bug, a split brain, a forged record that got past
        the integrity check), deterministic precedence decides: bound pods (``Reservation.bound``) and
        those ``first`` names (the caller's binds in flight) before the others, then the earliest pod
        (creation time, then reservation time, then uid) keeps its devices and every later overlapping
        pod loses its reservation — including one this allocator already held. Each loser is reported to
        ``on_conflict`` (the caller posts an Event on the pod and counts it) and in the returned problems.
        """
        problems: list[str] = []
        lost: list[RestoreConflict] = []
        with self._lock:
            fresh: dict[str, Reservation] = {}
            for r in reservations:
                if r.pod.uid and r.pod.uid not in self._res:
                    fresh.setdefault(r.pod.uid, r)
            clashing: list[Reservation] = []
            order = _precedence(first)
            for r in sorted(fresh.values(), key=order):
                if self._overcommit(r) is None:
                    self._apply(r)
                    self._add_starting(r)  # until the caller says it runs (KubeSync: its phase)
                else:
                    clashing.append(r)
            if clashing:
                # earliest pod wins: rebuild usage from every reservation in age order
                everyone = sorted([*self._res.values(), *clashing], key=order)
                adopted = {id(r) for r in clashing}
                for r in list(self._res.values()):
                    self._apply(r, -1)
                for r in everyone:
                    why = self._overcommit(r)
                    if why is None:
                        self._apply(r)
                        if id(r) in adopted:
                            self._add_starting(r)
                        continue
                    self._drop_starting(r.pod.uid)
                    winners = tuple(w for w in self._res.values() if w.node == r.node and
                                    {g.device for g in w.grants()} & {g.device for g in r.grants()})
                    lost.append(RestoreConflict(r, winners, why))
        for c in lost:
            held_by = ", ".join(f"{w.pod.ref} (uid {w.pod.uid})" for w in c.winners) or "capacity"
            problems.append(f"pod {c.loser.pod.ref}: its devices on {c.loser.node} are held by the earlier "
                            f"{held_by}: {c.reason}; reservation not adopted (the later pod loses)")
            if on_conflict is not None:
                try:
                    on_conflict(c)
                except Exception:  # reporting must not undo the restore
                    log.exception("reporting the conflict of pod %s failed", c.loser.pod.ref)
        return problems

    def _overcommit(self, r: Reservation) -> str | None:
        """Why adopting ``r`` would over-commit a device (None: it fits; unknown nodes are not checked)."""
        inv = self._nodes.get(r.node)
        if inv is None:
            return None
        nu = self._usage.get(r.node, {})
        extra: dict[str, tuple[int, int]] = {}
        for g in r.grants():
            d = inv.device(g.device)
            if d is None:
                return f"node {r.node} has no device {g.device}"
            u = extra.get(g.device, nu.get(g.device, (0, 0)))
            u = (u[0] + g.vram_bytes, u[1] + g.tflops_milli)
            extra[g.device] = u
            if g.vram_bytes < 0 or g.tflops_milli < 0 or u[0] > d.vram_bytes or u[1] > d.tflops_milli:
                return (f"device {r.node}/{g.device} cannot hold its grant of {g.vram_bytes} B "
                        f"({u[0]} of {d.vram_bytes} B with the earlier pods')")
        return None

    def _track(self, node: str, g: Grant, sign: int) -> None:
        """Keep the fast path's usage arrays in step with ``_usage``."""
        if self._table is None or self._used is None:
            return
        rc = self._table.where.get((node, g.device))
        if rc is not None:
            self._used.add(self._table, rc, sign * g.vram_bytes, sign * g.tflops_milli)

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
                fresh = TableUsage.of(self._table, self._usage, self._cpu_mem)
                kept = self._used
                assert all((getattr(fresh, f) == getattr(kept, f)).all() for f in (
                    "vram", "tflops", "cpu", "mem", "free_vram", "free_tflops", "free", "row_free")), \
                    "fast-path usage drifted"
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
