"""Placement of real pod requests on ComputeNode devices, with the same policy core as the replay.

A container asks for ``ai.compute/vram`` (bytes) and/or ``ai.compute/tflops-fp16`` (A100-equivalent
TFLOPS). On a device of a given model the request's *binding fraction* is
``max(vram / device_vram, tflops / device_tflops)``; in milli-devices this is exactly the openb
``gpu_milli`` share the replay uses, so real placement and the replay share one scoring core.

- A request that fits one device of a model goes on one device (fractional share).
- A larger request takes ``k`` whole idle devices of one model; with
  ``hcs.io/topology-preference: high-bandwidth`` all ``k`` must be in one interconnect island,
  otherwise one island is preferred. Each device's quota is an even split of the request.
- Unhealthy devices are excluded; degraded ones are penalised in the score.
- ``hcs.io/vendor`` / ``hcs.io/model`` include lists, ``!x`` excludes.
- ``hcs.io/scheduling-policy``: ``binpack`` (default, the fragmentation-aware ``hcs`` policy) or
  ``spread``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hcs.allocator.policies import WHOLE, NodeView, PolicyContext, Request, TargetWorkload, get_policy
from hcs.cluster_inventory import DeviceInfo, NodeInventory
from hcs.devices.catalog import default_catalog
from hcs.devices.model import Vendor
from hcs.errors import HcsError
from hcs.podspec import created_ms
from hcs.quantity import parse_bytes, parse_quantity

VRAM = "ai.compute/vram"
#: Largest request the allocator considers, per container (VRAM 1 PiB, 10^9 TFLOPS) and per pod (host
#: CPU, memory): far beyond any node, small enough that placement arithmetic (int64) cannot overflow.
MAX_VRAM_BYTES = 2**50
MAX_TFLOPS_MILLI = 10**12
MAX_HOST_AMOUNT = 2**53
TFLOPS = "ai.compute/tflops-fp16"
ANN_TOPOLOGY = "hcs.io/topology-preference"
ANN_VENDOR = "hcs.io/vendor"
ANN_MODEL = "hcs.io/model"
ANN_POLICY = "hcs.io/scheduling-policy"
ANN_ASSIGNMENT = "hcs.io/assignment"


class RequestError(HcsError):
    """A pod's accelerator request or HCS annotations are malformed (names the pod and field)."""


@dataclass(frozen=True)
class PodRef:
    uid: str
    namespace: str = ""
    name: str = ""
    created_ms: int = 0

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ContainerDemand:
    name: str
    vram_bytes: int
    tflops_milli: int


@dataclass(frozen=True)
class Constraints:
    high_bandwidth: bool = False
    vendors_in: frozenset[str] = frozenset()
    vendors_out: frozenset[str] = frozenset()
    models_in: frozenset[str] = frozenset()
    models_out: frozenset[str] = frozenset()
    policy: str = "binpack"

    def allows(self, d: DeviceInfo) -> bool:
        if self.vendors_in and d.vendor not in self.vendors_in:
            return False
        if d.vendor in self.vendors_out:
            return False
        if self.models_in and d.model not in self.models_in:
            return False
        return d.model not in self.models_out


@dataclass(frozen=True)
class PodDemand:
    pod: PodRef
    containers: tuple[ContainerDemand, ...]
    constraints: Constraints = field(default_factory=Constraints)
    cpu_milli: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class Grant:
    device: str  # node-unique device name
    uuid: str
    index: int
    vendor: str
    model: str
    island: str
    vram_bytes: int
    tflops_milli: int


@dataclass(frozen=True)
class Plan:
    node: str
    containers: tuple[tuple[str, tuple[Grant, ...]], ...]
    score: float


@dataclass(frozen=True)
class Verdict:
    node: str
    fits: bool
    reason: str
    score: float = 0.0  # 0..100 among fitting nodes, higher is better
    plan: Plan | None = None


#: device name -> (vram bytes used, milli-TFLOPS used)
Usage = Mapping[str, tuple[int, int]]
TargetFor = Callable[[str], TargetWorkload]


# --------------------------------------------------------------------------- parsing


def _split(value: str, where: str, known: set[str] | None) -> tuple[frozenset[str], frozenset[str]]:
    inc: set[str] = set()
    exc: set[str] = set()
    for raw in value.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        neg = item.startswith("!")
        name = item[1:].strip() if neg else item
        if not name:
            raise RequestError(f"{where}: empty entry after '!'; write e.g. '!nvidia'")
        if known is not None and name not in known:
            raise RequestError(f"{where}: unknown value {name!r}; known: {', '.join(sorted(known))}")
        (exc if neg else inc).add(name)
    return frozenset(inc), frozenset(exc)


def parse_constraints(annotations: Mapping[str, str], where: str = "pod") -> Constraints:
    topo = str(annotations.get(ANN_TOPOLOGY, "") or "").strip().lower()
    if topo not in ("", "high-bandwidth", "none", "any"):
        raise RequestError(f"{where} annotation {ANN_TOPOLOGY}={topo!r}: use 'high-bandwidth' or leave it unset")
    policy = str(annotations.get(ANN_POLICY, "") or "binpack").strip().lower()
    if policy not in ("binpack", "spread"):
        raise RequestError(f"{where} annotation {ANN_POLICY}={policy!r}: use 'binpack' or 'spread'")
    vin, vout = _split(str(annotations.get(ANN_VENDOR, "") or ""), f"{where} annotation {ANN_VENDOR}",
                       {str(v) for v in Vendor})
    models = {m.id for m in default_catalog().models}
    min_, mout = _split(str(annotations.get(ANN_MODEL, "") or ""), f"{where} annotation {ANN_MODEL}", models)
    return Constraints(topo == "high-bandwidth", vin, vout, min_, mout, policy)


def demand_from_pod(pod: Mapping[str, Any]) -> PodDemand | None:
    """A pod (API JSON dict) → its accelerator demand; None when it asks for none. Raises RequestError."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    where = f"pod {meta.get('namespace', '')}/{meta.get('name', '')}"
    containers = []
    cpu = mem = 0
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        req = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        at = f"{where} container {c.get('name', '')}"
        try:
            cpu += int(parse_quantity(str(req.get("cpu", "0")), field=f"{at} cpu") * 1000)
            mem += parse_bytes(str(req.get("memory", "0")), field=f"{at} memory")
            vram = parse_bytes(str(req[VRAM]), field=f"{at} {VRAM}") if VRAM in req else 0
            tfl = parse_quantity(str(req[TFLOPS]), field=f"{at} {TFLOPS}") if TFLOPS in req else 0
        except HcsError as exc:
            raise RequestError(str(exc)) from exc
        if tfl < 0:
            raise RequestError(f"{at} {TFLOPS}: must be >= 0")
        if vram > MAX_VRAM_BYTES or tfl * 1000 > MAX_TFLOPS_MILLI or max(cpu, mem) > MAX_HOST_AMOUNT:
            raise RequestError(f"{at}: the request is larger than any node could hold (at most 1Pi "
                               f"{VRAM}, 1e9 {TFLOPS}); ask for what the workload needs")
        if vram or tfl:
            containers.append(ContainerDemand(str(c.get("name", "")), vram, math.ceil(tfl * 1000)))
    if not containers:
        return None
    ann = meta.get("annotations") or {}
    return PodDemand(PodRef(str(meta.get("uid", "")), str(meta.get("namespace", "")), str(meta.get("name", "")),
                            created_ms(meta.get("creationTimestamp"))),
                     tuple(containers), parse_constraints(ann, where), cpu, mem)


# --------------------------------------------------------------------------- placement


def device_count(c: ContainerDemand, d: DeviceInfo) -> int:
    """Devices of ``d``'s model the container needs (1 = a share of one device)."""
    fv = c.vram_bytes / d.vram_bytes if d.vram_bytes else math.inf
    ft = c.tflops_milli / d.tflops_milli if d.tflops_milli else (math.inf if c.tflops_milli else 0.0)
    frac = max(fv, ft)
    return 1 if frac <= 1.0 else math.ceil(frac - 1e-9)


def share_milli(c: ContainerDemand, d: DeviceInfo) -> int:
    fv = c.vram_bytes / d.vram_bytes if d.vram_bytes else 0.0
    ft = c.tflops_milli / d.tflops_milli if d.tflops_milli else 0.0
    return max(1, math.ceil(WHOLE * max(fv, ft) - 1e-9))


def _free_milli(d: DeviceInfo, used: tuple[int, int]) -> int:
    fv = (d.vram_bytes - used[0]) / d.vram_bytes if d.vram_bytes else 0.0
    ft = (d.tflops_milli - used[1]) / d.tflops_milli if d.tflops_milli else 1.0
    return max(0, math.floor(WHOLE * min(fv, ft) + 1e-9))


def _fits_share(c: ContainerDemand, d: DeviceInfo, used: tuple[int, int]) -> bool:
    return d.vram_bytes - used[0] >= c.vram_bytes and d.tflops_milli - used[1] >= c.tflops_milli


def _idle(used: tuple[int, int]) -> bool:
    return used[0] == 0 and used[1] == 0


def _pick_whole(devs: Sequence[DeviceInfo], k: int, usage: Usage, high_bw: bool) -> list[DeviceInfo] | None:
    """``k`` idle devices: the tightest island that holds all ``k`` (keeps big islands whole)."""
    idle = [d for d in devs if _idle(usage.get(d.name, (0, 0)))]
    if len(idle) < k:
        return None
    islands: dict[str, list[DeviceInfo]] = defaultdict(list)
    for d in idle:
        islands[d.island].append(d)
    fitting = [(len(v), key) for key, v in islands.items() if key and len(v) >= k]
    if fitting:
        _, key = min(fitting)
        return sorted(islands[key], key=lambda d: d.index)[:k]
    if high_bw:
        return None
    # island-preferred: fill from the largest islands first
    out: list[DeviceInfo] = []
    for _, key in sorted(((len(v), key) for key, v in islands.items()), reverse=True):
        out.extend(sorted(islands[key], key=lambda d: d.index))
    return out[:k]


def _grants_for(c: ContainerDemand, devs: Sequence[DeviceInfo], k: int) -> tuple[Grant, ...]:
    vram = [c.vram_bytes // k + (1 if i < c.vram_bytes % k else 0) for i in range(k)]
    tfl = [c.tflops_milli // k + (1 if i < c.tflops_milli % k else 0) for i in range(k)]
    if k > 1:  # whole devices: the quota is the device
        vram = [d.vram_bytes for d in devs]
        tfl = [d.tflops_milli for d in devs]
    return tuple(Grant(d.name, d.uuid, d.index, d.vendor, d.model, d.island, v, t)
                 for d, v, t in zip(devs, vram, tfl, strict=True))


@dataclass
class _Group:
    """One node's eligible devices of one model: a pseudo-node for the vectorised policy."""

    node: NodeInventory
    model: str
    devices: list[DeviceInfo]


def _trial(demand: PodDemand, node: NodeInventory, devices: Sequence[DeviceInfo], usage: Usage,
           first: tuple[str, tuple[Grant, ...]] | None = None) -> tuple[list[tuple[str, tuple[Grant, ...]]], str]:
    """Greedy best-fit placement of every container on one node; ``first`` fixes container 0."""
    trial = {k: v for k, v in usage.items()}
    out: list[tuple[str, tuple[Grant, ...]]] = []
    for i, c in enumerate(demand.containers):
        if i == 0 and first is not None:
            grants = first[1]
        else:
            grants = ()
            shares = [d for d in devices if device_count(c, d) == 1 and _fits_share(c, d, trial.get(d.name, (0, 0)))]
            if shares:
                best = min(shares, key=lambda d: (_free_milli(d, trial.get(d.name, (0, 0))), d.index))
                grants = _grants_for(c, [best], 1)
            else:
                by_model: dict[str, list[DeviceInfo]] = defaultdict(list)
                for d in devices:
                    by_model[d.model].append(d)
                for devs in by_model.values():
                    k = device_count(c, devs[0])
                    if k > 1:
                        chosen = _pick_whole(devs, k, trial, demand.constraints.high_bandwidth)
                        if chosen:
                            grants = _grants_for(c, chosen, k)
                            break
            if not grants:
                return out, _why_not(c, devices, trial, demand.constraints.high_bandwidth)
        for g in grants:
            u = trial.get(g.device, (0, 0))
            trial[g.device] = (u[0] + g.vram_bytes, u[1] + g.tflops_milli)
        out.append((c.name, grants))
    return out, ""


def reason(kind: str, *, cpu_free: int = 0) -> str:
    """The short reasons a node cannot take a pod; what VRAM, TFLOPS, island size or the vendor/model
    filter block is worded in ``reasons`` (through ``_why_not`` and ``_filtered``)."""
    if kind == "no-devices":
        return "node has no accelerator devices"
    if kind == "unhealthy":
        return "every matching device is unhealthy"
    if kind == "cpu":
        return f"insufficient CPU ({cpu_free}m free)"
    if kind == "memory":
        return "insufficient memory"
    if kind == "plan":
        return "no consistent device plan for every container"
    raise ValueError(f"unknown reason kind {kind!r}")


def _filtered(cons: Constraints, node: NodeInventory) -> str:
    """Why ``node`` is out for a pod whose vendor/model filter excludes its devices (``reasons``)."""
    from hcs.allocator.reasons import filter_shortfall

    return filter_shortfall(cons.vendors_in, cons.vendors_out, cons.models_in, cons.models_out,
                            ((d.vendor, d.model) for d in node.devices))


def _row_devices(table: DeviceTable, r: int) -> list[DeviceInfo]:
    """The usable (present, healthy) devices of table row ``r`` (one node and model)."""
    return [d for d, p, h in zip(table.devices[r], table.present[r], table.healthy[r], strict=False) if p and h]


def _why_not(c: ContainerDemand, devices: Sequence[DeviceInfo], usage: Usage, high_bw: bool,
             named: bool = True) -> str:
    """Why container ``c`` fits none of ``devices`` (the node's eligible ones): see ``reasons``.
    ``named``: say which container (pods with several)."""
    from hcs.allocator.reasons import island_counts, share_shortfall, whole_shortfall

    ref = min(devices, key=lambda d: (device_count(c, d), -d.vram_bytes))
    k = device_count(c, ref)
    prefix = f"container {c.name}: " if named else ""
    if k > 1:
        same = [d for d in devices if d.model == ref.model]
        idle = sum(1 for d in same if _idle(usage.get(d.name, (0, 0))))
        sizes, idles = island_counts(same, usage)
        return prefix + whole_shortfall(c.vram_bytes, c.tflops_milli, k, ref.model, ref.vram_bytes, ref.tflops_milli,
                                        len(same), idle, high_bw, sizes, idles)
    free_v = [d.vram_bytes - usage.get(d.name, (0, 0))[0] for d in devices]
    vram_ok = [d.tflops_milli - usage.get(d.name, (0, 0))[1] for d, f in zip(devices, free_v, strict=True)
               if f >= c.vram_bytes]
    return prefix + share_shortfall(c.vram_bytes, c.tflops_milli, max(d.vram_bytes for d in devices), max(free_v),
                                    max(vram_ok) if vram_ok else None)


PROPOSALS = 16  # fitting nodes that get a full device plan in a verdict (the best ones)


@dataclass(frozen=True, eq=False)
class DeviceTable:
    nodes: tuple[NodeInventory, ...]
    row_node: npt.NDArray[np.int64]  # (R,) index into nodes
    row_model: tuple[str, ...]
    row_vendor: tuple[str, ...]
    devices: tuple[tuple[DeviceInfo, ...], ...]  # per row, by index
    vram: npt.NDArray[np.int64]  # (R, W), 1 for padding (never divides by zero)
    tflops: npt.NDArray[np.int64]  # (R, W)
    present: npt.NDArray[np.bool_]
    healthy: npt.NDArray[np.bool_]
    penalty: npt.NDArray[np.float64]
    where: Mapping[tuple[str, str], tuple[int, int]]  # (node, device name) -> (row, col)
    node_index: Mapping[str, int]
    row_key: npt.NDArray[np.int64]  # (R,) index into keys
    keys: tuple[tuple[str, str], ...]  # distinct (vendor, model)
    cpu_total: npt.NDArray[np.int64]  # (N,)
    mem_total: npt.NDArray[np.int64]  # (N,)
    models: tuple[str, ...] = ()  # distinct device models, sorted (the live target's model list)
    row_mi: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (R,) into models
    reference: Mapping[str, DeviceInfo] = field(default_factory=dict)  # model -> one device of it
    name_rank: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (N,)

    def free_milli(self, uv: npt.NDArray[np.int64], ut: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """``(R, W)`` free milli-devices (the binding fraction left), 0 where absent or unhealthy."""
        ratio_t = np.where(self.tflops > 0, (self.tflops - ut) / np.maximum(self.tflops, 1), 1.0)
        fm = np.floor(WHOLE * np.minimum((self.vram - uv) / self.vram, ratio_t) + 1e-9).astype(np.int64)
        return np.where(self.present & self.healthy, np.maximum(fm, 0), 0)

    def model_free(self, uv: npt.NDArray[np.int64], ut: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``(M,)`` free milli-devices per model over the whole cluster (the scarcity term's supply)."""
        return np.bincount(self.row_mi, weights=self.free_milli(uv, ut).sum(axis=1),
                           minlength=len(self.models)).astype(np.float64)

    def scatter(self, usage: Mapping[str, Usage]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(R, W)`` VRAM and milli-TFLOPS in use, from the usage map."""
        uv = np.zeros(self.vram.shape, dtype=np.int64)
        ut = np.zeros(self.vram.shape, dtype=np.int64)
        for node, nu in usage.items():
            for dev, (v, t) in nu.items():
                rc = self.where.get((node, dev))
                if rc is not None:
                    uv[rc] += v
                    ut[rc] += t
        return uv, ut

    @classmethod
    def build(cls, nodes: Sequence[NodeInventory]) -> DeviceTable:
        rows: list[tuple[int, str, str, tuple[DeviceInfo, ...]]] = []
        for ni, node in enumerate(nodes):
            groups: dict[str, list[DeviceInfo]] = defaultdict(list)
            for d in node.devices:
                groups[d.model].append(d)
            for model, ds in sorted(groups.items()):
                ds.sort(key=lambda d: d.index)
                rows.append((ni, model, ds[0].vendor, tuple(ds)))
        r = len(rows)
        w = max((len(x[3]) for x in rows), default=1)
        vram = np.ones((r, w), dtype=np.int64)
        tfl = np.zeros((r, w), dtype=np.int64)
        present = np.zeros((r, w), dtype=bool)
        healthy = np.zeros((r, w), dtype=bool)
        penalty = np.zeros((r, w))
        where: dict[tuple[str, str], tuple[int, int]] = {}
        for i, (ni, _, _, row_devs) in enumerate(rows):
            for j, d in enumerate(row_devs):
                vram[i, j] = max(1, d.vram_bytes)
                tfl[i, j] = d.tflops_milli
                present[i, j] = True
                healthy[i, j] = d.healthy
                penalty[i, j] = (100 - d.health_score) / 100.0
                where[(nodes[ni].name, d.name)] = (i, j)
        models = tuple(sorted({x[1] for x in rows}))
        mi = {m: i for i, m in enumerate(models)}
        key_index: dict[tuple[str, str], int] = {}
        row_key = np.array([key_index.setdefault((x[2], x[1]), len(key_index)) for x in rows], dtype=np.int64)
        return cls(tuple(nodes), np.array([x[0] for x in rows], dtype=np.int64), tuple(x[1] for x in rows),
                   tuple(x[2] for x in rows), tuple(x[3] for x in rows), vram, tfl, present, healthy, penalty,
                   where, {n.name: i for i, n in enumerate(nodes)}, row_key, tuple(key_index),
                   np.array([n.cpu_milli for n in nodes], dtype=np.int64),
                   np.array([n.memory_bytes for n in nodes], dtype=np.int64), models,
                   np.array([mi[x[1]] for x in rows], dtype=np.int64),
                   {m: next(x[3][0] for x in rows if x[1] == m) for m in models},
                   np.argsort(np.argsort(np.array([n.name for n in nodes], dtype=object), kind="stable"),
                              kind="stable").astype(np.int64))


def plan(demand: PodDemand, nodes: Sequence[NodeInventory], usage: Mapping[str, Usage],
         cpu_mem_used: Mapping[str, tuple[int, int]], target_for: TargetFor,
         rng: np.random.Generator) -> list[Verdict]:
    """:func:`plan_table` over a device table built from ``nodes`` (for callers without one)."""
    return plan_table(demand, DeviceTable.build(nodes), usage, cpu_mem_used, target_for, rng)


def plan_table(demand: PodDemand, table: DeviceTable, usage: Mapping[str, Usage],
               cpu_mem_used: Mapping[str, tuple[int, int]], target_for: TargetFor, rng: np.random.Generator,
               only: set[str] | None = None, proposals: int = PROPOSALS,
               used: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None,
               best_only: bool = False, policy_name: str | None = None) -> list[Verdict]:
    """Verdict for every node (``only``: those), best first; the best ``proposals`` fitting nodes carry
    the device plan to reserve.

    The one planner. Container 0 is scored by the vectorised policy over every (node, model) row of
    the table at once; a multi-container pod additionally needs a greedy plan for all its containers
    on the node (nodes where that fails say why; nodes where container 0 fits no single model take the
    greedy plan and rank last). ``used``: the caller's ``(R, W)`` usage arrays kept in step with
    ``usage`` (else scattered here). ``best_only``: only the fitting verdicts that carry a plan, no
    reasons (what a reservation needs; empty when nothing fits). ``policy_name`` overrides the pod's
    (``hcs`` for binpack, ``spread``) — the fleet replay compares baselines with it.
    """
    main = demand.containers[0]
    cons = demand.constraints
    nodes = table.nodes
    uv, ut = used if used is not None else table.scatter(usage)
    n_nodes = len(nodes)
    cpu_used = np.zeros(n_nodes, dtype=np.int64)
    mem_used = np.zeros(n_nodes, dtype=np.int64)
    for node, (c, m) in cpu_mem_used.items():
        ni = table.node_index.get(node)
        if ni is not None:
            cpu_used[ni], mem_used[ni] = c, m
    cpu_total = table.cpu_total
    mem_total = table.mem_total
    node_ok_cpu = (cpu_total == 0) | (cpu_total - cpu_used >= demand.cpu_milli)
    node_ok_mem = (mem_total == 0) | (mem_total - mem_used >= demand.memory_bytes)
    if only is None:
        in_scope = np.ones(n_nodes, dtype=bool)
    else:
        in_scope = np.zeros(n_nodes, dtype=bool)
        in_scope[[table.node_index[n] for n in only if n in table.node_index]] = True

    why: dict[int, str] = {}  # node index -> why not
    best: dict[int, tuple[float, int, int]] = {}  # node index -> (score, row, col); row -1: greedy plan
    waste_of: dict[int, int] = {}  # node index -> VRAM granted beyond the request (whole devices)
    policy = get_policy(policy_name or ("hcs" if cons.policy == "binpack" else "spread"))
    free_v = table.vram - uv
    free_t = table.tflops - ut
    row_node = table.row_node
    _, first_row = np.unique(table.row_key, return_index=True)  # one row per (vendor, model)
    key_ok = np.array([cons.allows(table.devices[int(r)][0]) for r in first_row], dtype=bool)
    allowed = key_ok[table.row_key] if len(table.row_key) else np.zeros(0, dtype=bool)
    scope = in_scope[row_node]
    healthy_any: npt.NDArray[np.bool_] = np.asarray(table.healthy.any(axis=1))
    cpu_ok = node_ok_cpu[row_node]
    mem_ok = node_ok_mem[row_node]
    live = scope & allowed & healthy_any & cpu_ok & mem_ok
    for rr in np.flatnonzero(scope & ~live) if not best_only else ():
        r = int(rr)
        ni = int(row_node[r])
        if not allowed[r]:
            why.setdefault(ni, _filtered(cons, nodes[ni]))
        elif not healthy_any[r]:
            why[ni] = reason("unhealthy")
        elif not cpu_ok[r]:
            why[ni] = reason("cpu", cpu_free=int(cpu_total[ni] - cpu_used[ni]))
        else:
            why[ni] = reason("memory")
    multi_ok: set[int] = set()
    if len(demand.containers) > 1:  # every container must fit the node (greedy trial)
        for ni in sorted({int(row_node[r]) for r in np.flatnonzero(live)}):
            eligible = _eligible(nodes[ni], cons)
            _, trial_why = _trial(demand, nodes[ni], eligible, usage.get(nodes[ni].name, {}))
            if trial_why:
                why[ni] = trial_why
                live &= row_node != ni
            else:
                multi_ok.add(ni)
    cand_node: list[npt.NDArray[np.int64]] = []
    cand_score: list[npt.NDArray[np.float64]] = []
    cand_row: list[npt.NDArray[np.int64]] = []
    cand_col: list[npt.NDArray[np.int64]] = []
    cand_waste: list[npt.NDArray[np.int64]] = []
    # rows whose devices have one shape (VRAM, TFLOPS) share the request's shape and the target workload:
    # one policy call for them all, each row keeping its own model (split by model when the target
    # does not cover the table's models)
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row in np.flatnonzero(live).tolist():
        shape_of = table.devices[row][0]
        by_shape[(shape_of.vram_bytes, shape_of.tflops_milli)].append(row)
    groups: list[tuple[str, list[int], TargetWorkload]] = []
    for rows_of_shape in by_shape.values():
        first_model = table.row_model[rows_of_shape[0]]
        target = target_for(first_model)
        if target.models == table.models:
            groups.append((first_model, rows_of_shape, target))
            continue
        split: dict[str, list[int]] = defaultdict(list)
        for row in rows_of_shape:
            split[table.row_model[row]].append(row)
        groups.extend((m, rs, target_for(m)) for m, rs in split.items())
    model_free = table.model_free(uv, ut)
    named = len(demand.containers) > 1  # reasons name the container only when there are several
    for model, rows_list, target in groups:
        rows = np.array(rows_list, dtype=np.int64)
        ref = table.devices[rows_list[0]][0]
        k = device_count(main, ref)
        milli = share_milli(main, ref) if k == 1 else WHOLE
        vt, tt = table.vram[rows], table.tflops[rows]
        fv, ft = free_v[rows], free_t[rows]
        ratio_t = np.where(tt > 0, ft / np.maximum(tt, 1), 1.0)
        fm = np.floor(WHOLE * np.minimum(fv / vt, ratio_t) + 1e-9).astype(np.int64)
        fm = np.maximum(fm, 0)
        usable = table.present[rows] & table.healthy[rows]
        if k == 1:
            exact = (fv >= main.vram_bytes) & (ft >= main.tflops_milli)
            fm = np.where(exact, np.maximum(fm, milli), np.minimum(fm, milli - 1))  # the bytes decide
        fm = np.where(usable, fm, 0)
        ni_rows = row_node[rows]
        if target.models == table.models:
            row_model = table.row_mi[rows]
        else:
            row_model = np.full(len(rows), target.models.index(model) if model in target.models else -1,
                                dtype=np.int64)
        view = NodeView(fm, usable, np.maximum(0, cpu_total[ni_rows] - cpu_used[ni_rows]),
                        np.maximum(0, mem_total[ni_rows] - mem_used[ni_rows]), cpu_total[ni_rows],
                        mem_total[ni_rows], table.penalty[rows], row_model)
        req = Request(demand.cpu_milli, demand.memory_bytes, k, milli)
        ctx = PolicyContext(rng, target, {"strand": 0.0} if not view.cpu_total.all() else {},
                            model_free if target.models == table.models else None)
        scores = policy(view, req, ctx)
        finite = np.isfinite(scores)
        row_fits: npt.NDArray[np.bool_] = np.asarray(finite.any(axis=1))
        idle_cnt = ((uv[rows] == 0) & (ut[rows] == 0) & usable).sum(axis=1)
        if k > 1:
            row_fits &= idle_cnt >= k
        cols = np.argmax(np.where(finite, scores, -np.inf), axis=1)
        row_best = scores[np.arange(len(rows)), cols]
        for i in np.flatnonzero(~row_fits) if not best_only else ():
            ni = int(ni_rows[i])
            why[ni] = _why_not(main, _row_devices(table, rows_list[i]), usage.get(nodes[ni].name, {}),
                               cons.high_bandwidth, named)
        if k > 1 and cons.high_bandwidth:  # island-preferred always finds k idle devices when k are idle
            for i in np.flatnonzero(row_fits):
                ni = int(ni_rows[i])
                r = rows_list[i]
                devs = [d for d, h in zip(table.devices[r], table.healthy[r], strict=False) if h]
                if _pick_whole(devs, k, usage.get(nodes[ni].name, {}), cons.high_bandwidth) is None:
                    why[ni] = _why_not(main, devs, usage.get(nodes[ni].name, {}), True, named)
                    row_fits[i] = False
        fit_idx = np.flatnonzero(row_fits)
        # Across models, whole devices granted beyond the request are waste: a 16Gi job takes a slice of
        # one big device rather than two small ones, a 160Gi job 2x80Gi rather than 4x48Gi.
        waste = max(0, k * ref.vram_bytes - main.vram_bytes) if k > 1 else 0
        cand_waste.append(np.full(len(fit_idx), waste, dtype=np.int64))
        cand_node.append(ni_rows[fit_idx])
        cand_score.append(row_best[fit_idx])
        cand_row.append(rows[fit_idx])
        cand_col.append(cols[fit_idx])
    ranked: list[tuple[int, tuple[float, int, int]]] = []
    if cand_node:
        cn, cs = np.concatenate(cand_node), np.concatenate(cand_score)
        cr, cc, cw = np.concatenate(cand_row), np.concatenate(cand_col), np.concatenate(cand_waste)
        if best_only and not multi_ok:  # a reservation: the first few nodes only, straight from the rows
            seen: set[int] = set()
            for j in np.lexsort((table.name_rank[cn], -cs, cw)).tolist():
                ni = int(cn[j])
                if ni not in seen:
                    seen.add(ni)
                    ranked.append((ni, (float(cs[j]), int(cr[j]), int(cc[j]))))
                    if len(ranked) >= proposals:
                        break
        else:
            order = np.lexsort((-cs, cw))  # least waste first, then the policy's score
            _, first = np.unique(cn[order], return_index=True)
            sel = order[first]
            for ni, sc, r, c, w in zip(cn[sel].tolist(), cs[sel].tolist(), cr[sel].tolist(), cc[sel].tolist(),
                                       cw[sel].tolist(), strict=True):
                best[ni] = (sc, r, c)
                waste_of[ni] = w
    if not ranked:
        for ni in multi_ok - best.keys():  # container 0 fits no single model, yet the greedy plan fits
            best[ni] = (GREEDY, -1, -1)
            waste_of[ni] = 2**62  # ranks after every single-model plan
            why.pop(ni, None)
        ids = np.fromiter(best.keys(), dtype=np.int64, count=len(best))
        scores_of = np.array([best[i][0] for i in ids.tolist()], dtype=np.float64)
        wastes = np.array([waste_of[i] for i in ids.tolist()], dtype=np.int64)
        # least waste, then the best score, then the node name
        ranked = [(ni, best[ni]) for ni in ids[np.lexsort((table.name_rank[ids], -scores_of, wastes))].tolist()]
    finite_scores = [sc for _, (sc, _, _) in ranked if sc > GREEDY]
    lo, hi = (min(finite_scores), max(finite_scores)) if finite_scores else (0.0, 0.0)
    out: list[Verdict] = []
    failed: list[Verdict] = []
    for rank, (ni, (sc, r, col)) in enumerate(ranked):
        if best_only and rank >= proposals:
            break
        inv = nodes[ni]
        norm = 0.0 if sc <= GREEDY else (100.0 if hi == lo else 100.0 * (sc - lo) / (hi - lo))
        the_plan = None
        if rank < proposals:
            if r < 0:
                g, c0 = _Group(inv, "", []), -1
            else:
                healthy_devs = [d for d, h in zip(table.devices[r], table.healthy[r], strict=False) if h]
                g, c0 = _Group(inv, table.row_model[r], healthy_devs), healthy_devs.index(table.devices[r][col])
            the_plan = _plan_on(demand, g, c0, _eligible(inv, cons), usage.get(inv.name, {}), sc)
            if the_plan is None:
                failed.append(Verdict(inv.name, False, reason("plan")))
                continue
        out.append(Verdict(inv.name, True, "fits", round(norm, 3), the_plan))
    if best_only:
        return [v for v in out if v.plan is not None]
    for ni, n in enumerate(nodes):
        if in_scope[ni] and ni not in best:
            fallback = _filtered(cons, n) if n.devices else reason("no-devices")
            failed.append(Verdict(n.name, False, why.get(ni, fallback)))
    return out + sorted(failed, key=lambda v: v.node)


GREEDY = -1e18  # the score of a greedy cross-model plan (container 0 fits no single model)


def _eligible(node: NodeInventory, cons: Constraints) -> list[DeviceInfo]:
    return [d for d in node.devices if d.healthy and cons.allows(d)]


def _plan_on(demand: PodDemand, g: _Group, col: int, eligible: Sequence[DeviceInfo], usage: Usage,
             score: float) -> Plan | None:
    main = demand.containers[0]
    first = None
    if col >= 0 and g.devices:
        k = device_count(main, g.devices[0])
        if k == 1:
            first = (main.name, _grants_for(main, [g.devices[col]], 1))
        else:
            chosen = _pick_whole(g.devices, k, usage, demand.constraints.high_bandwidth)
            if chosen is None:
                return None
            first = (main.name, _grants_for(main, chosen, k))
    placed, why = _trial(demand, g.node, eligible, usage, first)
    if why and first is not None:
        placed, why = _trial(demand, g.node, eligible, usage)  # the greedy plan that fitted
    if why:
        return None
    return Plan(g.node.name, tuple(placed), score)
