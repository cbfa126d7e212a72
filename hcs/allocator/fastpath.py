"""Vectorised placement for single-container pods (the common case) over a static device table.

:class:`DeviceTable` lays every (node, model) group out as one padded row of devices, rebuilt only
when the inventory changes; per call, usage is scattered into ``(R, W)`` arrays from the (sparse)
usage map, so scoring 500 nodes × 8 devices is a handful of numpy operations. Semantics are those
of :func:`hcs.allocator.placement.plan` (which still serves multi-container pods).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hcs.allocator.inventory import DeviceInfo, NodeInventory
from hcs.allocator.placement import (
    PROPOSALS,
    PodDemand,
    TargetFor,
    Usage,
    Verdict,
    _Group,
    _pick_whole,
    _plan_on,
    device_count,
    share_milli,
)
from hcs.allocator.policies import WHOLE, NodeView, PolicyContext, Request, get_policy
from hcs.quantity import human_bytes


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
                   {m: next(x[3][0] for x in rows if x[1] == m) for m in models})


def fast_plan(demand: PodDemand, table: DeviceTable, usage: Mapping[str, Usage],
              cpu_mem_used: Mapping[str, tuple[int, int]], target_for: TargetFor, rng: np.random.Generator,
              only: set[str] | None = None, proposals: int = PROPOSALS,
              used: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None) -> list[Verdict]:
    """``used``: the caller's ``(R, W)`` usage arrays (kept in step with ``usage``), else scattered here."""
    assert len(demand.containers) == 1, "fast_plan serves single-container pods"
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

    reason: dict[int, str] = {}  # node index -> why not
    best: dict[int, tuple[float, int, int]] = {}  # node index -> (score, row, col)
    waste_of: dict[int, int] = {}  # node index -> VRAM granted beyond the request (whole devices)
    policy = get_policy("hcs" if cons.policy == "binpack" else "spread")
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
    for rr in np.flatnonzero(scope & ~live):
        r = int(rr)
        ni = int(row_node[r])
        if not allowed[r]:
            reason.setdefault(ni, "no device matches the vendor/model constraints")
        elif not healthy_any[r]:
            reason[ni] = "every matching device is unhealthy"
        elif not cpu_ok[r]:
            reason[ni] = f"insufficient CPU ({int(cpu_total[ni] - cpu_used[ni])}m free)"
        else:
            reason[ni] = "insufficient memory"
    cand_node: list[npt.NDArray[np.int64]] = []
    cand_score: list[npt.NDArray[np.float64]] = []
    cand_row: list[npt.NDArray[np.int64]] = []
    cand_col: list[npt.NDArray[np.int64]] = []
    cand_waste: list[npt.NDArray[np.int64]] = []
    by_model: dict[str, list[int]] = defaultdict(list)
    for rr in np.flatnonzero(live):
        by_model[table.row_model[int(rr)]].append(int(rr))
    model_free = table.model_free(uv, ut)
    need = f"container {main.name} needs {human_bytes(main.vram_bytes)} VRAM / {main.tflops_milli / 1000:g} TFLOPS"
    for model, rows_list in by_model.items():
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
        target = target_for(model)
        m_index = target.models.index(model) if model in target.models else -1
        view = NodeView(fm, usable, np.maximum(0, cpu_total[ni_rows] - cpu_used[ni_rows]),
                        np.maximum(0, mem_total[ni_rows] - mem_used[ni_rows]), cpu_total[ni_rows],
                        mem_total[ni_rows], table.penalty[rows], np.full(len(rows), m_index, dtype=np.int64))
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
        for i in np.flatnonzero(~row_fits):
            ni = int(ni_rows[i])
            if k > 1:
                where = " in one interconnect island" if cons.high_bandwidth else ""
                reason[ni] = f"{need}: {k} idle devices{where} required, {int(idle_cnt[i])} idle"
            else:
                big = int(np.where(usable[i], fv[i], 0).max())
                reason[ni] = (f"{need}: no device has enough free (largest free VRAM {human_bytes(big)} of "
                              f"{human_bytes(int(vt[i].max()))})")
        if k > 1:
            for i in np.flatnonzero(row_fits):
                ni = int(ni_rows[i])
                r = rows_list[i]
                devs = [d for d, h in zip(table.devices[r], table.healthy[r], strict=False) if h]
                if _pick_whole(devs, k, usage.get(nodes[ni].name, {}), cons.high_bandwidth) is None:
                    reason[ni] = (f"{need}: {k} idle devices in one interconnect island required, none has "
                                  f"enough ({int(idle_cnt[i])} idle)")
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
    if cand_node:
        cn, cs = np.concatenate(cand_node), np.concatenate(cand_score)
        cr, cc, cw = np.concatenate(cand_row), np.concatenate(cand_col), np.concatenate(cand_waste)
        order = np.lexsort((-cs, cw))  # least waste first, then the policy's score
        _, first = np.unique(cn[order], return_index=True)
        for j in order[first]:
            best[int(cn[j])] = (float(cs[j]), int(cr[j]), int(cc[j]))
            waste_of[int(cn[j])] = int(cw[j])
    ranked = sorted(best.items(), key=lambda kv: (waste_of[kv[0]], -kv[1][0], nodes[kv[0]].name))
    lo = min((s for _, (s, _, _) in ranked), default=0.0)
    hi = max((s for _, (s, _, _) in ranked), default=0.0)
    out: list[Verdict] = []
    failed: list[Verdict] = []
    for rank, (ni, (sc, r, col)) in enumerate(ranked):
        inv = nodes[ni]
        norm = 100.0 if hi == lo else 100.0 * (sc - lo) / (hi - lo)
        the_plan = None
        if rank < proposals:
            eligible = [d for d in inv.devices if d.healthy and cons.allows(d)]
            healthy_devs = [d for d, h in zip(table.devices[r], table.healthy[r], strict=False) if h]
            g = _Group(inv, table.row_model[r], healthy_devs)
            the_plan = _plan_on(demand, g, healthy_devs.index(table.devices[r][col]), eligible,
                                usage.get(inv.name, {}), sc)
            if the_plan is None:
                failed.append(Verdict(inv.name, False, "no consistent device plan"))
                continue
        out.append(Verdict(inv.name, True, "fits", round(norm, 3), the_plan))
    for ni, n in enumerate(nodes):
        if in_scope[ni] and ni not in best:
            why = reason.get(ni, "no device matches the vendor/model constraints" if n.devices
                             else "node has no accelerator devices")
            failed.append(Verdict(n.name, False, why))
    return out + sorted(failed, key=lambda v: v.node)
