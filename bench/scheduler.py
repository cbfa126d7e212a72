"""Scale benchmark through the real kube-scheduler: HCS extender path vs kube-scheduler's own DRA.

On the local cluster (e2e/cluster): registers ``--nodes`` Node objects (no kubelet; pods tolerate the
node-lifecycle taints) with 8 simulated 80Gi devices each, as ComputeNodes (HCS path) and as DRA
ResourceSlices with consumable ``memory`` capacity (DRA path). Then, once per path:

- hcs: ``--pods`` pods asking ``ai.compute/vram: 16Gi`` for a kube-scheduler running the
  ``hcs-scheduler`` profile (hcs/allocator/scheduler-config.yaml) whose extender is the HCS
  allocator, run in this process (filter / prioritize / bind + assignment annotation);
- dra: ``--pods`` pods with a ResourceClaimTemplate asking ``capacity.requests.memory: 16Gi`` from
  a DeviceClass of those slices, for a second kube-scheduler (same binary, same client QPS) with
  a plain profile: its DRA plugin allocates, the resourceclaim controller creates the claims.

Pods are created first; the clock starts when that path's scheduler starts and stops when every
pod is bound. Prints one JSON object: ``hcs_pods_per_s``, ``dra_pods_per_s``, ``ratio`` (hcs/dra).

    .venv/bin/python bench/scheduler.py [--nodes 500] [--pods 5000] [--timeout 900]
"""

from __future__ import annotations

import os
import sys

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from hcs.allocator.extender import Extender, serve_http  # noqa: E402
from hcs.allocator.kube import CN_PATH, KubeSync  # noqa: E402
from hcs.allocator.state import AllocatorState  # noqa: E402
from hcs.kube import KubeError, KubeRest  # noqa: E402
from hcs.node.computenode import install_crd  # noqa: E402
from hcs.testing.cluster import ensure_cluster  # noqa: E402

NS = "hcs-bench"
LABEL = "hcs.io/bench"
DRIVER = "bench.hcs.io"
CLASS = "bench-vram.hcs.io"
HCS_PROFILE = "hcs-scheduler-bench"  # the hcs-scheduler profile under a name no other scheduler serves
GI = 2**30
TOLERATIONS = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
               {"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]
log = logging.getLogger("bench.scheduler")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Retrying(KubeRest):
    """The shared local API server restarts now and then: retry transient failures for up to 90 s."""

    def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:  # type: ignore[override]
        deadline = time.monotonic() + 90
        while True:
            try:
                return super().request(method, path, **kw)
            except KubeError as exc:
                if exc.status not in (0, 429, 500, 503) or time.monotonic() > deadline:
                    raise
                time.sleep(1)


def ignore_missing(fn: Any, *a: Any, **kw: Any) -> None:
    try:
        fn(*a, **kw)
    except KubeError as exc:
        if exc.status not in (404, 409):
            raise


def setup(rest: KubeRest, nodes: int, workers: int) -> list[str]:
    install_crd(rest)
    names = [f"hcs-bench-{i:04d}" for i in range(nodes)]
    deadline = time.time() + 600
    while True:  # a namespace from an earlier run may still be terminating
        try:
            rest.request("POST", "/api/v1/namespaces",
                         body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            break
        except KubeError as exc:
            if exc.status != 409:
                raise
            ns = rest.request("GET", f"/api/v1/namespaces/{NS}")
            if (ns.get("status") or {}).get("phase") != "Terminating":
                break
            if time.time() > deadline:
                raise
            time.sleep(2)
    ignore_missing(rest.request, "POST", "/apis/resource.k8s.io/v1/deviceclasses", body={
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": CLASS, "labels": {LABEL: "1"}},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]}})
    ignore_missing(rest.request, "POST", f"/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaimtemplates", body={
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": "vram16"},
        "spec": {"spec": {"devices": {"requests": [{"name": "vram", "exactly": {
            "deviceClassName": CLASS, "capacity": {"requests": {"memory": "16Gi"}}}}]}}}})
    deadline = time.time() + 60
    while True:
        try:
            rest.request("GET", CN_PATH, query={"limit": "1"})
            break
        except KubeError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)

    def one(name: str) -> None:
        ignore_missing(rest.request, "POST", "/api/v1/nodes", body={
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {LABEL: "1"}},
            "status": {"capacity": {"cpu": "64", "memory": "512Gi", "pods": "110"},
                       "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Bench"}]}})
        devices = [{"name": f"nvidia-{i}", "vendor": "nvidia", "model": "a100-80g", "uuid": f"GPU-{name}-{i}",
                    "index": i, "vramBytes": 80 * GI,
                    "compute": {"fp16Tflops": 312, "fp32Tflops": 19.5, "int8Tops": 624, "rate": 1.0},
                    "topology": {"busId": f"0000:{16 + i:02x}:00.0", "numaNode": i // 4, "island": f"nvl-{i // 4}"},
                    "healthScore": 100} for i in range(8)]
        ignore_missing(rest.request, "POST", CN_PATH, body={
            "apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNode", "metadata": {"name": name,
                                                                                      "labels": {LABEL: "1"}},
            "spec": {"nodeName": name, "vendor": "nvidia", "devices": devices}})
        ignore_missing(rest.request, "POST", "/apis/resource.k8s.io/v1/resourceslices", body={
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": f"{name}-bench", "labels": {LABEL: "1"}},
            "spec": {"driver": DRIVER, "nodeName": name,
                     "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
                     "devices": [{"name": f"gpu-{i}", "attributes": {"model": {"string": "a100-80g"}},
                                  "capacity": {"memory": {"value": "80Gi", "requestPolicy": {
                                      "default": "80Gi", "validRange": {"min": "1Gi", "step": "1Gi"}}}},
                                  "allowMultipleAllocations": True} for i in range(8)]}})

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, names))
    return names


def teardown(rest: KubeRest) -> None:
    sel = {"labelSelector": f"{LABEL}=1"}
    for path in (f"/api/v1/namespaces/{NS}/pods", "/apis/resource.k8s.io/v1/resourceslices", CN_PATH,
                 "/api/v1/nodes", "/apis/resource.k8s.io/v1/deviceclasses"):
        q = dict(sel)
        if "pods" in path:
            q["gracePeriodSeconds"] = "0"
        try:
            rest.request("DELETE", path, query=q)
        except KubeError as exc:
            log.warning("cleanup %s: %s", path, exc)
    ignore_missing(rest.request, "DELETE", f"/api/v1/namespaces/{NS}")


def make_pods(rest: KubeRest, n: int, kind: str, scheduler: str, workers: int) -> None:
    def one(i: int) -> None:
        container: dict[str, Any] = {"name": "main", "image": "busybox", "command": ["sleep", "3600"]}
        # nodeSelector: only the bench's Node objects, never the cluster's real node
        spec: dict[str, Any] = {"schedulerName": scheduler, "tolerations": TOLERATIONS, "containers": [container],
                                "nodeSelector": {LABEL: "1"}}
        if kind == "hcs":
            container["resources"] = {"requests": {"ai.compute/vram": "16Gi"}, "limits": {"ai.compute/vram": "16Gi"}}
        else:
            spec["resourceClaims"] = [{"name": "vram", "resourceClaimTemplateName": "vram16"}]
            container["resources"] = {"claims": [{"name": "vram"}]}
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{kind}-{i:05d}", "labels": {LABEL: "1", "run": kind}}, "spec": spec}
        for attempt in range(5):  # the shared API server can time out under load
            try:
                rest.request("POST", f"/api/v1/namespaces/{NS}/pods", body=body)
                return
            except KubeError as exc:
                if exc.status == 409:
                    return
                if attempt == 4:
                    raise
                time.sleep(1 + attempt)

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(n)))


def unbound(rest: KubeRest, kind: str, exact: bool = False) -> int:
    """Unbound pods of one run; cheap form (limit 1: 0 or 1, enough to poll for "all bound")."""
    query = {"labelSelector": f"run={kind}", "fieldSelector": "spec.nodeName="}
    if not exact:
        query["limit"] = "1"  # (remainingItemCount is not served for selector lists)
    return len(rest.request("GET", f"/api/v1/namespaces/{NS}/pods", query=query).get("items") or [])


def scheduler_binary(cluster: Any) -> str:
    try:
        return str(cluster.tool("kube-scheduler"))
    except FileNotFoundError:  # layout names another build than the one on disk: take what is there
        found = sorted(Path(cluster.bin_dir).parent.glob("*/kube-scheduler"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise
        return str(found[-1])


def run_scheduler(cluster: Any, tmp: Path, name: str, profile: dict[str, Any], extenders: list[Any]) -> Any:
    cfg = {"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
           "clientConnection": {"kubeconfig": str(cluster.kubeconfig), "qps": 1000, "burst": 2000},
           "leaderElection": {"leaderElect": False}, "profiles": [profile]}
    if extenders:
        cfg["extenders"] = extenders
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    logf = (tmp / f"{name}.log").open("w")
    return subprocess.Popen([scheduler_binary(cluster), f"--config={path}",
                             f"--secure-port={free_port()}", "--bind-address=127.0.0.1",
                             "--feature-gates=DRAConsumableCapacity=true", "-v=1"],
                            stdout=logf, stderr=subprocess.STDOUT)


def measure(rest: KubeRest, kind: str, n: int, start_scheduler: Any, timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = start_scheduler()
    left = n
    try:
        while time.monotonic() - t0 < timeout:
            left = unbound(rest, kind)
            if left == 0:
                break
            time.sleep(0.25)
    finally:
        elapsed = time.monotonic() - t0
        proc.terminate()
        proc.wait(timeout=30)
    if left:
        left = unbound(rest, kind, exact=True)
    return {"bound": n - left, "seconds": round(elapsed, 2), "pods_per_s": round((n - left) / elapsed, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="leave the objects in place")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    cluster = ensure_cluster()
    from kubernetes import config

    rest = Retrying(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    teardown(rest)
    result: dict[str, Any] = {"nodes": args.nodes, "pods": args.pods}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        try:
            t = time.monotonic()
            setup(rest, args.nodes, args.workers)
            result["setup_s"] = round(time.monotonic() - t, 1)
            # HCS path: allocator (extender) in this process
            state = AllocatorState()
            sync = KubeSync(rest, state)
            sync.sync_inventory()
            server = serve_http(Extender(state, sync), "127.0.0.1", 0, insecure_dev=True)
            url = f"http://127.0.0.1:{server.server_address[1]}"
            ext_cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "hcs" / "allocator" /
                                      "scheduler-config.yaml").read_text())["extenders"][0]
            ext_cfg["urlPrefix"] = url
            ext_cfg["enableHTTPS"] = False  # the in-process extender runs with insecure_dev (no client certs)
            ext_cfg.pop("tlsConfig", None)
            make_pods(rest, args.pods, "hcs", HCS_PROFILE, args.workers)
            result["hcs"] = measure(rest, "hcs", args.pods, lambda: run_scheduler(
                cluster, tmp, "hcs", {"schedulerName": HCS_PROFILE}, [ext_cfg]), args.timeout)
            state.check_invariants()  # never over-committed
            result["hcs"]["reservations"] = len(state.reservations())
            server.shutdown()
            # DRA path: kube-scheduler's own allocation from ResourceSlices
            make_pods(rest, args.pods, "dra", "bench-dra", args.workers)
            result["dra"] = measure(rest, "dra", args.pods, lambda: run_scheduler(
                cluster, tmp, "dra", {"schedulerName": "bench-dra"}, []), args.timeout)
        finally:
            if not args.keep:
                teardown(rest)
    hcs_r = result["hcs"]["pods_per_s"]
    dra_r = result["dra"]["pods_per_s"]
    result.update(hcs_pods_per_s=hcs_r, dra_pods_per_s=dra_r, ratio=round(hcs_r / dra_r, 3) if dra_r else None)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
