"""DRA driver benchmark: prints one JSON object.

- prepare_p50_ms / prepare_p99_ms: NodePrepareResources for 1 claim over the real unix socket,
  driven by the DRA-kubelet simulator, each one cold (the claim is unprepared in between), with
  the claim read from the real API server (target p99 < 20 ms);
- prepare_batch100_ms: one NodePrepareResources call with 100 claims (median of runs; target < 500 ms);
- publish_8_ms / publish_128_ms: ResourceSlice publish for 8 / 128 devices, from no slices until the
  API server has them (median of runs);
- wipe_recreate_ms: all slices deleted (as a starting kubelet does) until they are back (target < 5000).

Uses the local cluster (e2e/cluster) when it is up; with ``--no-cluster`` or without it, claims
come from memory and the publish numbers are null (``"apiserver": false`` says so). With the
cluster, ``prepare_local_*`` also reports the plugin's own cost with claims read from memory, and
``loadavg_1m`` the machine's load (the API server shares the CPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hcs.devices.model import Compute, Device, Vendor
from hcs.kube import KubeRest
from hcs.kubeletsim.dra import DraKubeletSim, wipe_node_slices
from hcs.node.dra.config import DraConfig
from hcs.node.dra.plugin import DraPlugin
from hcs.node.dra.slice_controller import SliceController
from hcs.node.dra.slices import build_slices
from hcs.testing.kube_objects import (
    create_allocated_claim,
    delete_namespace,
    delete_node,
    ensure_fake_node,
    ensure_namespace,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]

NODE = "hcs-dra-bench-node"
NS = f"hcs-dra-bench-{int(time.time())}"
DRIVER = "ai.compute"


def devices(n: int) -> list[Device]:
    return [Device(vendor=Vendor.NVIDIA, model="a100-80g", name="NVIDIA A100-SXM4-80GB", uuid=f"GPU-bench-{i:05d}",
                   index=i, pci_bus_id=f"0000:{i // 32:02x}:{i % 32:02x}.0", numa_node=i // 64,
                   vram_total_bytes=80 << 30, vram_used_bytes=0,
                   compute=Compute(312.0, 19.5, 624.0, 1.0), device_nodes=(f"/dev/nvidia{i}",),
                   island=f"nvidia-nvlink-{i // 8}") for i in range(n)]


class MemoryClaims:
    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        return self.claims[(namespace, name)]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def make_claims(rest: KubeRest | None, mem: MemoryClaims, n: int, prefix: str) -> list[tuple[str, str, str]]:
    refs = []
    for i in range(n):
        name = f"{prefix}-{i}"
        result = {"request": "gpu", "driver": DRIVER, "pool": NODE, "device": f"nvidia-{i % 8}"}
        if rest is not None:
            obj = create_allocated_claim(rest, NS, name, [result])
        else:
            obj = {"metadata": {"namespace": NS, "name": name, "uid": f"uid-{prefix}-{i}"},
                   "status": {"allocation": {"devices": {"results": [result]}}}}
            mem.claims[(NS, name)] = obj
        refs.append((NS, obj["metadata"]["uid"], name))
    return refs


def bench_prepare(api: Any, rest: KubeRest | None, iterations: int, batch_runs: int,
                  claim_status: bool = True) -> dict[str, Any]:
    mem = MemoryClaims()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cfg = DraConfig(node_name=NODE, plugins_registry=str(t / "reg"), plugin_dir=str(t / "plugin"),
                        cdi_dir=str(t / "cdi"), interceptor_host_dir=str(t), publish_slices=False,
                        publish_claim_status=claim_status)
        plugin = DraPlugin(cfg, devices(8), api, claim_source=None if rest is not None else mem)
        plugin.start()
        sim = DraKubeletSim(t / "reg")
        sim.register()
        try:
            (one,) = make_claims(rest, mem, 1, "single")
            lat = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                out = sim.prepare(DRIVER, [one])
                lat.append((time.perf_counter() - t0) * 1000)
                assert not out[one[1]].error, out[one[1]].error
                sim.unprepare(DRIVER, [one])
            batch = make_claims(rest, mem, 100, "batch")
            runs = []
            for _ in range(batch_runs):
                t0 = time.perf_counter()
                out = sim.prepare(DRIVER, batch)
                runs.append((time.perf_counter() - t0) * 1000)
                errors = [o.error for o in out.values() if o.error]
                assert not errors, errors[:3]
                sim.unprepare(DRIVER, batch)
        finally:
            sim.close()
            plugin.stop()
    return {
        "prepare_p50_ms": round(statistics.median(lat), 3),
        "prepare_p99_ms": round(pct(lat, 99), 3),
        "prepare_iterations": iterations,
        "prepare_batch100_ms": round(statistics.median(runs), 3),
        "prepare_batch100_runs_ms": [round(x, 1) for x in runs],
    }


def bench_publish(rest: KubeRest, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in (8, 128):
        cfg = DraConfig(node_name=NODE)
        ctl = SliceController(rest, cfg)
        content = build_slices(devices(n), cfg)
        times = []
        for _ in range(runs):
            ctl.delete_all()
            ctl.update(content)
            t0 = time.perf_counter()
            ctl.reconcile_once()
            times.append((time.perf_counter() - t0) * 1000)
        out[f"publish_{n}_ms"] = round(statistics.median(times), 3)
    # wipe → re-created by the running controller (watch-triggered)
    cfg = DraConfig(node_name=NODE)
    ctl = SliceController(rest, cfg)
    ctl.update(build_slices(devices(128), cfg))
    ctl.start()
    try:
        ctl.wait_synced(30)
        wipes = []
        for _ in range(runs):
            t0 = time.perf_counter()
            wipe_node_slices(rest, NODE, DRIVER)
            back = wait_for(ctl.list_slices, 30, interval_s=0.02)
            wipes.append((time.perf_counter() - t0) * 1000 if back else float("inf"))
        out["wipe_recreate_ms"] = round(statistics.median(wipes), 1)
    finally:
        ctl.stop()
        ctl.delete_all()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-cluster", action="store_true", help="claims from memory, no publish numbers")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    api = rest = None
    if not args.no_cluster:
        from hcs.testing.cluster import cluster_from_layout, cluster_layout, is_up

        if is_up():
            from kubernetes import config

            kc = cluster_from_layout(cluster_layout()).kubeconfig
            api = config.new_client_from_config(config_file=str(kc))
            rest = KubeRest(api)
    result: dict[str, Any] = {"apiserver": rest is not None}
    if rest is not None:
        ensure_fake_node(rest, NODE)
        ensure_namespace(rest, NS)
    result["loadavg_1m"] = os.getloadavg()[0]
    try:
        if rest is not None:  # the plugin's own cost, claims from memory (no API round trip)
            local = bench_prepare(None, None, args.iterations, args.runs)
            result.update({k.replace("prepare_", "prepare_local_"): v for k, v in local.items()
                           if not k.endswith("iterations")})
        result.update(bench_prepare(api, rest, args.iterations, args.runs))
        if rest is not None:
            result.update(bench_publish(rest, args.runs))
        else:
            result.update({"publish_8_ms": None, "publish_128_ms": None, "wipe_recreate_ms": None})
    finally:
        if rest is not None:
            delete_namespace(rest, NS)
            delete_node(rest, NODE)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
