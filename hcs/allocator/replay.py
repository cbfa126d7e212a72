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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hcs.allocator.policies import (
    WHOLE,
    IntArray,
    NodeView,
    PolicyContext,
    RecentMix,
    Request,
    TargetWorkload,
    get_policy,
    pick,
)
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
    rng = np.random.default_rng(seed)
    demand = np.array([p.request.gpu_demand for p in pods], dtype=np.int64)
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
    from hcs.allocator.policies import _class_stats

    cnt_all, usable_all, pos_all = _class_stats(target, gpu_free)  # kept in step, node by node
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
            cnt_all, usable_all, pos_all = _class_stats(target, gpu_free)
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
            c1, u1, p1 = _class_stats(target, gpu_free[node:node + 1])
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
    from hcs.allocator.policies import node_fragmentation

    return float(100.0 * node_fragmentation(target, gpu_free, cpu_free, model).sum() / capacity)


def target_of(pods: Sequence[TracePod], demand_exponent: float = 0.0,
              models: Sequence[str] = ()) -> TargetWorkload:
    """The trace's pod mix as target workload; with ``models`` (the cluster's) it knows which
    classes may use which model (each pod's ``gpu_spec``)."""
    return TargetWorkload.from_requests([p.request for p in pods], demand_exponent, models)


def replay(nodes: str | Path, pods_csv: str | Path, policies: Sequence[str], seeds: Sequence[int], *,
           inflation: float = 1.0, weights: dict[str, float] | None = None,
           target_mode: str = "trace") -> list[PolicyResult]:
    """``target_mode``: ``trace`` (the paper's: the whole trace's pod mix) or ``recent`` (the live
    allocator's decayed mix of the requests placed so far)."""
    if target_mode not in ("trace", "recent"):
        raise ConfigError(f"target {target_mode!r}: use 'trace' or 'recent'")
    cluster = load_nodes(nodes)
    pods = load_pods(pods_csv)
    for name in policies:
        get_policy(name)  # validate names before the long run
    target = target_of(pods, models=cluster.models)
    out = []
    for name in policies:
        results = tuple(simulate(cluster, pods, name, s, target, inflation=inflation, weights=weights,
                                 mix=RecentMix() if target_mode == "recent" else None)
                        for s in seeds)
        out.append(PolicyResult(name, results))
    return out


def plot(results: Sequence[PolicyResult], path: str | Path, title: str = "") -> None:
    """Allocation ratio against arrived demand, mean over seeds, one line per policy (PNG)."""
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
