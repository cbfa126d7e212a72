"""Trace replay on small slices of the shipped openb traces (the full run is bench/replay.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hcs.allocator import replay as rp
from hcs.cli import main
from hcs.errors import ConfigError

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
if not TRACES.exists():
    TRACES = Path("/work/shared/traces")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("trace")
    nodes = (TRACES / "openb_node_list_gpu_node.csv").read_text().splitlines()
    pods = (TRACES / "openb_pod_list_gpushare40.csv").read_text().splitlines()
    (d / "n.csv").write_text("\n".join(nodes[:1] + nodes[500:540]) + "\n")  # 40 G2 nodes, 8 GPUs each
    (d / "p.csv").write_text("\n".join(pods[:1] + pods[1200:1500]) + "\n")
    return d / "n.csv", d / "p.csv"


def test_simulation_never_overcommits_and_is_deterministic(small: tuple[Path, Path]) -> None:
    cluster = rp.load_nodes(small[0])
    pods = rp.load_pods(small[1])
    target = rp.target_of(pods)
    a = rp.simulate(cluster, pods, "hcs", 3, target)
    b = rp.simulate(cluster, pods, "hcs", 3, target)
    assert a.allocation_ratio == b.allocation_ratio
    assert 50.0 < a.allocation_ratio <= 100.0
    assert a.placed > 0 and a.skipped > 0  # the cluster fills up before 100% arrived
    assert len(a.latencies_ms) == a.placed + a.skipped


def test_arrival_order_resamples_to_the_inflation_target(small: tuple[Path, Path]) -> None:
    cluster = rp.load_nodes(small[0])
    pods = rp.load_pods(small[1])
    order = rp.arrival_order(pods, cluster.gpu_capacity, 1, 1.3)
    demand = sum(pods[i].request.gpu_demand for i in order)
    assert demand >= 1.3 * cluster.gpu_capacity
    assert order != rp.arrival_order(pods, cluster.gpu_capacity, 2, 1.3)


def test_hcs_beats_random_on_a_small_slice(small: tuple[Path, Path]) -> None:
    res = {r.name: r for r in rp.replay(small[0], small[1], ["hcs", "random"], [0, 1])}
    assert np.mean([s.allocation_ratio for s in res["hcs"].seeds]) > np.mean(
        [s.allocation_ratio for s in res["random"].seeds])


def test_cli_prints_the_fixed_json_shape(small: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    png = tmp_path / "r.png"
    rc = main(["replay", "--nodes", str(small[0]), "--pods", str(small[1]), "--policy", "hcs,best-fit",
               "--seeds", "2", "--output", "json", "--plot", str(png)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for name in ("hcs", "best-fit"):
        s = out["policies"][name]
        assert len(s["allocation_ratio_per_seed"]) == 2
        assert s["allocation_ratio_mean"] == pytest.approx(np.mean(s["allocation_ratio_per_seed"]), abs=1e-3)
        assert 0 <= s["decision_p50_ms"] <= s["decision_p99_ms"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_csv_says_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "n.csv"
    bad.write_text("sn,cpu_milli,memory_mib,gpu,model\nn1,lots,1024,2,T4\n")
    with pytest.raises(ConfigError, match=r"n\.csv:2: column 'cpu_milli'"):
        rp.load_nodes(bad)
    missing = tmp_path / "p.csv"
    missing.write_text("name,cpu_milli\nx,1\n")
    with pytest.raises(ConfigError, match="missing column"):
        rp.load_pods(missing)


def test_cli_rejects_unknown_policy(small: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["replay", "--nodes", str(small[0]), "--pods", str(small[1]), "--policy", "magic", "--seeds", "1"])
    assert rc == 1
    assert "unknown policy 'magic'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def constrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Every 10th node (all models, 121 nodes) and 1,500 pods of the 20%-constrained trace."""
    d = tmp_path_factory.mktemp("spec")
    nodes = (TRACES / "openb_node_list_gpu_node.csv").read_text().splitlines()
    pods = (TRACES / "openb_pod_list_gpuspec20.csv").read_text().splitlines()
    (d / "n.csv").write_text("\n".join(nodes[:1] + nodes[1::10]) + "\n")
    (d / "p.csv").write_text("\n".join(pods[:1] + pods[1:1501]) + "\n")
    return d / "n.csv", d / "p.csv"


def test_gpu_spec_is_honoured(tmp_path: Path) -> None:
    nodes = tmp_path / "n.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,2,T4\nb,64000,262144,2,P100\n")
    pods = tmp_path / "p.csv"
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
                    "t4,1000,1024,1,1000,T4\nv100,1000,1024,1,1000,V100M16|V100M32\n")
    cluster = rp.load_nodes(nodes)
    loaded = rp.load_pods(pods)
    target = rp.target_of(loaded, models=cluster.models)
    v100_only = [p for p in loaded if p.name == "v100"]
    for policy in ("hcs", "fgd", "best-fit", "random"):
        res = rp.simulate(cluster, loaded, policy, 0, target, inflation=1.3)
        assert 0 < res.placed <= 2, policy  # T4 pods, on the T4 node's two GPUs only
        none = rp.simulate(cluster, v100_only, policy, 0, target, inflation=1.3)
        assert none.placed == 0 and none.allocation_ratio == 0.0, policy  # no V100 in this cluster


def test_hcs_beats_fgd_and_random_with_constrained_pods(constrained: tuple[Path, Path]) -> None:
    res = {r.name: np.mean([s.allocation_ratio for s in r.seeds])
           for r in rp.replay(constrained[0], constrained[1], ["hcs", "fgd", "random"], [0, 1])}
    assert res["hcs"] > res["fgd"] > res["random"], res


def _fleet(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "fleet.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model,vendor,vram_mib,rate\n"
                     "a,64000,262144,4,a100-80g,nvidia,81920,1.0\n"
                     "b,64000,262144,2,t4,nvidia,16384,0.2083\n"
                     "c,64000,262144,4,910b3,ascend,65536,0.85\n")
    pods = tmp_path / "fleet_pods.csv"
    rows = ["name,cpu_milli,memory_mib,vram_mib,tflops,gpu_spec"]
    rows += [f"s{i},2000,8192,{4096 * (1 + i % 4)},{20 * (1 + i % 4)}," for i in range(12)]
    rows += ["big,8000,32768,131072,400,", "t4only,1000,1024,8192,30,t4", "nowhere,1000,1024,1024,1,h100"]
    pods.write_text("\n".join(rows) + "\n")
    return nodes, pods


def test_mixed_fleet_replay_goes_through_the_planner_in_abstract_units(tmp_path: Path) -> None:
    nodes, pods_csv = _fleet(tmp_path)
    fleet = rp.load_fleet(nodes)
    assert [d.tflops_milli for d in fleet[1].devices] == [round(0.2083 * 312 * 1000)] * 2
    pods = rp.load_fleet_pods(pods_csv)
    for policy in ("hcs", "fgd", "best-fit", "random"):
        res = rp.simulate_fleet(fleet, pods, policy, 0, inflation=1.3)
        assert 0 < res.allocation_ratio <= 100.0, policy
        assert res.placed > 0 and res.skipped > 0, policy  # "nowhere" (an h100 pin) never fits


def test_mixed_fleet_targets_know_units_and_constraints(tmp_path: Path) -> None:
    nodes, pods_csv = _fleet(tmp_path)
    fleet = rp.load_fleet(nodes)
    pods = rp.load_fleet_pods(pods_csv)
    from hcs.allocator.placement import DeviceTable

    targets = rp.fleet_targets(DeviceTable.build(fleet), pods)
    # the 128Gi pod is 2 whole A100s but 8 whole T4s (and one share of nothing else)
    assert (2, 1000) in zip(targets["a100-80g"].count.tolist(), targets["a100-80g"].milli.tolist(), strict=True)
    assert (8, 1000) in zip(targets["t4"].count.tolist(), targets["t4"].milli.tolist(), strict=True)
    t = targets["t4"]
    assert t.sets is not None and t.sets.sum(axis=1).tolist() == [1, 0]  # {t4}; {h100}: no model of the fleet


def test_cli_replays_a_mixed_fleet_with_the_same_json_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods_csv = _fleet(tmp_path)
    rc = main(["replay", "--nodes", str(nodes), "--pods", str(pods_csv), "--policy", "hcs,fgd,best-fit",
               "--seeds", "2", "--output", "json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)["policies"]
    for name in ("hcs", "fgd", "best-fit"):
        assert {"allocation_ratio_mean", "allocation_ratio_per_seed", "decision_p50_ms",
                "decision_p99_ms"} <= out[name].keys()
    bad = tmp_path / "bad.csv"
    bad.write_text("sn,cpu_milli,memory_mib,gpu,model,vendor,vram_mib,rate\nn,1,1,1,x,nvidia,1024,fast\n")
    with pytest.raises(ConfigError, match=r"bad\.csv:2: column 'rate' must be a number"):
        rp.load_fleet(bad)
