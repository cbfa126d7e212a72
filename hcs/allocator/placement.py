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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from hcs.allocator.policies import (
    WHOLE,
    FloatArray,
    IntArray,
    NodeView,
    Policy,
    PolicyContext,
    Request,
    TargetWorkload,
    get_policy,
)
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


NO_COMPUTENODE = "no ComputeNode for this node (no HCS node agent reporting)"
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

    def free_milli(self, uv: npt.NDArray[np.int64], ut: npt.NDArray[np.int64],
                   rows: slice | npt.NDArray[np.bool_] = slice(None)) -> npt.NDArray[np.int64]:
        """``(R, W)`` free milli-devices (the binding fraction left), 0 where absent or unhealthy
        (``rows``: of those rows only, ``uv``/``ut`` being theirs)."""
        vram, tflops = self.vram[rows], self.tflops[rows]
        ratio_t = np.where(tflops > 0, (tflops - ut) / np.maximum(tflops, 1), 1.0)
        fm = np.floor(WHOLE * np.minimum((vram - uv) / vram, ratio_t) + 1e-9).astype(np.int64)
        return np.where(self.usable[rows], np.maximum(fm, 0), 0)

    # derived once per table (the planner's per-decision work stays in numpy)
    @cached_property
    def usable(self) -> npt.NDArray[np.bool_]:
        """``(R, W)`` present and healthy."""
        return self.present & self.healthy

    @cached_property
    def healthy_any(self) -> npt.NDArray[np.bool_]:
        """``(R,)`` rows with at least one healthy device."""
        return np.asarray(self.healthy.any(axis=1))

    @cached_property
    def key_first_row(self) -> list[int]:
        """The first row of each distinct (vendor, model), in key order."""
        return [int(r) for r in np.unique(self.row_key, return_index=True)[1]]

    @cached_property
    def names(self) -> npt.NDArray[np.object_]:
        """``(N,)`` node names (fancy indexing turns node indices into names without a Python loop)."""
        return np.array([n.name for n in self.nodes], dtype=object)

    @cached_property
    def row_shape(self) -> npt.NDArray[np.int64]:
        """``(R,)`` an id of the (VRAM, TFLOPS) shape of each row's first device (rows of one shape share a
        request's device count and share)."""
        shapes: dict[tuple[int, int], int] = {}
        return np.array([shapes.setdefault((ds[0].vram_bytes, ds[0].tflops_milli), len(shapes))
                         for ds in self.devices], dtype=np.int64)

    @cached_property
    def row_static(self) -> npt.NDArray[np.int64]:
        """``(R,)`` an id of what a row's policy scores depend on besides its free capacity and model: which
        devices are usable, their health penalties, its node's CPU and memory (rows alike share one)."""
        key = np.concatenate([self.usable.astype(np.int64), np.ascontiguousarray(self.penalty).view(np.int64),
                              self.cpu_total[self.row_node][:, None], self.mem_total[self.row_node][:, None]], axis=1)
        if not len(key):
            return np.zeros(0, dtype=np.int64)
        return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)

    @cached_property
    def n_shapes(self) -> int:
        return int(self.row_shape.max()) + 1 if len(self.row_shape) else 0

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

    def replace_node(self, inv: NodeInventory) -> DeviceTable | None:
        """This table with node ``inv.name``'s devices and host capacity replaced — what a rebuild gives, without
        the rebuild (75 ms of Python at 5,000 nodes) when a ComputeNode changes only health or capacity. None
        when the node is new or its layout changed (other models, vendors, device names): rebuild then."""
        ni = self.node_index.get(inv.name)
        if ni is None:
            return None
        groups: dict[str, list[DeviceInfo]] = defaultdict(list)
        for d in inv.devices:
            groups[d.model].append(d)
        rows = np.flatnonzero(self.row_node == ni).tolist()
        if [self.row_model[r] for r in rows] != sorted(groups):
            return None
        devices = list(self.devices)
        vram, tflops = self.vram.copy(), self.tflops.copy()
        healthy, penalty = self.healthy.copy(), self.penalty.copy()
        for r, (_, ds) in zip(rows, sorted(groups.items()), strict=True):
            ds.sort(key=lambda d: d.index)
            if ds[0].vendor != self.row_vendor[r] or [d.name for d in ds] != [d.name for d in self.devices[r]]:
                return None
            devices[r] = tuple(ds)
            for j, d in enumerate(ds):
                vram[r, j] = max(1, d.vram_bytes)
                tflops[r, j] = d.tflops_milli
                healthy[r, j] = d.healthy
                penalty[r, j] = (100 - d.health_score) / 100.0
        cpu_total, mem_total = self.cpu_total.copy(), self.mem_total.copy()
        cpu_total[ni], mem_total[ni] = inv.cpu_milli, inv.memory_bytes
        first = {m: int(np.argmax(self.row_mi == i)) for i, m in enumerate(self.models)}
        return replace(self, nodes=(*self.nodes[:ni], inv, *self.nodes[ni + 1:]), devices=tuple(devices), vram=vram,
                       tflops=tflops, healthy=healthy, penalty=penalty, cpu_total=cpu_total, mem_total=mem_total,
                       reference={m: devices[r][0] for m, r in first.items()})


def plan(demand: PodDemand, nodes: Sequence[NodeInventory], usage: Mapping[str, Usage],
         cpu_mem_used: Mapping[str, tuple[int, int]], target_for: TargetFor,
         rng: np.random.Generator) -> list[Verdict]:
    """:func:`plan_table` over a device table built from ``nodes`` (for callers without one)."""
    return plan_table(demand, DeviceTable.build(nodes), usage, cpu_mem_used, target_for, rng)


def plan_table(demand: PodDemand, table: DeviceTable, usage: Mapping[str, Usage],
               cpu_mem_used: Mapping[str, tuple[int, int]], target_for: TargetFor, rng: np.random.Generator,
               only: Collection[str] | None = None, proposals: int = PROPOSALS,
               used: tuple[IntArray, IntArray] | TableUsage | None = None,
               best_only: bool = False, policy_name: str | None = None) -> list[Verdict]:
    """Verdict for every node (``only``: those), best first; the best ``proposals`` fitting nodes carry
    the device plan to reserve.

    The one planner (:func:`rank_table`, then a device plan for the best nodes). ``used``: the caller's
    ``(R, W)`` usage arrays kept in step with ``usage`` (else scattered here), or a :class:`TableUsage`
    that also keeps CPU/memory in use. ``best_only``: only the fitting verdicts that carry a plan, no
    reasons (what a reservation needs; empty when nothing fits). ``policy_name`` overrides the pod's
    (``hcs`` for binpack, ``spread``) — the fleet replay compares baselines with it.
    """
    ranking = rank_table(demand, table, usage, cpu_mem_used, target_for, rng, only, proposals, used, best_only,
                         policy_name)
    return _verdicts(demand, ranking, usage, proposals, best_only)


@dataclass(frozen=True, eq=False)
class Ranking:
    """The planner's answer before any device plan: the fitting nodes best first, why the others are out.

    ``node``/``score``/``row``/``col``: per ranked node its table index, raw policy score (``GREEDY`` for a
    cross-model greedy plan), and the (row, column) container 0 lands on (-1: the greedy plan).
    ``scope``: the node indices asked about; ``why``: node index -> reason, for nodes out.
    """

    table: DeviceTable
    node: IntArray
    score: FloatArray
    row: IntArray
    col: IntArray
    scope: npt.NDArray[np.bool_]
    why: Mapping[int, str]
    cons: Constraints

    def normalised(self) -> FloatArray:
        """Scores mapped to 0..100 among the ranked nodes (greedy plans 0), as :class:`Verdict` has them
        (before rounding)."""
        sc = self.score
        finite = sc > GREEDY
        if not finite.any():
            return np.zeros(len(sc))
        lo, hi = float(sc[finite].min()), float(sc[finite].max())
        norm = np.full(len(sc), 100.0) if hi == lo else 100.0 * (sc - lo) / (hi - lo)
        return np.where(finite, norm, 0.0)

    def defer(self, tier: IntArray) -> Ranking:
        """The same ranking with nodes of a higher ``tier`` (``(N,)`` per table node) after every node of a
        lower one, order kept within a tier; their scores move below the lower tiers' (so the extender's
        priorities follow the new order). Greedy plans stay last."""
        t = tier[self.node]
        if len(t) == 0 or int(t.min()) == int(t.max()):
            return self
        t = t - t.min()
        finite = self.score > GREEDY
        span = float(self.score[finite].max() - self.score[finite].min()) + 1.0 if finite.any() else 1.0
        score = np.where(finite, self.score - t * span, self.score)
        order = np.lexsort((np.arange(len(t)), t, ~finite))
        return replace(self, node=self.node[order], score=score[order], row=self.row[order], col=self.col[order])

    def failed(self) -> list[tuple[int, str]]:
        """``(node index, reason)`` for every node in scope that is not ranked, by node name."""
        out = self.scope.copy()
        out[self.node] = False
        ids = np.flatnonzero(out)
        ids = ids[np.argsort(self.table.name_rank[ids], kind="stable")]
        nodes = self.table.nodes
        return [(ni, self.why[ni] if ni in self.why else
                 _filtered(self.cons, nodes[ni]) if nodes[ni].devices else reason("no-devices"))
                for ni in ids.tolist()]


@dataclass(eq=False)
class TableUsage:
    """Usage arrays kept in step with one :class:`DeviceTable`: what the planner reads instead of scattering
    the usage maps on every decision. ``vram``/``tflops``: ``(R, W)`` in use; ``free_vram``/``free_tflops``
    what is left; ``free``: ``(R, W)`` free milli-devices (:meth:`DeviceTable.free_milli`); ``row_free``:
    ``(R,)`` their sum per row (the scarcity term's supply, summed per model); ``cpu``/``mem``: ``(N,)`` host
    CPU (milli) and memory in use."""

    vram: IntArray
    tflops: IntArray
    cpu: IntArray
    mem: IntArray
    free_vram: IntArray
    free_tflops: IntArray
    free: IntArray
    row_free: FloatArray

    @classmethod
    def of(cls, table: DeviceTable, usage: Mapping[str, Usage], cpu_mem_used: Mapping[str, tuple[int, int]],
           used: tuple[IntArray, IntArray] | None = None) -> TableUsage:
        uv, ut = used if used is not None else table.scatter(usage)
        cpu = np.zeros(len(table.nodes), dtype=np.int64)
        mem = np.zeros(len(table.nodes), dtype=np.int64)
        for node, (c, m) in cpu_mem_used.items():
            ni = table.node_index.get(node)
            if ni is not None:
                cpu[ni], mem[ni] = c, m
        free = table.free_milli(uv, ut)
        return cls(uv, ut, cpu, mem, table.vram - uv, table.tflops - ut, free, free.sum(axis=1).astype(np.float64))

    def add(self, table: DeviceTable, rc: tuple[int, int], vram: int, tflops: int) -> None:
        """``vram``/``tflops`` more (or less, negative) in use on device ``rc`` (row, column)."""
        self.vram[rc] += vram
        self.tflops[rc] += tflops
        self.free_vram[rc] -= vram
        self.free_tflops[rc] -= tflops
        r = slice(rc[0], rc[0] + 1)
        self.free[r] = table.free_milli(self.vram[r], self.tflops[r], r)
        self.row_free[r] = self.free[r].sum(axis=1)

    def refresh(self, table: DeviceTable, ni: int) -> None:
        """Node ``ni``'s rows after its devices changed capacity or health (:meth:`DeviceTable.replace_node`)."""
        r = table.row_node == ni
        self.free_vram[r] = table.vram[r] - self.vram[r]
        self.free_tflops[r] = table.tflops[r] - self.tflops[r]
        self.free[r] = table.free_milli(self.vram[r], self.tflops[r], r)
        self.row_free[r] = self.free[r].sum(axis=1)

    def add_host(self, ni: int, cpu: int, mem: int) -> None:
        self.cpu[ni] += cpu
        self.mem[ni] += mem

    def model_free(self, table: DeviceTable) -> FloatArray:
        """:meth:`DeviceTable.model_free` from the kept per-row sums."""
        return np.bincount(table.row_mi, weights=self.row_free, minlength=len(table.models)).astype(np.float64)


def rank_table(demand: PodDemand, table: DeviceTable, usage: Mapping[str, Usage],
               cpu_mem_used: Mapping[str, tuple[int, int]], target_for: TargetFor, rng: np.random.Generator,
               only: Collection[str] | None = None, proposals: int = PROPOSALS,
               used: tuple[IntArray, IntArray] | TableUsage | None = None,
               best_only: bool = False, policy_name: str | None = None) -> Ranking:
    """The fitting nodes of ``only`` (default: all), best first, and why the others are out (see
    :func:`plan_table`, which adds the device plans).

    Container 0 is scored by the vectorised policy over every (node, model) row of the table in scope
    at once; a multi-container pod additionally needs a greedy plan for all its containers on the node
    (nodes where that fails say why; nodes where container 0 fits no single model take the greedy plan
    and rank last). With ``best_only`` only the first ``proposals`` are ranked and no reasons are kept.
    """
    lv = used if isinstance(used, TableUsage) else TableUsage.of(table, usage, cpu_mem_used, used)
    scope = _scope(table, only)
    why: dict[int, str] = {}  # node index -> why not
    live = _live_rows(demand, table, lv, scope, why, best_only)
    multi_ok = _multi_container_fit(demand, table, usage, live, why) if len(demand.containers) > 1 else set()
    policy = _Scorer(policy_name or ("hcs" if demand.constraints.policy == "binpack" else "spread"))
    model_free = lv.model_free(table)
    cands = [_score_rows(demand, table, lv, usage, rows, target, model_free, policy, rng, why, best_only)
             for rows, target in _policy_groups(table, live, target_for)]
    node, score, row, col = _rank(table, cands, multi_ok, why, proposals, best_only)
    return Ranking(table, node, score, row, col, scope, why, demand.constraints)


def _scope(table: DeviceTable, only: Collection[str] | None) -> npt.NDArray[np.bool_]:
    """``(N,)`` the nodes asked about."""
    if only is None:
        return np.ones(len(table.nodes), dtype=bool)
    in_scope = np.zeros(len(table.nodes), dtype=bool)
    index = table.node_index
    in_scope[[i for i in map(index.get, only) if i is not None]] = True
    return in_scope


def _live_rows(demand: PodDemand, table: DeviceTable, lv: TableUsage, scope: npt.NDArray[np.bool_],
               why: dict[int, str], best_only: bool) -> npt.NDArray[np.bool_]:
    """``(R,)`` rows in scope whose model the pod allows, with a healthy device, on a node with the CPU and
    memory the pod needs; records why the other rows in scope are out (unless ``best_only``)."""
    cons = demand.constraints
    row_node = table.row_node
    cpu_total, mem_total = table.cpu_total, table.mem_total
    node_ok_cpu = (cpu_total == 0) | (cpu_total - lv.cpu >= demand.cpu_milli)
    node_ok_mem = (mem_total == 0) | (mem_total - lv.mem >= demand.memory_bytes)
    key_ok = np.array([cons.allows(table.devices[r][0]) for r in table.key_first_row], dtype=bool)
    allowed = key_ok[table.row_key] if len(table.row_key) else np.zeros(0, dtype=bool)
    in_scope = scope[row_node]
    healthy_any = table.healthy_any
    cpu_ok = node_ok_cpu[row_node]
    mem_ok = node_ok_mem[row_node]
    live: npt.NDArray[np.bool_] = in_scope & allowed & healthy_any & cpu_ok & mem_ok
    for r in np.flatnonzero(in_scope & ~live).tolist() if not best_only else ():
        ni = int(row_node[r])
        if not allowed[r]:
            why.setdefault(ni, _filtered(cons, table.nodes[ni]))
        elif not healthy_any[r]:
            why[ni] = reason("unhealthy")
        elif not cpu_ok[r]:
            why[ni] = reason("cpu", cpu_free=int(cpu_total[ni] - lv.cpu[ni]))
        else:
            why[ni] = reason("memory")
    return live


def _multi_container_fit(demand: PodDemand, table: DeviceTable, usage: Mapping[str, Usage],
                         live: npt.NDArray[np.bool_], why: dict[int, str]) -> set[int]:
    """Nodes where every container of a multi-container pod fits (greedy trial); the rows of the others
    leave ``live`` (in place) and they say why."""
    multi_ok: set[int] = set()
    row_node = table.row_node
    for ni in np.unique(row_node[live]).tolist():
        node = table.nodes[ni]
        _, trial_why = _trial(demand, node, _eligible(node, demand.constraints), usage.get(node.name, {}))
        if trial_why:
            why[ni] = trial_why
            live &= row_node != ni
        else:
            multi_ok.add(ni)
    return multi_ok


def _policy_groups(table: DeviceTable, live: npt.NDArray[np.bool_],
                   target_for: TargetFor) -> list[tuple[IntArray, TargetWorkload]]:
    """The live rows in groups for one policy call each, in order of their first row: rows whose devices
    have one shape (VRAM, TFLOPS) share the request's shape and the target workload, each row keeping its
    own model (split by model when the target does not cover the table's models)."""
    live_rows = np.flatnonzero(live)
    groups: list[tuple[IntArray, TargetWorkload]] = []
    for rows in _split_by(live_rows, table.row_shape[live_rows], table.n_shapes):
        first_model = table.row_model[int(rows[0])]
        target = target_for(first_model)
        if target.models == table.models:
            groups.append((rows, target))
            continue
        groups.extend((rs, target_for(table.row_model[int(rs[0])]))
                      for rs in _split_by(rows, table.row_mi[rows], len(table.models)))
    return groups


def _split_by(rows: IntArray, key: IntArray, n_keys: int = 0) -> list[IntArray]:
    """``rows`` split by ``key``, groups in order of their first row, rows in order within a group
    (``n_keys`` 1: all rows have one key)."""
    if not len(rows):
        return []
    if n_keys == 1:
        return [rows]
    uniq, first = np.unique(key, return_index=True)
    if len(uniq) == 1:
        return [rows]
    return [rows[key == uniq[i]] for i in np.argsort(first, kind="stable").tolist()]


#: rows from which a policy call scores only the distinct node states (fewer rows: not worth the hashing)
DEDUP_MIN_ROWS = 64


class _Scorer:
    """A policy by name; row-wise policies (every one but ``random``, which draws per cell) score each
    distinct node state once: at thousands of nodes most states repeat (empty nodes, nodes filled alike),
    and a row's scores depend only on its own state, the request and the context."""

    def __init__(self, name: str) -> None:
        self.policy: Policy = get_policy(name)
        self.row_wise = name != "random"

    def __call__(self, view: NodeView, req: Request, ctx: PolicyContext,
                 static: IntArray | None = None) -> FloatArray:
        """``static``: per row, an id of everything in the view but the free capacity and the model
        (:attr:`DeviceTable.row_static`), so fewer columns are hashed and compared."""
        n = len(view.gpu_free)
        if not self.row_wise or n < DEDUP_MIN_ROWS:
            return self.policy(view, req, ctx)
        cols = [view.gpu_free, view.cpu_free[:, None], view.mem_free[:, None]]
        if static is not None:
            cols.append(static[:, None])
        else:
            cols += [view.gpu_present.astype(np.int64), view.cpu_total[:, None], view.mem_total[:, None]]
            if view.penalty is not None:
                cols.append(np.ascontiguousarray(view.penalty, dtype=np.float64).view(np.int64))
        if view.model is not None:
            cols.append(view.model[:, None])
        key = np.concatenate(cols, axis=1)
        weights = np.random.default_rng(0x5EED).integers(1, 2**62, size=key.shape[1], dtype=np.int64)
        with np.errstate(over="ignore"):
            digest = (key * weights).sum(axis=1)  # wraps on overflow: a hash, checked below
        _, first, inverse = np.unique(digest, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        if len(first) > n // 2 or not (key[first][inverse] == key).all():  # few repeats, or a hash collision
            return self.policy(view, req, ctx)
        sub = NodeView(view.gpu_free[first], view.gpu_present[first], view.cpu_free[first], view.mem_free[first],
                       view.cpu_total[first], view.mem_total[first],
                       None if view.penalty is None else view.penalty[first],
                       None if view.model is None else view.model[first])
        return self.policy(sub, req, ctx)[inverse]


#: one policy call's fitting rows: (node index, score, row, column, VRAM wasted) per row
_Cands = tuple[IntArray, FloatArray, IntArray, IntArray, IntArray]


def _score_rows(demand: PodDemand, table: DeviceTable, lv: TableUsage, usage: Mapping[str, Usage], rows: IntArray,
                target: TargetWorkload, model_free: FloatArray, policy: _Scorer, rng: np.random.Generator,
                why: dict[int, str], best_only: bool) -> _Cands:
    """One policy call over ``rows`` (one device shape): the rows where container 0 fits, with their best
    column and score; records why the other rows' nodes are out (unless ``best_only``)."""
    main = demand.containers[0]
    cons = demand.constraints
    ref = table.devices[int(rows[0])][0]
    k = device_count(main, ref)
    milli = share_milli(main, ref) if k == 1 else WHOLE
    sel = slice(None) if len(rows) == len(table.row_node) else rows  # every row (in order): no gathers
    usable = table.usable[sel]
    fm = lv.free[sel]
    if k == 1:
        exact = (lv.free_vram[sel] >= main.vram_bytes) & (lv.free_tflops[sel] >= main.tflops_milli)
        fm = np.where(exact & usable, np.maximum(fm, milli), np.minimum(fm, milli - 1))  # the bytes decide
    ni_rows = table.row_node[rows]
    full_target = target.models == table.models
    if full_target:
        row_model = table.row_mi[rows]
    else:
        model = table.row_model[int(rows[0])]
        row_model = np.full(len(rows), target.models.index(model) if model in target.models else -1, dtype=np.int64)
    cpu_total, mem_total = table.cpu_total[ni_rows], table.mem_total[ni_rows]
    view = NodeView(fm, usable, np.maximum(0, cpu_total - lv.cpu[ni_rows]), np.maximum(0, mem_total - lv.mem[ni_rows]),
                    cpu_total, mem_total, table.penalty[sel], row_model)
    req = Request(demand.cpu_milli, demand.memory_bytes, k, milli)
    ctx = PolicyContext(rng, target, {"strand": 0.0} if not view.cpu_total.all() else {},
                        model_free if full_target else None)
    scores = policy(view, req, ctx, table.row_static[sel])
    finite = np.isfinite(scores)
    row_fits: npt.NDArray[np.bool_] = np.asarray(finite.any(axis=1))
    if k > 1:
        row_fits &= ((lv.vram[sel] == 0) & (lv.tflops[sel] == 0) & usable).sum(axis=1) >= k
    cols = np.argmax(np.where(finite, scores, -np.inf), axis=1)
    row_best = scores[np.arange(len(rows)), cols]
    if not best_only:
        for i in np.flatnonzero(~row_fits).tolist():
            ni = int(table.row_node[rows[i]])
            why[ni] = _why_not(main, _row_devices(table, int(rows[i])), usage.get(table.nodes[ni].name, {}),
                               cons.high_bandwidth, len(demand.containers) > 1)
    if k > 1 and cons.high_bandwidth:  # island-preferred always finds k idle devices when k are idle
        _one_island(demand, table, usage, rows, row_fits, k, why)
    fit_idx = np.flatnonzero(row_fits)
    # Across models, whole devices granted beyond the request are waste: a 16Gi job takes a slice of
    # one big device rather than two small ones, a 160Gi job 2x80Gi rather than 4x48Gi.
    waste = max(0, k * ref.vram_bytes - main.vram_bytes) if k > 1 else 0
    return (ni_rows[fit_idx], row_best[fit_idx], rows[fit_idx], cols[fit_idx],
            np.full(len(fit_idx), waste, dtype=np.int64))


def _one_island(demand: PodDemand, table: DeviceTable, usage: Mapping[str, Usage], rows: IntArray,
                row_fits: npt.NDArray[np.bool_], k: int, why: dict[int, str]) -> None:
    """``high-bandwidth`` over ``k`` whole devices: rows whose ``k`` idle devices are not on one island no
    longer fit (``row_fits`` in place), and say why."""
    main = demand.containers[0]
    for i in np.flatnonzero(row_fits).tolist():
        r = int(rows[i])
        ni = int(table.row_node[r])
        devs = [d for d, h in zip(table.devices[r], table.healthy[r], strict=False) if h]
        node_usage = usage.get(table.nodes[ni].name, {})
        if _pick_whole(devs, k, node_usage, True) is None:
            why[ni] = _why_not(main, devs, node_usage, True, len(demand.containers) > 1)
            row_fits[i] = False


def _rank(table: DeviceTable, cands: Sequence[_Cands], multi_ok: set[int], why: dict[int, str], proposals: int,
          best_only: bool) -> tuple[IntArray, FloatArray, IntArray, IntArray]:
    """Each node's best candidate, nodes ordered by least waste, then the best score, then the node name
    (``best_only`` without a multi-container pod: the first ``proposals`` only). Nodes only a greedy
    cross-model plan fits (``multi_ok``) rank last."""
    empty_i = np.zeros(0, dtype=np.int64)
    if cands:
        cn, cs, cr, cc, cw = (np.concatenate([c[i] for c in cands]) for i in range(5))
    else:
        cn, cs, cr, cc, cw = empty_i, np.zeros(0), empty_i, empty_i, empty_i
    if best_only and not multi_ok and len(cn):  # a reservation: the first few nodes only, straight from the rows
        order = np.lexsort((table.name_rank[cn], -cs, cw))
        _, first = np.unique(cn[order], return_index=True)  # each node's first (best) row in that order
        sel = order[np.sort(first)[:proposals]]
        return cn[sel], cs[sel], cr[sel], cc[sel]
    order = np.lexsort((-cs, cw))  # least waste first, then the policy's score
    _, first = np.unique(cn[order], return_index=True)
    sel = order[first]
    bn, bs, br, bc, bw = cn[sel], cs[sel], cr[sel], cc[sel], cw[sel]
    greedy = sorted(multi_ok - set(bn.tolist())) if multi_ok else []  # container 0 fits no single model, yet
    # the greedy plan fits
    if greedy:
        for ni in greedy:
            why.pop(ni, None)
        g = np.array(greedy, dtype=np.int64)
        minus = np.full(len(g), -1, dtype=np.int64)
        bn, bs = np.concatenate([bn, g]), np.concatenate([bs, np.full(len(g), GREEDY)])
        br, bc = np.concatenate([br, minus]), np.concatenate([bc, minus])
        bw = np.concatenate([bw, np.full(len(g), 2**62, dtype=np.int64)])  # ranks after every single-model plan
    # least waste, then the best score, then the node name
    order = np.lexsort((table.name_rank[bn], -bs, bw))
    return bn[order], bs[order], br[order], bc[order]


def _verdicts(demand: PodDemand, ranking: Ranking, usage: Mapping[str, Usage], proposals: int,
              best_only: bool) -> list[Verdict]:
    """Verdicts from a ranking: the first ``proposals`` fitting nodes with a device plan (a node where none
    can be made after all says so), the other fitting nodes, then the nodes out with their reasons."""
    table = ranking.table
    nodes = table.nodes
    cons = demand.constraints
    norm = ranking.normalised().tolist()
    out: list[Verdict] = []
    failed: list[Verdict] = []
    for rank, (ni, sc, r, col) in enumerate(zip(ranking.node.tolist(), ranking.score.tolist(),
                                                ranking.row.tolist(), ranking.col.tolist(), strict=True)):
        if best_only and rank >= proposals:
            break
        inv = nodes[ni]
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
        out.append(Verdict(inv.name, True, "fits", round(norm[rank], 3), the_plan))
    if best_only:
        return [v for v in out if v.plan is not None]
    failed.extend(Verdict(nodes[ni].name, False, why) for ni, why in ranking.failed())
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
