"""Trace replay of the openb GPU-cluster traces (USENIX ATC '23 FGD protocol).

Protocol (shared/traces/README.md): pods arrive only (no departures); per seed the pod list is
resampled with replacement and shuffled until the arrived GPU demand reaches 130% of cluster
GPU capacity; CPU and memory must fit; ``gpu_spec`` (``A|B``) restricts the device model; a pod
that fits nowhere is skipped. The metric is the GPU allocation ratio (allocated GPU-milli ÷
total GPU-milli) read when the arrived demand reaches 100% of capacity.

openb ``gpu_milli`` is a share of one device of the node's model: HCS maps it to the same
fraction of that device's VRAM *and* of its A100-equivalent TFLOPS (a 300-milli pod on a T4
node gets 0.3 × 16 GiB and 0.3 × its TFLOPS), which is exactly the binding fraction real
placement computes (:mod:`hcs.allocator.placement`), so the replay exercises the same policy
core on the same units.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hcs.allocator.placement import (
    Constraints,
    ContainerDemand,
    DeviceTable,
    PodDemand,
    PodRef,
    device_count,
    plan_table,
    share_milli,
)
from hcs.allocator.policies import (
    WHOLE,
    IntArray,
    NodeView,
    PolicyContext,
    RecentMix,
    Request,
    TargetWorkload,
    class_stats,
    get_policy,
    node_fragmentation,
    pick,
)
from hcs.cluster_inventory import A100_FP16_TFLOPS, DeviceInfo, NodeInventory
from hcs.errors import ConfigError

MAX_GPUS = 8


@dataclass(frozen=True, eq=False)
class Cluster:
    names: tuple[str, ...]
    cpu: IntArray  # (N,) milli-cores
    mem: IntArray  # (N,) MiB
    gpus: IntArray  # (N,)
    model: IntArray  # (N,) index into models
    models: tuple[str, ...]

    @property
    def gpu_capacity(self) -> int:
        return int(self.gpus.sum()) * WHOLE


@dataclass(frozen=True)
class TracePod:
    name: str
    request: Request
    models: frozenset[str]  # allowed device models (empty = any)


@dataclass(frozen=True)
class SeedResult:
    allocation_ratio: float  # percent, at 100% arrived
    fragmentation: float  # percent of capacity fragmented (FGD measure) at 100% arrived
    placed: int
    skipped: int
    latencies_ms: npt.NDArray[np.float64]  # CPU time of each decision on its core (thread_time)
    curve: tuple[tuple[float, float], ...]  # (arrived %, allocation %)
    wall_ms: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))  # wall clock, incl. waits


@dataclass(frozen=True)
class PolicyResult:
    name: str
    seeds: tuple[SeedResult, ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, object]:
        ratios = [round(s.allocation_ratio, 3) for s in self.seeds]
        lat = np.concatenate([s.latencies_ms for s in self.seeds]) if self.seeds else np.zeros(1)
        wall = np.concatenate([s.wall_ms for s in self.seeds]) if self.seeds else np.zeros(1)
        return {
            "allocation_ratio_mean": round(float(np.mean(ratios)), 3),
            "allocation_ratio_per_seed": ratios,
            "fragmentation_mean": round(float(np.mean([s.fragmentation for s in self.seeds])), 3),
            "decision_p50_ms": round(float(np.percentile(lat, 50)), 4),
            "decision_p99_ms": round(float(np.percentile(lat, 99)), 4),
            "decision_wall_p50_ms": round(float(np.percentile(wall, 50)), 4),
            "decision_wall_p99_ms": round(float(np.percentile(wall, 99)), 4),
            "placed_mean": round(float(np.mean([s.placed for s in self.seeds])), 1),
            "skipped_mean": round(float(np.mean([s.skipped for s in self.seeds])), 1),
        }


def _rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(
                    f"{path}: missing column(s) {', '.join(missing)}; expected the openb format "
                    f"({','.join(required)})"
                )
            return list(reader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}); pass an existing CSV file") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a text CSV file ({exc}); pass an openb CSV "
                          "(see the README's 'Traces' section)") from exc


def _int(row: dict[str, str], col: str, path: Path, line: int) -> int:
    try:
        return int(float(row[col]))
    except (TypeError, ValueError):
        raise ConfigError(f"{path}:{line}: column {col!r} must be a number, got {row.get(col)!r}") from None


def load_nodes(path: str | Path) -> Cluster:
    p = Path(path)
    rows = _rows(p, ("sn", "cpu_milli", "memory_mib", "gpu", "model"))
    if not rows:
        raise ConfigError(f"{p}: no nodes; the file needs at least one data row")
    models: dict[str, int] = {}
    names, cpu, mem, gpus, model = [], [], [], [], []
    for i, r in enumerate(rows, start=2):
        g = _int(r, "gpu", p, i)
        if not 0 <= g <= MAX_GPUS:
            raise ConfigError(f"{p}:{i}: gpu={g} is outside 0..{MAX_GPUS}")
        names.append(r["sn"])
        cpu.append(_int(r, "cpu_milli", p, i))
        mem.append(_int(r, "memory_mib", p, i))
        gpus.append(g)
        model.append(models.setdefault(r["model"].strip(), len(models)))
    return Cluster(tuple(names), np.array(cpu, dtype=np.int64), np.array(mem, dtype=np.int64),
                   np.array(gpus, dtype=np.int64), np.array(model, dtype=np.int64), tuple(models))


def load_pods(path: str | Path) -> list[TracePod]:
    p = Path(path)
    rows = _rows(p, ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"))
    pods = []
    for i, r in enumerate(rows, start=2):
        k = _int(r, "num_gpu", p, i)
        milli = _int(r, "gpu_milli", p, i)
        if not 0 <= k <= MAX_GPUS:
            raise ConfigError(f"{p}:{i}: num_gpu={k} is outside 0..{MAX_GPUS}")
        if k == 1 and not 0 < milli <= WHOLE:
            raise ConfigError(f"{p}:{i}: gpu_milli={milli} must be 1..1000 for a one-GPU pod")
        milli = 0 if k == 0 else (milli if k == 1 else WHOLE)
        spec = (r.get("gpu_spec") or "").strip()
        allowed = frozenset(s.strip() for s in spec.split("|") if s.strip())
        pods.append(TracePod(r["name"], Request(_int(r, "cpu_milli", p, i), _int(r, "memory_mib", p, i),
                                                k, milli, allowed), allowed))
    if not pods:
        raise ConfigError(f"{p}: no pods; the file needs at least one data row")
    return pods


def arrival_order(pods: Sequence[TracePod], capacity: int, seed: int, inflation: float = 1.3) -> list[int]:
    """Indices of the arriving pods: the trace plus resampled copies, shuffled, up to ``inflation``."""
    return _arrivals(np.array([p.request.gpu_demand for p in pods], dtype=np.int64), capacity, seed, inflation)


def _arrivals(demand: IntArray, capacity: int, seed: int, inflation: float) -> list[int]:
    rng = np.random.default_rng(seed)
    pods = demand
    target = inflation * capacity
    idx = list(range(len(pods)))
    total = int(demand.sum())
    if total <= 0:
        raise ConfigError("pod trace has no GPU demand; nothing to replay")
    while total < target:
        extra = rng.integers(0, len(pods), size=max(1, len(pods) // 4))
        idx.extend(int(e) for e in extra)
        total += int(demand[extra].sum())
    order = np.array(idx)[rng.permutation(len(idx))]
    cum = np.cumsum(demand[order])
    cut = int(np.searchsorted(cum, target, side="left")) + 1
    return [int(i) for i in order[:cut]]


# Complexity 18, kept in one piece on purpose: the replay's inner loop over every arriving pod keeps the
# cluster as local numpy arrays updated in place (free VRAM, CPU, memory, class statistics); split
# into functions, each pod would pass a dozen arrays around (bench/replay.py times this loop).
def simulate(cluster: Cluster, pods: Sequence[TracePod], policy_name: str, seed: int,
             target: TargetWorkload, *, inflation: float = 1.0, curve_points: int = 60,
             weights: dict[str, float] | None = None, mix: RecentMix[Request] | None = None,
             decisions: list[tuple[int, str, tuple[int, ...]]] | None = None) -> SeedResult:
    """Replay one seed with one policy; stops when arrived demand reaches ``inflation``×capacity.

    ``mix``: measure against the live allocator's target instead of ``target`` — the decayed mix of
    the requests placed so far (as :class:`hcs.allocator.state.AllocatorState` does), over the
    cluster's models in name order. ``decisions`` receives ``(pod index, node, devices)`` per
    arriving pod (node ``""`` when it fits nowhere).
    """
    policy = get_policy(policy_name)
    live_models = tuple(sorted(cluster.models))
    if mix is not None:
        target = mix.target(_as_is, live_models)
    generation = mix.generation if mix is not None else 0
    n = len(cluster.names)
    present = np.arange(MAX_GPUS)[None, :] < cluster.gpus[:, None]
    gpu_free = np.where(present, WHOLE, 0).astype(np.int64)
    cpu_free = cluster.cpu.copy()
    mem_free = cluster.mem.copy()
    capacity = cluster.gpu_capacity
    rng = np.random.default_rng(seed + 7919)
    model_idx = {m: i for i, m in enumerate(cluster.models)}
    # the node's model as an index into the target's model list (-1: a model no constraint names)
    tmodel = _target_models(cluster, target)
    model_free = np.zeros(len(target.models))
    known = tmodel >= 0
    np.add.at(model_free, tmodel[known], gpu_free.sum(axis=1)[known])
    ctx = PolicyContext(rng=rng, target=target, weights=weights or {}, model_free=model_free)
    deterministic = policy_name == "hcs"
    order = arrival_order(pods, capacity, seed, max(inflation, 1.3))
    arrived = allocated = placed = skipped = 0
    lat: list[float] = []
    wall: list[float] = []
    curve: list[tuple[float, float]] = []
    step = capacity * inflation / curve_points
    next_mark = step
    ratio_at_100 = frag_at_100 = -1.0
    all_nodes = np.arange(n)
    cnt_all, usable_all, pos_all = class_stats(target, gpu_free)  # kept in step, node by node
    for i in order:
        pod = pods[i]
        req = pod.request
        if arrived + req.gpu_demand > capacity and ratio_at_100 < 0:
            ratio_at_100 = 100.0 * allocated / capacity
            frag_at_100 = _fragmentation_pct(target, gpu_free, cpu_free, capacity, tmodel)
        if arrived + req.gpu_demand > inflation * capacity:
            break
        arrived += req.gpu_demand
        t0 = time.perf_counter()
        c0 = time.thread_time_ns()
        if mix is not None and mix.generation != generation:
            target, generation = mix.target(_as_is, live_models), mix.generation
            ctx = PolicyContext(rng=rng, target=target, weights=weights or {}, model_free=model_free)
            cnt_all, usable_all, pos_all = class_stats(target, gpu_free)
        ok = (cpu_free >= req.cpu) & (mem_free >= req.mem)
        if pod.models:
            allowed = [model_idx[m] for m in pod.models if m in model_idx]
            ok &= np.isin(cluster.model, allowed)
        if req.count > 0:
            need = WHOLE if req.whole else req.milli
            ok &= (gpu_free >= need).sum(axis=1) >= req.count
        cand = all_nodes[ok]
        choice = None
        if len(cand):
            view = NodeView(gpu_free[cand], present[cand], cpu_free[cand], mem_free[cand],
                            cluster.cpu[cand], cluster.mem[cand], model=tmodel[cand],
                            stats=(cnt_all[cand], usable_all[cand], pos_all[cand]))
            choice = pick(policy(view, req, ctx), rng, deterministic)
        lat.append((time.thread_time_ns() - c0) / 1e6)
        wall.append((time.perf_counter() - t0) * 1000.0)
        if choice is None:
            skipped += 1
            if decisions is not None:
                decisions.append((i, "", ()))
        else:
            node = int(cand[choice[0]])
            cpu_free[node] -= req.cpu
            mem_free[node] -= req.mem
            used: tuple[int, ...] = ()
            if req.whole:
                free_idx = np.flatnonzero(gpu_free[node] >= WHOLE)[: req.count]
                gpu_free[node, free_idx] = 0
                used = tuple(int(x) for x in free_idx)
            elif req.count == 1:
                gpu_free[node, choice[1]] -= req.milli
                used = (int(choice[1]),)
            if decisions is not None:
                decisions.append((i, cluster.names[node], used))
            if mix is not None and req.count:
                mix.add(req)
            if tmodel[node] >= 0:
                model_free[tmodel[node]] -= req.gpu_demand
            c1, u1, p1 = class_stats(target, gpu_free[node:node + 1])
            cnt_all[node], usable_all[node], pos_all[node] = c1[0], u1[0], p1[0]
            allocated += req.gpu_demand
            placed += 1
        while arrived >= next_mark:
            curve.append((100.0 * next_mark / capacity, 100.0 * allocated / capacity))
            next_mark += step
    if ratio_at_100 < 0:
        ratio_at_100 = 100.0 * allocated / capacity
        frag_at_100 = _fragmentation_pct(target, gpu_free, cpu_free, capacity, tmodel)
    return SeedResult(ratio_at_100, frag_at_100, placed, skipped, np.array(lat), tuple(curve), np.array(wall))


def _as_is(r: Request) -> Request:
    return r


def _target_models(cluster: Cluster, target: TargetWorkload) -> IntArray:
    idx = {m: i for i, m in enumerate(target.models)}
    per_model = np.array([idx.get(m, -1) for m in cluster.models], dtype=np.int64)
    return per_model[cluster.model]


def _fragmentation_pct(target: TargetWorkload, gpu_free: IntArray, cpu_free: IntArray, capacity: int,
                       model: IntArray | None = None) -> float:
    return float(100.0 * node_fragmentation(target, gpu_free, cpu_free, model).sum() / capacity)


def target_of(pods: Sequence[TracePod], demand_exponent: float = 0.0,
              models: Sequence[str] = ()) -> TargetWorkload:
    """The trace's pod mix as target workload; with ``models`` (the cluster's) it knows which
    classes may use which model (each pod's ``gpu_spec``)."""
    return TargetWorkload.from_requests([p.request for p in pods], demand_exponent, models)


def replay(nodes: str | Path, pods_csv: str | Path, policies: Sequence[str], seeds: Sequence[int], *,
           inflation: float = 1.0, weights: dict[str, float] | None = None,
           target_mode: str = "trace", on_seed: Callable[[str, int], None] | None = None) -> list[PolicyResult]:
    """``target_mode``: ``trace`` (the paper's: the whole trace's pod mix) or ``recent`` (the live
    allocator's decayed mix of the requests placed so far); ``on_seed(policy, seed)`` after each run."""
    if target_mode not in ("trace", "recent"):
        raise ConfigError(f"target {target_mode!r}: use 'trace' or 'recent'")
    cluster = load_nodes(nodes)
    pods = load_pods(pods_csv)
    for name in policies:
        get_policy(name)  # validate names before the long run
    target = target_of(pods, models=cluster.models)
    out = []
    for name in policies:
        runs = []
        for s in seeds:
            runs.append(simulate(cluster, pods, name, s, target, inflation=inflation, weights=weights,
                                 mix=RecentMix() if target_mode == "recent" else None))
            if on_seed is not None:
                on_seed(name, s)
        out.append(PolicyResult(name, tuple(runs)))
    return out


def plot(results: Sequence[PolicyResult], path: str | Path, title: str = "") -> None:
    """Allocation ratio against arrived demand, mean over seeds, one line per policy (PNG)."""
    # lazy: matplotlib takes ~0.5 s to import; only plots need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    for res in results:
        n = min(len(s.curve) for s in res.seeds)
        if n == 0:
            continue
        xs = np.array([res.seeds[0].curve[j][0] for j in range(n)])
        ys = np.mean([[s.curve[j][1] for j in range(n)] for s in res.seeds], axis=0)
        label = f"{res.name} ({np.mean([s.allocation_ratio for s in res.seeds]):.2f}% at 100%)"
        ax.plot(xs, ys, label=label)
        zoom.plot(xs, ys, label=res.name)
    for a in (ax, zoom):
        a.plot([0, 100], [0, 100], color="grey", lw=0.6, ls=":")
        a.axvline(100, color="grey", lw=0.6, ls="--")
        a.set_xlabel("arrived GPU demand (% of capacity)")
        a.grid(alpha=0.3)
    ax.set_ylabel("GPU allocation ratio (%)")
    ax.set_title(title or "trace replay")
    ax.legend(loc="upper left", fontsize=8)
    zoom.set_xlim(75, 131)
    zoom.set_ylim(75, 100)
    zoom.set_title("zoom: the saturation region")
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)


def derive_constrained(source: str | Path, dest: str | Path, fraction: float, seed: int) -> Path:
    """Write a copy of ``source`` in which ``fraction`` of the GPU pods name the models they accept.

    This is how the shipped ``gpuspec10``/``gpuspec20`` traces relate to each other (same pods and
    resources; an independent uniform draw of the constrained GPU pods; their ``gpu_spec`` values
    follow one distribution), so a ``gpuspec33`` like the FGD paper's is derived the same way: the
    constrained pods are drawn uniformly without replacement (``seed``) and each gets a ``gpu_spec``
    drawn from the specs that ``source`` already has.
    """
    src = Path(source)
    rows = _rows(src, ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec"))
    pool = [r["gpu_spec"] for r in rows if (r.get("gpu_spec") or "").strip()]
    if not pool:
        raise ConfigError(f"{src}: no pod names a gpu_spec; derive from a trace that has some")
    rng = np.random.default_rng(seed)
    gpu = [i for i, r in enumerate(rows) if _int(r, "num_gpu", src, i + 2) > 0]
    chosen = set(int(i) for i in rng.choice(gpu, size=round(fraction * len(gpu)), replace=False))
    out = Path(dest)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        for i, r in enumerate(rows):
            writer.writerow({**r, "gpu_spec": pool[int(rng.integers(len(pool)))] if i in chosen else ""})
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------- heterogeneous fleets

FLEET_NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model", "vendor", "vram_mib", "rate")
FLEET_POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "vram_mib", "tflops")
MIB = 2**20
NO_MODEL = frozenset({"\0none"})  # the allowed set of a pod no model of the fleet can serve


def is_fleet(nodes: str | Path) -> bool:
    """A node list with per-device VRAM and exchange rates (``vendor,vram_mib,rate`` columns)."""
    try:
        with Path(nodes).open(newline="") as fh:
            header = next(csv.reader(fh), [])
    except OSError as exc:
        raise ConfigError(f"{nodes}: cannot read ({exc.strerror}); pass an existing CSV file") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{nodes}: not a text CSV file ({exc}); pass an openb CSV "
                          "(see the README's 'Traces' section)") from exc
    return all(c in header for c in FLEET_NODE_COLUMNS)


def load_fleet(path: str | Path) -> list[NodeInventory]:
    """A mixed fleet: ``gpu`` devices of ``model`` (``vendor``) per node, ``vram_mib`` each, offering
    ``rate`` × 312 A100-equivalent TFLOPS (``rate``: the model's exchange rate)."""
    p = Path(path)
    rows = _rows(p, FLEET_NODE_COLUMNS)
    if not rows:
        raise ConfigError(f"{p}: no nodes; the file needs at least one data row")
    out = []
    for i, r in enumerate(rows, start=2):
        g = _int(r, "gpu", p, i)
        if not 0 <= g <= MAX_GPUS:
            raise ConfigError(f"{p}:{i}: gpu={g} is outside 0..{MAX_GPUS}")
        try:
            rate = float(r["rate"])
        except ValueError:
            raise ConfigError(f"{p}:{i}: column 'rate' must be a number, got {r['rate']!r}") from None
        if rate <= 0 or _int(r, "vram_mib", p, i) <= 0:
            raise ConfigError(f"{p}:{i}: vram_mib and rate must be > 0")
        model, vendor = r["model"].strip(), r["vendor"].strip()
        devs = tuple(DeviceInfo(f"{vendor}-{j}", vendor, model, f"{r['sn']}-{j}", j, _int(r, "vram_mib", p, i) * MIB,
                                int(round(rate * A100_FP16_TFLOPS * 1000))) for j in range(g))
        out.append(NodeInventory(r["sn"], devs, _int(r, "cpu_milli", p, i), _int(r, "memory_mib", p, i) * MIB))
    return out


def load_fleet_pods(path: str | Path) -> list[PodDemand]:
    """Pods asking VRAM (MiB) and A100-equivalent TFLOPS in abstract units; ``gpu_spec`` lists models."""
    p = Path(path)
    rows = _rows(p, FLEET_POD_COLUMNS)
    pods = []
    for i, r in enumerate(rows, start=2):
        try:
            tflops = float(r["tflops"])
        except ValueError:
            raise ConfigError(f"{p}:{i}: column 'tflops' must be a number, got {r['tflops']!r}") from None
        vram = _int(r, "vram_mib", p, i)
        if vram <= 0 and tflops <= 0:
            raise ConfigError(f"{p}:{i}: a fleet pod asks vram_mib or tflops (> 0)")
        spec = frozenset(s.strip() for s in (r.get("gpu_spec") or "").split("|") if s.strip())
        pods.append(PodDemand(PodRef(f"u{i}", "replay", r["name"]),
                              (ContainerDemand("main", vram * MIB, int(round(tflops * 1000))),),
                              Constraints(models_in=spec), _int(r, "cpu_milli", p, i),
                              _int(r, "memory_mib", p, i) * MIB))
    if not pods:
        raise ConfigError(f"{p}: no pods; the file needs at least one data row")
    return pods


def fleet_targets(table: DeviceTable, pods: Sequence[PodDemand]) -> dict[str, TargetWorkload]:
    """The whole trace's pod mix as target workload in each model's units, with model constraints."""
    out: dict[str, TargetWorkload] = {}
    for model, dev in table.reference.items():
        allowed = [frozenset(m for m, d in table.reference.items() if p.constraints.allows(d)) for p in pods]
        everything = frozenset(table.models)
        reqs = []
        for p, a in zip(pods, allowed, strict=True):
            c = p.containers[0]
            k = device_count(c, dev)
            reqs.append(Request(p.cpu_milli, p.memory_bytes, k, share_milli(c, dev) if k == 1 else WHOLE,
                                frozenset() if a == everything else a or NO_MODEL))
        out[model] = TargetWorkload.from_requests(reqs, models=table.models)
    return out


def simulate_fleet(nodes: Sequence[NodeInventory], pods: Sequence[PodDemand], policy_name: str, seed: int, *,
                   inflation: float = 1.0, targets: dict[str, TargetWorkload] | None = None,
                   table: DeviceTable | None = None) -> SeedResult:
    """One seed of a mixed-fleet replay through the allocator's own planner (:func:`plan_table`).

    Capacity and demand are A100-equivalent TFLOPS: pods arrive (resampled, shuffled) until their
    TFLOPS reach ``inflation`` × the fleet's; the allocation ratio is the TFLOPS granted (a share: what
    the pod asked; whole devices: the devices) over the fleet's, read when arrivals reach 100%.
    """
    get_policy(policy_name)
    table = table or DeviceTable.build(list(nodes))
    targets = targets or fleet_targets(table, pods)
    capacity = int(table.tflops[table.present].sum())
    demand = np.array([p.containers[0].tflops_milli for p in pods], dtype=np.int64)
    order = _arrivals(demand, capacity, seed, max(inflation, 1.3))
    rng = np.random.default_rng(seed + 7919)
    usage: dict[str, dict[str, tuple[int, int]]] = {}
    cpu_mem: dict[str, tuple[int, int]] = {}
    uv, ut = table.scatter(usage)
    arrived = allocated = placed = skipped = 0
    ratio_at_100 = -1.0
    lat: list[float] = []
    wall: list[float] = []
    for i in order:
        pod = pods[i]
        d = int(demand[i])
        if arrived + d > capacity and ratio_at_100 < 0:
            ratio_at_100 = 100.0 * allocated / capacity
        if arrived + d > inflation * capacity:
            break
        arrived += d
        t0 = time.perf_counter()
        c0 = time.thread_time_ns()
        got = plan_table(pod, table, usage, cpu_mem, targets.__getitem__, rng, proposals=1, used=(uv, ut),
                         best_only=True, policy_name=policy_name)
        lat.append((time.thread_time_ns() - c0) / 1e6)
        wall.append((time.perf_counter() - t0) * 1000.0)
        if not got or got[0].plan is None:
            skipped += 1
            continue
        plan = got[0].plan
        nu = usage.setdefault(plan.node, {})
        for _, grants in plan.containers:
            for g in grants:
                u = nu.get(g.device, (0, 0))
                nu[g.device] = (u[0] + g.vram_bytes, u[1] + g.tflops_milli)
                rc = table.where[(plan.node, g.device)]
                uv[rc] += g.vram_bytes
                ut[rc] += g.tflops_milli
                allocated += g.tflops_milli
        cm = cpu_mem.get(plan.node, (0, 0))
        cpu_mem[plan.node] = (cm[0] + pod.cpu_milli, cm[1] + pod.memory_bytes)
        placed += 1
    if ratio_at_100 < 0:
        ratio_at_100 = 100.0 * allocated / capacity
    return SeedResult(ratio_at_100, 0.0, placed, skipped, np.array(lat), (), np.array(wall))


def replay_fleet(nodes: str | Path, pods_csv: str | Path, policies: Sequence[str], seeds: Sequence[int], *,
                 inflation: float = 1.0) -> list[PolicyResult]:
    fleet = load_fleet(nodes)
    pods = load_fleet_pods(pods_csv)
    for name in policies:
        get_policy(name)
    table = DeviceTable.build(fleet)
    targets = fleet_targets(table, pods)
    return [PolicyResult(name, tuple(simulate_fleet(fleet, pods, name, s, inflation=inflation, targets=targets,
                                                    table=table) for s in seeds)) for name in policies]


#: openb model -> (vendor, catalog model, VRAM GiB, exchange rate) for the derived mixed fleet
MIXED_FLEET = {"G2": ("nvidia", "a100-80g", 80, 1.0), "G3": ("ascend", "910b3", 64, 0.85),
               "T4": ("nvidia", "t4", 16, 0.2083), "P100": ("hygon", "k100", 64, 0.6),
               "V100M16": ("cambricon", "mlu370-x8", 48, 0.3077), "V100M32": ("nvidia", "v100", 32, 0.4006),
               "A10": ("nvidia", "a10", 24, 0.4006)}
def derive_mixed_fleet(nodes_csv: str | Path, pods_csv: str | Path, out_dir: str | Path, *,
                       every: int = 4, pods: int = 2000) -> tuple[Path, Path]:
    """The mixed-fleet scenario from openb: every ``every``-th openb node, its model mapped by
    :data:`MIXED_FLEET` to a vendor/model with that model's VRAM and exchange rate; the first
    ``pods`` pods of ``pods_csv``, a share ``m`` of one GPU asking ``m``/1000 of the fleet's *average*
    device (mean VRAM, mean TFLOPS over its devices, so the trace's host CPU/memory per unit of device
    demand stays as in openb), a ``k``-GPU pod ``k`` times it, ``gpu_spec`` mapped the same way."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src_nodes = _rows(Path(nodes_csv), ("sn", "cpu_milli", "memory_mib", "gpu", "model"))
    n_path, p_path = out / "mixed_fleet_nodes.csv", out / "mixed_fleet_pods.csv"
    kept = src_nodes[::every]
    devices = sum(int(r["gpu"]) for r in kept)
    ref_mib = sum(int(r["gpu"]) * MIXED_FLEET[r["model"].strip()][2] * 1024 for r in kept) / devices
    ref_tflops = sum(int(r["gpu"]) * MIXED_FLEET[r["model"].strip()][3] for r in kept) * A100_FP16_TFLOPS / devices
    with n_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FLEET_NODE_COLUMNS)
        for r in kept:
            vendor, model, gib, rate = MIXED_FLEET[r["model"].strip()]
            w.writerow([r["sn"], r["cpu_milli"], r["memory_mib"], r["gpu"], model, vendor, gib * 1024, rate])
    with p_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow((*FLEET_POD_COLUMNS, "gpu_spec"))
        for tp in load_pods(pods_csv):
            q = tp.request
            if q.count == 0:
                continue
            share = q.milli / WHOLE if q.count == 1 else float(q.count)
            spec = "|".join(sorted({MIXED_FLEET[m][1] for m in tp.models if m in MIXED_FLEET}))
            w.writerow([tp.name, q.cpu, q.mem, round(share * ref_mib), round(share * ref_tflops, 3), spec])
            pods -= 1
            if pods == 0:
                break
    return n_path, p_path
