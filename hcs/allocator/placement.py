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

from hcs.allocator.inventory import DeviceInfo, NodeInventory
from hcs.allocator.policies import WHOLE, NodeView, PolicyContext, Request, TargetWorkload, get_policy
from hcs.devices.catalog import default_catalog
from hcs.devices.model import Vendor
from hcs.errors import HcsError
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


def _created_ms(value: Any) -> int:
    from datetime import datetime

    if not value:
        return 0
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


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
                            _created_ms(meta.get("creationTimestamp"))),
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


def _why_not(c: ContainerDemand, devices: Sequence[DeviceInfo], usage: Usage, high_bw: bool) -> str:
    """Why container ``c`` fits none of ``devices`` (the node's eligible ones): see ``reasons``."""
    from hcs.allocator.reasons import island_counts, share_shortfall, whole_shortfall

    ref = min(devices, key=lambda d: (device_count(c, d), -d.vram_bytes))
    k = device_count(c, ref)
    prefix = f"container {c.name}: "
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


def plan(demand: PodDemand, nodes: Sequence[NodeInventory], usage: Mapping[str, Usage],
         cpu_mem_used: Mapping[str, tuple[int, int]], target_for: TargetFor,
         rng: np.random.Generator) -> list[Verdict]:
    """Verdict for every node, best first; the first fitting verdict carries the plan to reserve.

    Container 0 is scored by the vectorised policy over every (node, model) group; only the best
    ``PROPOSALS`` fitting nodes get a full device plan (the others say ``fits`` with a score).
    """
    verdicts: list[Verdict] = []
    groups: list[_Group] = []
    eligible_of: dict[str, list[DeviceInfo]] = {}
    cons = demand.constraints
    multi = len(demand.containers) > 1
    for node in nodes:
        devs = [d for d in node.devices if cons.allows(d)]
        if not devs:
            from hcs.allocator.reasons import filter_shortfall

            verdicts.append(Verdict(node.name, False, filter_shortfall(
                cons.vendors_in, cons.vendors_out, cons.models_in, cons.models_out,
                ((d.vendor, d.model) for d in node.devices))))
            continue
        healthy = [d for d in devs if d.healthy]
        if not healthy:
            verdicts.append(Verdict(node.name, False, "every matching device is unhealthy"))
            continue
        cpu_used, mem_used = cpu_mem_used.get(node.name, (0, 0))
        if node.cpu_milli and cpu_used + demand.cpu_milli > node.cpu_milli:
            verdicts.append(Verdict(node.name, False, f"insufficient CPU ({node.cpu_milli - cpu_used}m free)"))
            continue
        if node.memory_bytes and mem_used + demand.memory_bytes > node.memory_bytes:
            verdicts.append(Verdict(node.name, False, "insufficient memory"))
            continue
        if multi:
            _, why = _trial(demand, node, healthy, usage.get(node.name, {}))
            if why:
                verdicts.append(Verdict(node.name, False, why))
                continue
        eligible_of[node.name] = healthy
        by_model: dict[str, list[DeviceInfo]] = defaultdict(list)
        for d in healthy:
            by_model[d.model].append(d)
        for model, ds in by_model.items():
            groups.append(_Group(node, model, sorted(ds, key=lambda d: d.index)))
    main = demand.containers[0]
    policy = get_policy("hcs" if cons.policy == "binpack" else "spread")
    # best (score, group, column) per node, and the VRAM it grants beyond the request
    best_of: dict[str, tuple[float, _Group, int]] = {}
    waste_of: dict[str, int] = {}
    by_model_groups: dict[str, list[_Group]] = defaultdict(list)
    for g in groups:
        by_model_groups[g.model].append(g)
    for model, gs in by_model_groups.items():
        ref = gs[0].devices[0]
        k = device_count(main, ref)
        milli = share_milli(main, ref) if k == 1 else WHOLE
        # Across models, whole devices granted beyond the request are waste (as in fastpath.fast_plan):
        # a 17Gi job takes a slice of one 80Gi device rather than two whole 16Gi ones.
        waste = max(0, k * ref.vram_bytes - main.vram_bytes) if k > 1 else 0
        width = max(len(g.devices) for g in gs)
        free = np.zeros((len(gs), width), dtype=np.int64)
        present = np.zeros((len(gs), width), dtype=bool)
        penalty = np.zeros((len(gs), width))
        for i, g in enumerate(gs):
            nu = usage.get(g.node.name, {})
            for j, d in enumerate(g.devices):
                used = nu.get(d.name, (0, 0))
                fm = _free_milli(d, used)
                if k == 1:  # the bytes decide, not the rounded shares
                    fits = _fits_share(main, d, used)
                    if fits and fm < milli:
                        fm = milli
                    elif not fits and fm >= milli:
                        fm = milli - 1
                free[i, j] = fm
                present[i, j] = True
                penalty[i, j] = (100 - d.health_score) / 100.0
        cm = [cpu_mem_used.get(g.node.name, (0, 0)) for g in gs]
        cpu_total = np.array([g.node.cpu_milli for g in gs], dtype=np.int64)
        mem_total = np.array([g.node.memory_bytes for g in gs], dtype=np.int64)
        view = NodeView(free, present, np.maximum(0, cpu_total - np.array([c[0] for c in cm])),
                        np.maximum(0, mem_total - np.array([c[1] for c in cm])), cpu_total, mem_total, penalty)
        req = Request(demand.cpu_milli, demand.memory_bytes, k, milli)
        ctx = PolicyContext(rng, target_for(model), {"strand": 0.0} if not cpu_total.all() else {})
        scores = policy(view, req, ctx)
        rows_ok = np.isfinite(scores).any(axis=1)
        for ii in np.flatnonzero(rows_ok):
            i = int(ii)
            g = gs[i]
            col = int(np.argmax(scores[i]))
            sc = float(scores[i, col])
            if k > 1 and _pick_whole(g.devices, k, usage.get(g.node.name, {}), cons.high_bandwidth) is None:
                continue
            prev = best_of.get(g.node.name)
            if prev is None or (waste, -sc) < (waste_of[g.node.name], -prev[0]):
                best_of[g.node.name] = (sc, g, col)
                waste_of[g.node.name] = waste
    # nodes where container 0 fits nowhere (or only across models) get a reason or the greedy plan
    for name, healthy in eligible_of.items():
        if name in best_of:
            continue
        node = next(g.node for g in groups if g.node.name == name)
        placed, why = _trial(demand, node, healthy, usage.get(name, {}))
        if why:
            verdicts.append(Verdict(name, False, why))
        else:
            best_of[name] = (-1e18, _Group(node, "", []), -1)
            waste_of[name] = 2**62  # a greedy cross-model plan ranks after every single-model one
    ranked = sorted(best_of.items(), key=lambda kv: (waste_of[kv[0]], -kv[1][0], kv[0]))
    finite = [s for _, (s, _, _) in ranked if s > -1e17]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    fit_verdicts = []
    for rank, (name, (sc, g, col)) in enumerate(ranked):
        norm = 0.0 if sc <= -1e17 else (100.0 if hi == lo else 100.0 * (sc - lo) / (hi - lo))
        the_plan = None
        if rank < PROPOSALS:
            the_plan = _plan_on(demand, g, col, eligible_of[name], usage.get(name, {}), sc)
            if the_plan is None:
                verdicts.append(Verdict(name, False, "no consistent device plan for every container"))
                continue
        fit_verdicts.append(Verdict(name, True, "fits", round(norm, 3), the_plan))
    return fit_verdicts + sorted(verdicts, key=lambda v: v.node)


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
