"""Placement policies: small, pure, vectorised scoring functions, pluggable by name.

Every policy sees the same thing — a :class:`NodeView` of the candidate nodes (already filtered
to those where the request fits) and the :class:`Request` — and returns a ``(C, G)`` array of
scores, higher is better, ``-inf`` where device ``g`` of node ``c`` cannot take the request. For a
single-device request the column is the device the request lands on; for a multi-device
request (whole devices) any valid column carries the node's score and the caller takes the
node's free whole devices.

Device capacity is counted in *milli-devices* (1000 = one whole device): the trace replay uses
openb's ``gpu_milli`` directly, real placement converts VRAM/TFLOPS into the binding fraction
of each device (see :mod:`hcs.allocator.placement`). CPU is in milli-cores, memory in any one
unit per view.

Policies: ``random``, ``best-fit``, ``gpu-packing``, ``dot-product``, ``fgd`` (Fragmentation
Gradient Descent, Weng et al., USENIX ATC '23) and ``hcs`` (the default; see :func:`score_hcs`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from hcs.errors import ConfigError

T = TypeVar("T")
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

WHOLE = 1000  # milli-devices in one device
NEG_INF = -np.inf
SCARCE = 1.0  # weight of the hcs scarcity term (see score_hcs)


@dataclass(frozen=True)
class Request:
    """One placement request: ``count`` devices of ``milli`` each (count > 1 means whole devices)."""

    cpu: int
    mem: int
    count: int
    milli: int
    models: frozenset[str] = frozenset()  # device models the request may use; empty = any

    @property
    def whole(self) -> bool:
        return self.count > 1 or self.milli >= WHOLE

    @property
    def gpu_demand(self) -> int:
        return self.count * (WHOLE if self.count > 1 else self.milli)


@dataclass(frozen=True, eq=False)
class NodeView:
    """Candidate nodes as arrays. ``gpu_free`` is 0 for absent or unusable devices."""

    gpu_free: IntArray  # (C, G) milli free per device
    gpu_present: npt.NDArray[np.bool_]  # (C, G)
    cpu_free: IntArray  # (C,)
    mem_free: IntArray  # (C,)
    cpu_total: IntArray  # (C,)
    mem_total: IntArray  # (C,)
    penalty: FloatArray | None = None  # (C, G) health penalty >= 0 (degraded devices), optional
    #: (C,) each node's device model as an index into ``TargetWorkload.models`` (-1: a model no
    #: constraint names); None: the model-blind measure (every class may use every node)
    model: IntArray | None = None
    #: optional cache of ``class_stats(target, gpu_free)`` for these rows (the replay keeps it
    #: incrementally; it must match ``gpu_free`` and the context's target)
    stats: tuple[IntArray, IntArray, IntArray] | None = None

    @property
    def n_gpus(self) -> IntArray:
        return np.asarray(self.gpu_present.sum(axis=1), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class TargetWorkload:
    """The workload FGD measures fragmentation against: request classes and their popularity.

    Classes are grouped by device shape ``(count, milli)``; within a class the CPU requests are
    kept as a cumulative popularity table so ``W[c](cpu_free)`` — the popularity of class-``c``
    requests whose CPU fits — is one ``searchsorted``.

    With ``models`` (the cluster's device models) the table is kept per model too: ``w_model[m]``
    counts only the requests whose model constraint admits model ``m`` (row -1: a model nobody
    names, i.e. unconstrained requests only), so a device a class may not use is fragment for that
    class (FGD's task classes with their model constraints). ``sets``/``set_share`` are the
    distinct constraint sets over ``models`` and the share of device demand confined to each (the
    input of :func:`model_prices`).
    """

    count: IntArray  # (K,) devices per request of class k
    milli: IntArray  # (K,) milli per device (1000 for multi-device)
    cpu_grid: IntArray  # (V,) sorted distinct CPU requests
    w_table: FloatArray  # (V+1, K): popularity of class k with cpu <= grid value
    total: float  # popularity of all classes incl. device-less requests (sums to 1)
    cpu_per_milli: float = 0.0  # mean CPU (milli-cores) the workload asks per device-milli
    mem_per_milli: float = 0.0  # mean memory per device-milli
    models: tuple[str, ...] = ()
    w_model: FloatArray | None = None  # (M+1, V+1, K)
    sets: npt.NDArray[np.bool_] | None = None  # (S, M) membership of each constraint set
    set_share: FloatArray | None = None  # (S,) share of all device demand confined to set s

    @classmethod
    def from_requests(cls, requests: Sequence[Request], demand_exponent: float = 0.0,
                      models: Sequence[str] = (), weights: Sequence[float] | FloatArray | None = None
                      ) -> TargetWorkload:
        """Popularity of each request; ``demand_exponent`` > 0 weights requests by device demand^a,
        ``weights`` (e.g. a recency decay) multiplies each request's popularity."""
        if not requests:
            raise ConfigError("target workload: no requests given; pass at least one pod")
        n = len(requests)
        return cls.from_arrays(np.fromiter((r.count for r in requests), dtype=np.int64, count=n),
                               np.fromiter((r.milli for r in requests), dtype=np.int64, count=n),
                               np.fromiter((r.cpu for r in requests), dtype=np.int64, count=n),
                               np.fromiter((r.mem for r in requests), dtype=np.int64, count=n),
                               [r.models for r in requests], demand_exponent, models, weights)

    @classmethod
    def from_arrays(cls, count: IntArray, milli: IntArray, cpu: IntArray, mem: IntArray,
                    allowed_models: Sequence[frozenset[str]], demand_exponent: float = 0.0,
                    models: Sequence[str] = (), weights: Sequence[float] | FloatArray | None = None
                    ) -> TargetWorkload:
        """:meth:`from_requests` over request fields as arrays (``allowed_models``: each one's
        :attr:`Request.models`)."""
        if not len(count):
            raise ConfigError("target workload: no requests given; pass at least one pod")
        has = count > 0
        shape_milli = np.where(count > 1, WHOLE, milli)
        demand = (count * shape_milli).astype(np.float64)
        raw = np.where(has, demand ** demand_exponent, 1.0 if demand_exponent == 0 else 0.0)
        if weights is not None:
            raw = raw * np.asarray(weights, dtype=np.float64)
        norm = raw / raw.sum()
        # classes sorted by milli (see class_stats), then count
        code, k = np.unique(shape_milli[has] * 4096 + np.minimum(count[has], 4095), return_inverse=True)
        keys = np.stack([code // 4096, code % 4096], axis=1)
        k = k.reshape(-1)
        grid = np.unique(cpu)
        pos = np.searchsorted(grid, cpu[has], side="left") + 1
        n_k, n_v = len(keys), len(grid) + 1
        cell = pos * n_k + k  # flat (V+1, K) index of each device request
        w_dev = norm[has]
        table = np.cumsum(np.bincount(cell, weights=w_dev, minlength=n_v * n_k).reshape(n_v, n_k), axis=0)
        w_model: FloatArray | None = None
        sets: npt.NDArray[np.bool_] | None = None
        share: FloatArray | None = None
        if models:
            dw = demand[has] * (np.asarray(weights, dtype=np.float64)[has] if weights is not None else 1.0)
            w_model, sets, share = _model_tables(models, [ms for ms, c in zip(allowed_models, count, strict=True)
                                                          if c > 0], cell, w_dev, dw, n_v, n_k)
        return cls(
            count=np.asarray(keys[:, 1], dtype=np.int64),
            milli=np.asarray(keys[:, 0], dtype=np.int64),
            cpu_grid=grid,
            w_table=np.asarray(table, dtype=np.float64),
            total=1.0,
            cpu_per_milli=_ratio(cpu[has], demand[has]),
            mem_per_milli=_ratio(mem[has], demand[has]),
            models=tuple(models),
            w_model=w_model,
            sets=sets,
            set_share=share,
        )

    def weights(self, cpu_free: IntArray, model: IntArray | None = None) -> FloatArray:
        """``(S, K)`` popularity of each class whose CPU request fits in ``cpu_free`` (and, with
        ``model``, whose model constraint admits the node's model)."""
        idx = np.searchsorted(self.cpu_grid, cpu_free, side="right")
        if model is None or self.w_model is None:
            return np.asarray(self.w_table[idx], dtype=np.float64)
        return np.asarray(self.w_model[model, idx], dtype=np.float64)


def _model_tables(models: Sequence[str], allowed_models: Sequence[frozenset[str]], cell: IntArray, w_dev: FloatArray,
                  dw: FloatArray, n_v: int, n_k: int) -> tuple[FloatArray, npt.NDArray[np.bool_], FloatArray]:
    """The per-model side of :meth:`TargetWorkload.from_arrays` for its device requests (``cell``: each one's
    flat (V+1, K) index, ``w_dev`` its popularity, ``dw`` its weighted device demand, ``allowed_models`` its
    model constraint): ``w_model`` (M+1, V+1, K), the distinct constraint ``sets`` (S, M) and their
    ``set_share`` of device demand."""
    mi = {m: i for i, m in enumerate(models)}
    n_m = len(models)
    allowed = np.ones((len(cell), n_m + 1), dtype=bool)  # column n_m: models nobody names
    set_of: dict[frozenset[str], int] = {}
    set_rows: list[list[int]] = []
    set_demand: list[float] = []
    for j, ms in enumerate(allowed_models):
        if not ms:
            continue
        s = set_of.get(ms)
        if s is None:
            s = set_of[ms] = len(set_rows)
            set_rows.append(sorted({mi[m] for m in ms if m in mi}))
            set_demand.append(0.0)
        if len(set_rows[s]) == n_m:  # it may use every model here: unconstrained
            continue
        set_demand[s] += float(dw[j])
        allowed[j] = False
        allowed[j, set_rows[s]] = True
    flat = np.arange(n_m + 1)[None, :] * (n_v * n_k) + cell[:, None]
    w_flat = np.bincount(flat[allowed], weights=np.broadcast_to(w_dev[:, None], allowed.shape)[allowed],
                         minlength=(n_m + 1) * n_v * n_k).reshape(n_m + 1, n_v, n_k)
    w_model = np.asarray(np.cumsum(w_flat, axis=1), dtype=np.float64)
    # distinct sets over the cluster's models (two spellings of one set merge)
    merged: dict[tuple[int, ...], float] = {}
    for members, d in zip(set_rows, set_demand, strict=True):
        if len(members) < n_m:
            merged[tuple(members)] = merged.get(tuple(members), 0.0) + d
    sets = np.zeros((len(merged), n_m), dtype=bool)
    for i, members_t in enumerate(merged):
        sets[i, list(members_t)] = True
    share = np.array(list(merged.values()), dtype=np.float64) / max(float(dw.sum()), 1e-12)
    return w_model, sets, share


#: the target workload (device shares of one device) until enough real requests have been seen
DEFAULT_MIX = (250, 500, 500, 1000, 1000, 1000)


class RecentMix(Generic[T]):
    """The live target workload: the last ``history`` requests, the newest weighing 1 and each older
    one ``decay`` times the next (half-life ~69 requests at 0.99), with their real CPU, memory,
    device shape and model constraint. The live allocator and ``hcs replay --target recent`` share it.

    Items are whatever the caller records (the live allocator: a pod's demand in bytes, converted
    per device model when the target is built; the replay: :class:`Request` as is). Until
    ``warmup`` items have been seen the target is :data:`DEFAULT_MIX`.
    """

    def __init__(self, history: int = 256, decay: float = 0.99, warmup: int = 16) -> None:
        if not 0 < decay <= 1 or history < 1:
            raise ConfigError(f"request mix: decay {decay} must be in (0, 1] and history {history} >= 1")
        self._items: deque[T] = deque(maxlen=history)
        self._decay = np.power(decay, np.arange(history - 1, -1, -1, dtype=np.float64))
        self.warmup = warmup
        self.generation = 0  # bumped by every add: targets built before are stale

    def add(self, item: T) -> None:
        self._items.append(item)
        self.generation += 1

    def __len__(self) -> int:
        return len(self._items)

    def entries(self) -> tuple[list[T], FloatArray] | None:
        """The recorded items, oldest first, with their weights; None while warming up."""
        if len(self._items) < self.warmup:
            return None
        return list(self._items), self._decay[-len(self._items):]

    def target(self, convert: Callable[[T], Request], models: Sequence[str] = ()) -> TargetWorkload:
        got = self.entries()
        if got is None:
            return default_target(models)
        return TargetWorkload.from_requests([convert(i) for i in got[0]], models=models, weights=got[1])


def default_target(models: Sequence[str] = ()) -> TargetWorkload:
    return TargetWorkload.from_requests([Request(0, 0, 1, m) for m in DEFAULT_MIX], models=models)


def model_prices(target: TargetWorkload, free_by_model: FloatArray, cap: float = 10.0) -> FloatArray:
    """``(M+1,)`` scarcity price of one device-milli of each model (last entry: unnamed models, 0).

    For every constraint set ``S`` of the target workload, the demand expected to be confined to
    ``S`` is its share of all device demand times the cluster's free capacity (the cluster is
    expected to fill); its *pressure* is that over the free capacity of ``S``'s models. A model's
    price is the summed pressure of the sets it belongs to (capped): consuming it takes capacity
    that confined requests may need. Sets containing every model a request may use add the same
    amount to each of its candidates, so only the avoidable part changes a decision.
    """
    out = np.zeros(len(target.models) + 1)
    if target.sets is None or target.set_share is None or not len(target.set_share):
        return out
    total = float(free_by_model.sum())
    if total <= 0:
        return out
    free_s = target.sets.astype(np.float64) @ free_by_model  # (S,)
    pressure = np.minimum(cap, target.set_share * total / np.maximum(free_s, 1.0))
    out[:-1] = pressure @ target.sets.astype(np.float64)
    return out


def _ratio(num: IntArray, den: FloatArray) -> float:
    d = float(den.sum())
    return float(num.sum()) / d if d > 0 else 0.0


@dataclass(frozen=True, eq=False)
class PolicyContext:
    """What a policy may use besides the view: the target workload and a seeded RNG."""

    rng: np.random.Generator
    target: TargetWorkload | None = None
    weights: Mapping[str, float] = field(default_factory=dict)
    #: (M,) free device-milli per model of ``target.models`` over the whole cluster (for the
    #: ``hcs`` scarcity term); the caller keeps it current
    model_free: FloatArray | None = None


Policy = Callable[[NodeView, Request, PolicyContext], FloatArray]


def valid_mask(view: NodeView, req: Request) -> npt.NDArray[np.bool_]:
    """Devices that can take (one device of) the request."""
    need = WHOLE if req.whole else req.milli
    return np.asarray(view.gpu_free >= need, dtype=np.bool_) & view.gpu_present


def _broadcast(view: NodeView, req: Request, node_score: FloatArray,
               dev_score: FloatArray | None = None) -> FloatArray:
    """Combine a per-node score with an optional per-device score into the (C, G) result."""
    out = np.repeat(node_score[:, None], view.gpu_free.shape[1], axis=1)
    if dev_score is not None:
        out = out + dev_score
    if req.count == 0:
        out[:, 1:] = NEG_INF  # no device: one column per node
        return out
    out[~valid_mask(view, req)] = NEG_INF
    return np.nan_to_num(out, nan=NEG_INF, posinf=np.inf, neginf=NEG_INF)


# --------------------------------------------------------------------------- baselines


def score_random(view: NodeView, req: Request, ctx: PolicyContext) -> FloatArray:
    """Uniformly random among feasible placements."""
    c, g = view.gpu_free.shape
    return _broadcast(view, req, np.zeros(c), ctx.rng.random((c, g)))


def _node_leftover(view: NodeView, req: Request) -> FloatArray:
    """Normalised remaining CPU + memory + device capacity after placing ``req`` (lower = tighter)."""
    gpu_total = np.maximum(view.n_gpus * WHOLE, 1)
    gpu_left = (view.gpu_free.sum(axis=1) - req.gpu_demand) / gpu_total
    cpu_left = (view.cpu_free - req.cpu) / np.maximum(view.cpu_total, 1)
    mem_left = (view.mem_free - req.mem) / np.maximum(view.mem_total, 1)
    return np.asarray(gpu_left + cpu_left + mem_left, dtype=np.float64)


def score_best_fit(view: NodeView, req: Request, ctx: PolicyContext) -> FloatArray:
    """Node with the least remaining resources (sum of normalised dimensions); tightest device."""
    dev = -(view.gpu_free - req.milli) / WHOLE if not req.whole else None
    return _broadcast(view, req, -_node_leftover(view, req), None if dev is None else dev * 1e-3)


def score_gpu_packing(view: NodeView, req: Request, ctx: PolicyContext) -> FloatArray:
    """Prefer occupied devices first (shares), then nodes with the fewest idle whole devices."""
    idle = ((view.gpu_free >= WHOLE) & view.gpu_present).sum(axis=1).astype(np.float64)
    node = -idle
    if req.whole or req.count == 0:
        return _broadcast(view, req, node)
    occupied = (view.gpu_free < WHOLE) & view.gpu_present
    dev = np.where(occupied, 100.0, 0.0) - view.gpu_free / WHOLE
    return _broadcast(view, req, node, dev)


def score_dot_product(view: NodeView, req: Request, ctx: PolicyContext) -> FloatArray:
    """DotProd as in the FGD paper's baseline: the node whose normalised free resources have the
    smallest dot product with the request (packs along the request's direction; Tetris' max-alignment
    variant spreads instead and scores far lower on these traces)."""
    gpu_total = np.maximum(view.n_gpus * WHOLE, 1)
    d_cpu = req.cpu / np.maximum(view.cpu_total, 1)
    d_mem = req.mem / np.maximum(view.mem_total, 1)
    d_gpu = req.gpu_demand / gpu_total
    f_cpu = view.cpu_free / np.maximum(view.cpu_total, 1)
    f_mem = view.mem_free / np.maximum(view.mem_total, 1)
    f_gpu = view.gpu_free.sum(axis=1) / gpu_total
    node = -np.asarray(d_cpu * f_cpu + d_mem * f_mem + d_gpu * f_gpu, dtype=np.float64)
    dev = None if req.whole else -(view.gpu_free - req.milli) / WHOLE * 1e-3
    return _broadcast(view, req, node, dev)


# --------------------------------------------------------------------------- fragmentation


def class_stats(target: TargetWorkload, gpu_free: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Per node and class: devices with ``free >= milli`` (count) and their summed free capacity.

    Classes are sorted by ``milli``, so device ``g`` serves exactly the classes ``k < pos[g]`` with
    ``pos = searchsorted(milli, free, 'right')``: one histogram per node instead of a (C, G, K) cube.
    Returns ``(cnt, usable, pos)`` with shapes (C, K), (C, K), (C, G).
    """
    k = len(target.milli)
    c = gpu_free.shape[0]
    pos = np.searchsorted(target.milli, gpu_free, side="right")
    idx = (np.arange(c)[:, None] * (k + 1) + pos).ravel()
    hist = np.bincount(idx, minlength=c * (k + 1)).reshape(c, k + 1)
    hsum = np.bincount(idx, weights=gpu_free.ravel(), minlength=c * (k + 1)).reshape(c, k + 1)
    cnt = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
    usable = np.cumsum(hsum[:, ::-1], axis=1)[:, ::-1][:, 1:]
    return cnt, usable.astype(np.int64), pos


def node_fragmentation(target: TargetWorkload, gpu_free: IntArray, cpu_free: IntArray,
                       model: IntArray | None = None) -> FloatArray:
    """Expected fragmented device capacity (milli) of each node state, FGD's ``F_n(M)``.

    For a class ``c`` the node's free capacity is usable only when the class fits (CPU, count of
    devices with ``free >= milli``); then the usable part is the sum over those devices, the rest
    is fragment: ``F = P*T - sum_c W_c(cpu) * fits_c * usable_c``.
    """
    cnt, usable, _ = class_stats(target, gpu_free)
    total = gpu_free.sum(axis=1).astype(np.float64)
    w = target.weights(cpu_free, model)
    return np.asarray(target.total * total - (w * (cnt >= target.count) * usable).sum(axis=1),
                      dtype=np.float64)


def _distinct_devices(gpu_free: IntArray, valid: npt.NDArray[np.bool_]
                      ) -> tuple[IntArray, IntArray, npt.NDArray[np.bool_], IntArray]:
    """Valid devices sorted per node; ``keep`` marks one device per distinct free value.

    Returns ``(order, sorted_free, keep, rep)``: ``rep[c, j]`` is the sorted position of the kept
    device equivalent to sorted position ``j`` (devices with equal free capacity on one node are
    interchangeable for the fragmentation measure, so it is computed once per distinct value).
    """
    masked = np.where(valid, gpu_free, -1)
    order = np.argsort(masked, axis=1, kind="stable")
    fs = np.take_along_axis(masked, order, axis=1)
    keep = fs >= 0
    keep[:, 1:] &= fs[:, 1:] != fs[:, :-1]
    rep = np.maximum.accumulate(np.where(keep, np.arange(fs.shape[1]), 0), axis=1)
    return order, fs, keep, rep


def fragmentation_delta(view: NodeView, req: Request, target: TargetWorkload) -> FloatArray:
    """``(C, G)`` change of node fragmentation if ``req`` lands on (node c, device g).

    Entries for devices that cannot take the request are ``nan``.
    """
    f = view.gpu_free
    cnt, usable, pos = view.stats if view.stats is not None else class_stats(target, f)
    total = f.sum(axis=1).astype(np.float64)
    w_before = target.weights(view.cpu_free, view.model)
    before = target.total * total - (w_before * (cnt >= target.count) * usable).sum(axis=1)
    w_after = target.weights(view.cpu_free - req.cpu, view.model)  # (C, K)
    if req.count == 0 or req.whole:
        k = req.count
        cnt_a = cnt - k
        usable_a = usable - k * WHOLE
        after = target.total * (total - k * WHOLE) - (w_after * (cnt_a >= target.count) * usable_a).sum(axis=1)
        out = np.repeat((after - before)[:, None], f.shape[1], axis=1)
        if k:
            out[~valid_mask(view, req)] = np.nan
        return out
    order, fs, keep, rep = _distinct_devices(f, valid_mask(view, req))
    rows, j = np.nonzero(keep)
    cols = order[rows, j]
    fo = f[rows, cols]
    fn = fo - req.milli
    ks = np.arange(len(target.milli))
    ge_old = ks < pos[rows, cols][:, None]  # (P, K)
    ge_new = ks < np.searchsorted(target.milli, fn, side="right")[:, None]
    cnt_a = cnt[rows] - ge_old + ge_new
    usable_a = usable[rows] - ge_old * fo[:, None] + ge_new * fn[:, None]
    after = target.total * (total[rows] - req.milli) - (w_after[rows] * (cnt_a >= target.count) * usable_a).sum(axis=1)
    sorted_delta = np.full(f.shape, np.nan)
    sorted_delta[rows, j] = after - before[rows]
    filled = np.take_along_axis(sorted_delta, rep, axis=1)
    filled[fs < 0] = np.nan
    out = np.empty_like(filled)
    np.put_along_axis(out, order, filled, axis=1)
    return out


def stranding_delta(view: NodeView, req: Request, target: TargetWorkload) -> FloatArray:
    """``(C,)`` change of device capacity stranded by a lack of host CPU or memory.

    A node's free devices need, on average, ``cpu_per_milli`` CPU per device-milli to be used;
    capacity beyond what the node's free CPU (or memory) can feed is stranded.
    """
    gpu = view.gpu_free.sum(axis=1).astype(np.float64)

    def stranded(gpu_left: FloatArray, cpu_left: IntArray, mem_left: IntArray) -> FloatArray:
        by_cpu = cpu_left / target.cpu_per_milli if target.cpu_per_milli > 0 else np.inf
        by_mem = mem_left / target.mem_per_milli if target.mem_per_milli > 0 else np.inf
        return np.asarray(np.maximum(0.0, gpu_left - np.minimum(by_cpu, by_mem)), dtype=np.float64)

    before = stranded(gpu, view.cpu_free, view.mem_free)
    after = stranded(gpu - req.gpu_demand, view.cpu_free - req.cpu, view.mem_free - req.mem)
    return after - before


def score_fgd(view: NodeView, req: Request, ctx: PolicyContext) -> FloatArray:
    """Fragmentation Gradient Descent: the placement with the smallest fragmentation increase."""
    if ctx.target is None:
        raise ConfigError("policy fgd needs a target workload (the trace's pod mix)")
    delta = fragmentation_delta(view, req, ctx.target)
    return _broadcast(view, req, np.zeros(len(view.cpu_free)), -delta)


def score_hcs(view: NodeView, req: Request, ctx: PolicyContext) -> FloatArray:
    """HCS default: fragmentation gradient with packing tie-breaks and a health penalty.

    Primary term: the fragmentation increase against the target workload (as FGD). FGD leaves
    many exact ties (identical empty nodes, equivalent devices) to a random pick; HCS breaks them
    deterministically toward the placement that keeps the most *whole* devices and CPU intact
    elsewhere: prefer already-used nodes and devices (best-fit on devices, then on nodes), so
    large requests keep finding empty nodes later.
    """
    if ctx.target is None:
        raise ConfigError("policy hcs needs a target workload (the live request mix or a trace's pod mix)")
    w_pack = float(ctx.weights.get("pack", 0.05))
    w_cpu = float(ctx.weights.get("cpu", 0.0))
    delta = fragmentation_delta(view, req, ctx.target)
    w_str = float(ctx.weights.get("strand", 2.0))
    if w_str:
        delta = delta + w_str * stranding_delta(view, req, ctx.target)[:, None]
    leftover = _node_leftover(view, req)
    cpu_left = (view.cpu_free - req.cpu) / np.maximum(view.cpu_total, 1)
    node = -w_pack * WHOLE * leftover - w_cpu * WHOLE * cpu_left
    w_sc = float(ctx.weights.get("scarce", SCARCE))
    if w_sc and view.model is not None and ctx.model_free is not None and req.count:
        node = node - w_sc * req.gpu_demand * model_prices(ctx.target, ctx.model_free)[view.model]
    dev = -delta
    if not req.whole and req.count:
        w_bf = float(ctx.weights.get("bf", 1e-3))
        w_occ = float(ctx.weights.get("occ", 0.0))
        occupied = view.gpu_free < WHOLE
        dev = dev - (view.gpu_free - req.milli) * w_bf + occupied * (w_occ * WHOLE)
    if view.penalty is not None:
        dev = dev - view.penalty * WHOLE
    return _broadcast(view, req, node, dev)


def score_spread(view: NodeView, req: Request, ctx: PolicyContext) -> FloatArray:
    """``hcs.io/scheduling-policy: spread``: the emptiest node and device (load spreading)."""
    dev = view.gpu_free / WHOLE * 1e-3
    if view.penalty is not None:
        dev = dev - view.penalty
    return _broadcast(view, req, _node_leftover(view, req), dev)


POLICIES: dict[str, Policy] = {
    "random": score_random,
    "best-fit": score_best_fit,
    "gpu-packing": score_gpu_packing,
    "dot-product": score_dot_product,
    "fgd": score_fgd,
    "hcs": score_hcs,
    "spread": score_spread,
}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}"
        ) from None


def pick(scores: FloatArray, rng: np.random.Generator, deterministic: bool = False) -> tuple[int, int] | None:
    """Index ``(c, g)`` of the best score, ties broken uniformly at random (``deterministic``: the
    first best, as the live planner does); None if all -inf."""
    flat = scores.ravel()
    best = flat.max(initial=NEG_INF)
    if not np.isfinite(best):
        return None
    if deterministic:
        i = int(np.argmax(flat))
        return i // scores.shape[1], i % scores.shape[1]
    ties = np.flatnonzero(flat >= best - 1e-9 * max(1.0, abs(best)))
    i = int(ties[rng.integers(len(ties))]) if len(ties) > 1 else int(ties[0])
    g = scores.shape[1]
    return i // g, i % g
