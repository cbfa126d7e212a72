#!/usr/bin/env python3
"""Pod start latency on the installed chart (issue 15): ``ai.compute`` pods vs plain pods, same run.

    e2e/chart/run --install            # multi-node local cluster + images + chart (or any installed release)
    .venv/bin/python bench/startup.py  # prints one JSON object

1. ``install_to_ready_s``: ``helm uninstall`` (if installed) then ``helm install --wait`` with the same
   values, until every node's agent has registered its device plugin (``ai.compute/slot`` allocatable) and
   published its ComputeNode, the allocator has a leader and the hcs-scheduler holds its Lease: what a user
   waits for before the first pod (after an uninstall the old scheduler's Lease runs out first, ~15 s).
2. ``N`` plain busybox pods and ``N`` busybox pods asking ``ai.compute/vram`` (the seed's shape, no
   schedulerName: the webhook routes them to the hcs-scheduler), created alternately; create -> Running
   (phase observed by polling the pod list every 0.2 s) for each.

Prints {"hcs_start_p50_s", "hcs_start_p99_s", "plain_start_p50_s", "plain_start_p99_s", "ratio_p99",
"install_to_ready_s", "nodes", "hcs_nodes", "plain_nodes" (pods per node), "start_burst_per_node" (the
installed chart's, see docs/operations.md), ...}. ``--no-install`` skips step 1
(install_to_ready_s is null). ``--plain-node NODE`` is a diagnostic, not the benchmark: plain pods pinned to
one node (the one the allocator packed the ai.compute pods onto) compare the two kinds on one kubelet.
``--hcs-spread`` is the other diagnostic: the ai.compute pods ask for the spread policy, so both kinds
spread over the nodes. ``allocate_path`` reports, per node that ran ai.compute pods, the agent's handler
times (GetPreferredAllocation, Allocate, PreStartContainer, and the parts of the first) and the kubelet's
own Allocate RPC time, from /metrics before and after the burst.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def harness(name: str, folder: Path) -> ModuleType:
    """Load one of the e2e harness scripts (e2e/cluster, tests/e2e: scripts, not a package) by its path.

    Loaded under its own name, so the harness modules find each other (``import hcs_cluster``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--pods", type=int, default=50, help="pods of each kind [50]")
    ap.add_argument("--no-install", action="store_true", help="measure on the release as installed")
    ap.add_argument("--values", default=str(REPO / "e2e" / "chart" / "values-local.yaml"))
    ap.add_argument("--set", dest="helm_set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra helm --set for the install (repeatable), e.g. scheduler.startBurstPerNode=0 for "
                         "the allocator's plain policy order")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--plain-node", default="",
                    help="diagnostic only, not the benchmark: pin the plain pods to this node (e.g. the node the "
                         "allocator packs the ai.compute pods onto) to compare the two kinds on one kubelet")
    ap.add_argument("--hcs-spread", action="store_true",
                    help="diagnostic only, not the benchmark: the ai.compute pods ask for the spread policy "
                         "(annotation hcs.io/scheduling-policy: spread) instead of the default binpack, so both "
                         "kinds spread over the nodes and the comparison isolates the per-pod HCS path")
    args = ap.parse_args()

    hcs_cluster = harness("hcs_cluster", REPO / "e2e" / "cluster")
    harness("multinode", REPO / "e2e" / "cluster")
    harness("e2e_helpers", REPO / "tests" / "e2e")
    env = json.loads(subprocess.run([sys.executable, str(REPO / "e2e" / "cluster" / "hcs_cluster.py"), "env",
                                     "--multinode", "--json"], capture_output=True, text=True, check=True).stdout)
    kubeconfig = os.environ.get("HCS_E2E_KUBECONFIG") or env["kubeconfig"]
    os.environ["HCS_E2E_KUBECONFIG"] = kubeconfig
    h = harness("chart_target", REPO / "tests" / "e2e").from_env("chart")
    helm = [str(Path(hcs_cluster.layout().bin) / "helm"), f"--kubeconfig={kubeconfig}"]
    install_s: float | None = None
    if not args.no_install:
        subprocess.run([*helm, "uninstall", h.release, "-n", h.release_namespace, "--wait", "--timeout", "3m"],
                       capture_output=True, text=True)
        t0 = time.monotonic()
        subprocess.run([*helm, "install", h.release, str(REPO / "helm" / "hcs"), "-n", h.release_namespace,
                        "--create-namespace", "-f", args.values, *(f"--set={kv}" for kv in args.helm_set),
                        "--wait", "--timeout", "5m"], check=True, capture_output=True, text=True)
        h.wait_ready(timeout=300)
        install_s = round(time.monotonic() - t0, 2)
    values = json.loads(subprocess.run([*helm, "get", "values", h.release, "-n", h.release_namespace, "--all",
                                        "-o", "json"], check=True, capture_output=True, text=True).stdout)
    h.up()  # session namespace
    busybox = h.cluster.busybox_image
    run = uuid.uuid4().hex[:5]

    def pod(kind: str, i: int) -> dict[str, Any]:
        c: dict[str, Any] = {"name": "main", "image": busybox, "imagePullPolicy": "Never",
                             "command": ["sh", "-c", "sleep 3600"]}
        spec: dict[str, Any] = {"terminationGracePeriodSeconds": 0, "containers": [c]}
        if kind == "hcs":
            c["resources"] = {"requests": {"ai.compute/vram": "1Gi"}}
        elif args.plain_node:
            spec["nodeSelector"] = {"kubernetes.io/hostname": args.plain_node}
        meta: dict[str, Any] = {"name": f"{kind}-{run}-{i}", "labels": {"bench": run, "kind": kind}}
        if kind == "hcs" and args.hcs_spread:
            meta["annotations"] = {"hcs.io/scheduling-policy": "spread"}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}

    before = _handler_metrics(h)
    created: dict[str, float] = {}
    running: dict[str, float] = {}
    placed: dict[str, str] = {}  # pod -> node
    failed: dict[str, str] = {}  # pods the kubelet rejected (phase Failed): counted, never waited for
    path = f"/api/v1/namespaces/{h.namespace}/pods"
    try:
        for i in range(args.pods):
            for kind in ("plain", "hcs") if i % 2 == 0 else ("hcs", "plain"):
                p = pod(kind, i)
                h.rest.request("POST", path, body=p)
                created[p["metadata"]["name"]] = time.monotonic()
                _poll(h, path, run, running, failed, placed)
        deadline = time.monotonic() + args.timeout
        while len(running) + len(failed) < len(created):
            if time.monotonic() > deadline:
                raise SystemExit(f"startup bench: {len(created) - len(running)} pods not Running after "
                                 f"{args.timeout:.0f} s")
            _poll(h, path, run, running, failed, placed)
            time.sleep(0.2)
        after = _handler_metrics(h)
    finally:
        h.down()
    lat = {k: [running[n] - created[n] for n in running if n.startswith(k + "-")] for k in ("hcs", "plain")}
    out = {
        "hcs_start_p50_s": round(statistics.median(lat["hcs"]), 3),
        "hcs_start_p99_s": round(pct(lat["hcs"], 99), 3),
        "plain_start_p50_s": round(statistics.median(lat["plain"]), 3),
        "plain_start_p99_s": round(pct(lat["plain"], 99), 3),
        "ratio_p99": round(pct(lat["hcs"], 99) / pct(lat["plain"], 99), 3),
        "install_to_ready_s": install_s,
        "nodes": len(h.nodes),
        "pods_each": args.pods,
        "start_burst_per_node": (values.get("scheduler") or {}).get("startBurstPerNode"),
        "hcs_failed": sum(1 for n in failed if n.startswith("hcs-")),
        "plain_failed": sum(1 for n in failed if n.startswith("plain-")),
        "first_failure": next(iter(failed.values()), "")[:300],
        # where each kind ran (pods per node): the allocator's default policy packs small pods
        "hcs_nodes": _per_node(placed, "hcs-"),
        "plain_nodes": _per_node(placed, "plain-"),
    }
    # the HCS work on the kubelet's serial admission path (GetPreferredAllocation + Allocate), per node
    # the ai.compute pods ran on: the agent's handler time and the kubelet's own Allocate RPC timing
    out["allocate_path"] = _handler_delta(before, after, set(out["hcs_nodes"]))
    if args.plain_node:
        out["diagnostic_plain_node"] = args.plain_node
    if args.hcs_spread:
        out["diagnostic_hcs_spread"] = True
    print(json.dumps(out))
    return 0


#: (metric family, label filter) scraped before and after the burst: the node agent's device-plugin handler
#: histogram and the kubelet's Allocate RPC histogram (seen from the kubelet, transport included)
_AGENT_FAMILY = "hcs_grpc_request_duration_seconds"
_KUBELET_FAMILY = "kubelet_device_plugin_alloc_duration_seconds"
_PHASE_FAMILY = "hcs_admission_phase_seconds"


def _histograms(text: str, family: str, key_label: str, where: dict[str, str]) -> dict[str, dict[str, float]]:
    """Prometheus text -> {key label value: {"count", "sum", le: cumulative count}}, summed over other labels."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != family:
            continue
        for s in fam.samples:
            if any(s.labels.get(k) != v for k, v in where.items()):
                continue
            h = out.setdefault(s.labels.get(key_label, ""), {})
            if s.name.endswith("_bucket"):
                h[s.labels["le"]] = h.get(s.labels["le"], 0.0) + s.value
            elif s.name.endswith("_count"):
                h["count"] = h.get("count", 0.0) + s.value
            elif s.name.endswith("_sum"):
                h["sum"] = h.get("sum", 0.0) + s.value
    return out


def _handler_metrics(h: Any) -> dict[str, dict[str, dict[str, float]]]:
    """{node: {"agent:<method>" | "kubelet:Allocate": histogram}}; a node that cannot be scraped is left out."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    agents = {(p.get("spec") or {}).get("nodeName", ""): p for p in h.pods("node-agent")}
    for node in h.nodes:
        got: dict[str, dict[str, float]] = {}
        pod = agents.get(node)
        port = next((cp.get("containerPort") for c in ((pod or {}).get("spec") or {}).get("containers") or []
                     for cp in c.get("ports") or [] if cp.get("name") == "metrics"), None)
        if pod is not None and port:
            r = h.kubectl("get", "--raw", f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/"
                          f"{pod['metadata']['name']}:{port}/proxy/metrics", check=False, timeout=30)
            if r.returncode == 0:
                for method, hist in _histograms(r.stdout, _AGENT_FAMILY, "method", {}).items():
                    got[f"agent:{method}"] = hist
                for phase, hist in _histograms(r.stdout, _PHASE_FAMILY, "phase", {}).items():
                    got[f"phase:{phase}"] = hist
        r = h.kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/metrics", check=False, timeout=30)
        if r.returncode == 0:
            for _, hist in _histograms(r.stdout, _KUBELET_FAMILY, "resource_name",
                                       {"resource_name": "ai.compute/slot"}).items():
                got["kubelet:Allocate"] = hist
        out[node] = got
    return out


def _handler_delta(before: dict[str, dict[str, dict[str, float]]], after: dict[str, dict[str, dict[str, float]]],
                   nodes: set[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per node and call: calls during the burst, mean ms and the p99 bucket's upper bound in ms."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for node in sorted(nodes):
        for call, hist in (after.get(node) or {}).items():
            if call not in ("agent:GetPreferredAllocation", "agent:Allocate", "agent:PreStartContainer",
                            "kubelet:Allocate") and not call.startswith("phase:"):
                continue
            old = (before.get(node) or {}).get(call) or {}
            n = hist.get("count", 0.0) - old.get("count", 0.0)
            if n <= 0:
                continue
            total = hist.get("sum", 0.0) - old.get("sum", 0.0)
            les = sorted(((float(k), v - old.get(k, 0.0)) for k, v in hist.items() if k not in ("count", "sum")),
                         key=lambda kv: kv[0])
            p99 = next((le for le, c in les if c >= 0.99 * n), float("inf"))
            out.setdefault(node, {})[call] = {"calls": int(n), "mean_ms": round(1000 * total / n, 2),
                                              "p99_le_ms": round(1000 * p99, 2) if p99 != float("inf") else -1}
    return out


def _per_node(placed: dict[str, str], prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for pod, node in placed.items():
        if pod.startswith(prefix):
            out[node] = out.get(node, 0) + 1
    return dict(sorted(out.items()))


def _poll(h: Any, path: str, run: str, running: dict[str, float], failed: dict[str, str],
          placed: dict[str, str]) -> None:
    now = time.monotonic()
    for p in h.rest.request("GET", path, query={"labelSelector": f"bench={run}"}).get("items") or []:
        n = p["metadata"]["name"]
        if p["spec"].get("nodeName"):
            placed[n] = p["spec"]["nodeName"]
        phase = p["status"].get("phase")
        if n not in running and phase == "Running":
            running[n] = now
        elif n not in failed and phase == "Failed":
            failed[n] = str(p["status"].get("message") or p["status"].get("reason") or "Failed")


if __name__ == "__main__":
    sys.exit(main())
