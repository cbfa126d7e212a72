"""Each placement policy is a small pure scoring function: check what it prefers and why."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcs.allocator import policies as P
from hcs.errors import ConfigError


def view(gpu_free: list[list[int]], cpu_free: list[int] | None = None, mem_free: list[int] | None = None,
         n_gpus: list[int] | None = None, cpu_total: int = 64000, mem_total: int = 262144) -> P.NodeView:
    f = np.array(gpu_free, dtype=np.int64)
    c, g = f.shape
    counts = n_gpus or [g] * c
    present = np.arange(g)[None, :] < np.array(counts)[:, None]
    cpu = np.array(cpu_free or [cpu_total] * c, dtype=np.int64)
    mem = np.array(mem_free or [mem_total] * c, dtype=np.int64)
    return P.NodeView(np.where(present, f, 0), present, cpu, mem, np.full(c, cpu_total, dtype=np.int64),
                      np.full(c, mem_total, dtype=np.int64))


TARGET = P.TargetWorkload.from_requests(
    [P.Request(4000, 8192, 1, 1000)] * 4 + [P.Request(2000, 4096, 1, 500)] * 4
    + [P.Request(2000, 4096, 1, 250)] * 2 + [P.Request(16000, 65536, 0, 0)] * 2
)


def ctx(seed: int = 0, **weights: float) -> P.PolicyContext:
    return P.PolicyContext(np.random.default_rng(seed), TARGET, weights)


def best(scores: np.ndarray) -> tuple[int, int]:
    choice = P.pick(scores, np.random.default_rng(0))
    assert choice is not None
    return choice


def test_invalid_devices_are_never_chosen_by_any_policy() -> None:
    v = view([[1000, 200, 0, 0], [300, 100, 0, 0]], n_gpus=[2, 2])
    req = P.Request(1000, 1000, 1, 250)
    for name, policy in P.POLICIES.items():
        s = policy(v, req, ctx())
        assert np.isneginf(s[0, 1]) and np.isneginf(s[1, 1]), name  # 200 / 100 free < 250
        assert np.isneginf(s[:, 2:]).all(), name  # absent devices
        c, g = best(s)
        assert (c, g) in {(0, 0), (1, 0)}, name


def test_best_fit_picks_the_tightest_node_and_device() -> None:
    v = view([[1000, 1000], [1000, 400]])
    assert best(P.score_best_fit(v, P.Request(1000, 1000, 1, 300), ctx())) == (1, 1)


def test_gpu_packing_prefers_an_occupied_device_over_an_idle_one() -> None:
    v = view([[1000, 900], [1000, 1000]])
    assert best(P.score_gpu_packing(v, P.Request(0, 0, 1, 500), ctx())) == (0, 1)


def test_dot_product_packs_along_the_request_direction() -> None:
    # a CPU-heavy request goes where the free CPU is smallest (the smallest dot product)
    v = view([[1000, 1000], [1000, 1000]], cpu_free=[60000, 8000])
    assert best(P.score_dot_product(v, P.Request(6000, 0, 1, 100), ctx()))[0] == 1


def test_random_spreads_over_all_valid_placements() -> None:
    v = view([[1000, 1000], [1000, 1000]])
    seen = {best(P.score_random(v, P.Request(0, 0, 1, 100), ctx(seed))) for seed in range(40)}
    assert len(seen) == 4


def test_fgd_keeps_whole_devices_for_whole_device_requests() -> None:
    # 500 milli: on the half-used device it completes it; on an idle one it breaks a whole device
    v = view([[1000, 500], [1000, 1000]])
    assert best(P.score_fgd(v, P.Request(1000, 1000, 1, 500), ctx())) == (0, 1)


def test_fgd_needs_a_target_workload() -> None:
    with pytest.raises(ConfigError, match="target workload"):
        P.score_fgd(view([[1000]]), P.Request(0, 0, 1, 100), P.PolicyContext(np.random.default_rng(0)))


def test_hcs_avoids_stranding_devices_behind_exhausted_cpu() -> None:
    # a device-less, CPU-heavy pod: node 0 has idle devices and little CPU, node 1 is device-full
    v = view([[1000, 1000], [0, 0]], cpu_free=[20000, 20000])
    assert best(P.score_hcs(v, P.Request(16000, 1024, 0, 0), ctx()))[0] == 1
    # FGD does not see it: its measure is the same on both nodes for device-less pods
    d = P.fragmentation_delta(v, P.Request(16000, 1024, 0, 0), TARGET)
    assert d[0, 0] <= d[1, 0] + 1e-9


def test_hcs_penalises_degraded_devices() -> None:
    v = view([[1000, 1000]])
    pen = np.array([[0.5, 0.0]])
    v2 = P.NodeView(v.gpu_free, v.gpu_present, v.cpu_free, v.mem_free, v.cpu_total, v.mem_total, pen)
    assert best(P.score_hcs(v2, P.Request(0, 0, 1, 300), ctx())) == (0, 1)


def test_unknown_policy_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="best-fit"):
        P.get_policy("nope")


def test_pick_returns_none_when_nothing_fits() -> None:
    assert P.pick(np.full((2, 2), -np.inf), np.random.default_rng(0)) is None


def test_target_workload_weights_by_cpu_fit() -> None:
    w = TARGET.weights(np.array([0, 2000, 100000]))
    assert w[0].sum() == 0
    assert w[1].sum() == pytest.approx(6 / 12)  # the 2000-cpu requests
    assert w[2].sum() == pytest.approx(10 / 12)  # every device request


frees = st.lists(st.lists(st.integers(0, 1000), min_size=4, max_size=4), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(frees, st.integers(1, 1000), st.integers(0, 64000))
def test_fragmentation_delta_matches_brute_force(gpu_free: list[list[int]], milli: int, cpu: int) -> None:
    v = view(gpu_free, cpu_free=[64000] * len(gpu_free))
    req = P.Request(cpu, 0, 1, milli)
    delta = P.fragmentation_delta(v, req, TARGET)
    before = P.node_fragmentation(TARGET, v.gpu_free, v.cpu_free)
    for c in range(len(gpu_free)):
        for g in range(4):
            if v.gpu_free[c, g] < milli:
                assert np.isnan(delta[c, g])
                continue
            after = v.gpu_free[c].copy()
            after[g] -= milli
            expect = P.node_fragmentation(TARGET, after[None, :], np.array([64000 - cpu]))[0] - before[c]
            assert delta[c, g] == pytest.approx(expect, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(frees, st.sampled_from([1, 2, 4]))
def test_whole_device_delta_matches_brute_force(gpu_free: list[list[int]], k: int) -> None:
    v = view(gpu_free)
    req = P.Request(1000, 0, k, 1000)
    delta = P.fragmentation_delta(v, req, TARGET)
    before = P.node_fragmentation(TARGET, v.gpu_free, v.cpu_free)
    for c in range(len(gpu_free)):
        idle = np.flatnonzero(v.gpu_free[c] >= 1000)
        if len(idle) < k:
            continue
        after = v.gpu_free[c].copy()
        after[idle[:k]] = 0
        expect = P.node_fragmentation(TARGET, after[None, :], v.cpu_free[c:c + 1] - 1000)[0] - before[c]
        valid = delta[c][~np.isnan(delta[c])]
        assert len(valid) == len(idle) and np.all(valid == pytest.approx(expect, abs=1e-6))


# --------------------------------------------------------------------------- model constraints


def _mview(gpu_free: list[list[int]], model: list[int]) -> P.NodeView:
    v = view(gpu_free)
    return P.NodeView(v.gpu_free, v.gpu_present, v.cpu_free, v.mem_free, v.cpu_total, v.mem_total,
                      model=np.array(model, dtype=np.int64))


def test_a_device_a_class_may_not_use_is_fragment_for_that_class() -> None:
    # half the workload may use only model A: on a B node its whole free capacity is fragment for it
    t = P.TargetWorkload.from_requests([P.Request(0, 0, 1, 500, frozenset({"A"})), P.Request(0, 0, 1, 500)],
                                       models=("A", "B"))
    v = _mview([[1000], [1000]], [0, 1])
    f = P.node_fragmentation(t, v.gpu_free, v.cpu_free, v.model)
    assert list(f) == [0.0, 500.0]
    # the model-blind measure (no model per node) sees both nodes alike
    assert list(P.node_fragmentation(t, v.gpu_free, v.cpu_free)) == [0.0, 0.0]
    # an unconstrained class on a model nobody names (index -1) is usable by the unconstrained half only
    assert list(P.node_fragmentation(t, v.gpu_free[:1], v.cpu_free[:1], np.array([-1]))) == [500.0]


def test_fgd_leaves_the_model_a_constrained_class_needs_to_it() -> None:
    t = P.TargetWorkload.from_requests([P.Request(0, 0, 1, 1000, frozenset({"A"})), P.Request(0, 0, 1, 1000)],
                                       models=("A", "B"))
    v = _mview([[1000], [1000]], [0, 1])
    c = P.PolicyContext(np.random.default_rng(0), t)
    for _ in range(5):
        assert best(P.score_fgd(v, P.Request(0, 0, 1, 1000), c))[0] == 1  # the pod that may go anywhere: B


def test_model_prices_charge_the_sets_that_will_run_short() -> None:
    # half of all demand may use only A; A has 1000 of 4000 free milli: pressure 0.5 * 4000 / 1000 = 2
    t = P.TargetWorkload.from_requests([P.Request(0, 0, 1, 1000, frozenset({"A"})), P.Request(0, 0, 1, 1000)],
                                       models=("A", "B"))
    prices = P.model_prices(t, np.array([1000.0, 3000.0]))
    assert list(prices) == [2.0, 0.0, 0.0]
    # a constraint that admits every model of the cluster is no constraint: no price
    t2 = P.TargetWorkload.from_requests([P.Request(0, 0, 1, 1000, frozenset({"A", "B"}))], models=("A", "B"))
    assert list(P.model_prices(t2, np.array([1000.0, 3000.0]))) == [0.0, 0.0, 0.0]
    # a set over several models is priced on each of them
    t3 = P.TargetWorkload.from_requests([P.Request(0, 0, 1, 1000, frozenset({"A", "B"})), P.Request(0, 0, 1, 1000)],
                                        models=("A", "B", "C"))
    p3 = P.model_prices(t3, np.array([1000.0, 1000.0, 2000.0]))
    assert p3[0] == p3[1] == 1.0 and p3[2] == 0.0


def test_hcs_keeps_a_scarce_model_for_the_pods_that_need_it_where_fgd_sees_a_tie() -> None:
    # one A node, four B nodes (one device each); as many A-only as B-only pods are expected, so FGD's
    # measure is the same on A and B, but A's capacity is four times scarcer
    reqs = [P.Request(0, 0, 1, 1000)] * 2 + [P.Request(0, 0, 1, 1000, frozenset({"A"})),
                                            P.Request(0, 0, 1, 1000, frozenset({"B"}))]
    t = P.TargetWorkload.from_requests(reqs, models=("A", "B"))
    v = _mview([[1000]] * 5, [0, 1, 1, 1, 1])
    req = P.Request(0, 0, 1, 1000)
    d = P.fragmentation_delta(v, req, t)
    assert np.allclose(d[:, 0], d[0, 0])  # FGD: a tie
    c = P.PolicyContext(np.random.default_rng(0), t, {}, model_free=np.array([1000.0, 4000.0]))
    assert best(P.score_hcs(v, req, c))[0] != 0
    # without the scarcity term hcs would take A (first of the tie) — the term decides
    c0 = P.PolicyContext(np.random.default_rng(0), t, {"scarce": 0.0}, model_free=np.array([1000.0, 4000.0]))
    assert P.pick(P.score_hcs(v, req, c0), np.random.default_rng(0), deterministic=True) == (0, 0)
    # a pod that may use only A still goes to A (its only candidates are A nodes)
    only_a = _mview([[1000]], [0])
    assert best(P.score_hcs(only_a, P.Request(0, 0, 1, 1000, frozenset({"A"})), c)) == (0, 0)


@settings(max_examples=40, deadline=None)
@given(frees, st.integers(1, 1000), st.lists(st.integers(-1, 1), min_size=6, max_size=6))
def test_model_aware_delta_matches_brute_force(gpu_free: list[list[int]], milli: int, models: list[int]) -> None:
    reqs = [P.Request(2000, 0, 1, 500, frozenset({"A"})), P.Request(1000, 0, 1, 250, frozenset({"A", "B"})),
            P.Request(4000, 0, 1, 1000), P.Request(0, 0, 2, 1000, frozenset({"B"})), P.Request(1000, 0, 0, 0)]
    t = P.TargetWorkload.from_requests(reqs, models=("A", "B"))
    v0 = view(gpu_free)
    m = np.array(models[:len(gpu_free)], dtype=np.int64)
    v = P.NodeView(v0.gpu_free, v0.gpu_present, v0.cpu_free, v0.mem_free, v0.cpu_total, v0.mem_total, model=m)
    req = P.Request(1000, 0, 1, milli)
    delta = P.fragmentation_delta(v, req, t)
    before = P.node_fragmentation(t, v.gpu_free, v.cpu_free, m)
    for c in range(len(gpu_free)):
        for g in range(4):
            if v.gpu_free[c, g] < milli:
                continue
            after = v.gpu_free[c].copy()
            after[g] -= milli
            expect = P.node_fragmentation(t, after[None, :], v.cpu_free[c:c + 1] - 1000, m[c:c + 1])[0] - before[c]
            assert delta[c, g] == pytest.approx(expect, abs=1e-6)


def test_recent_mix_weighs_newer_requests_more_and_starts_from_the_default_mix() -> None:
    mix: P.RecentMix[P.Request] = P.RecentMix(history=4, decay=0.5, warmup=2)
    assert mix.target(lambda r: r).milli.tolist() == sorted(set(P.DEFAULT_MIX))  # warming up
    for milli in (100, 200, 300, 400, 500):  # the oldest (100) falls out of the window of 4
        mix.add(P.Request(1000, 0, 1, milli))
    t = mix.target(lambda r: r)
    assert t.milli.tolist() == [200, 300, 400, 500]
    w = t.weights(np.array([1000]))[0]
    assert w.tolist() == pytest.approx([1 / 15, 2 / 15, 4 / 15, 8 / 15])  # 0.125 : 0.25 : 0.5 : 1
    with pytest.raises(ConfigError, match="decay"):
        P.RecentMix(decay=0)
