"""Scale benchmark through the real kube-scheduler: HCS extender path vs kube-scheduler's own DRA.

By default on its own control plane (etcd + kube-apiserver + kube-controller-manager from
e2e/cluster, no node, separate ports and state dir), so nothing else loads it and its
kube-controller-manager runs with ``--kube-api-qps/--kube-api-burst`` (``--kcm-qps``, ``--kcm-burst``)
high enough not to be the DRA path's bottleneck; ``--control-plane shared`` uses the shared local
cluster instead (its kube-controller-manager keeps the default 20 QPS: the JSON says so).

Registers ``--nodes`` plain Node objects (no kubelet; pods tolerate the node-lifecycle taints) with
``--devices`` simulated 80Gi devices each, as ComputeNodes (HCS path) and as DRA ResourceSlices with
consumable ``memory`` capacity (DRA path). Then, once per path:

- hcs: ``--pods`` pods asking ``ai.compute/vram: 16Gi`` for a kube-scheduler running the
  ``hcs-scheduler`` profile (hcs/allocator/scheduler-config.yaml) whose extender is the HCS
  allocator **daemon** (``hcs allocator``, a separate process with its live list+watch sync, Lease
  and metrics), so its RSS and decision latency are its own;
- dra: ``--pods`` pods with a ResourceClaimTemplate asking ``capacity.requests.memory: 16Gi`` from
  a DeviceClass of those slices, for a second kube-scheduler (same binary, same client QPS/burst
  1000/2000) with a plain profile: its DRA plugin allocates, the resourceclaim controller creates
  the claims.

Pods are created first; the clock starts when that path's scheduler starts and stops when every pod
is bound (a watch records when each pod is bound). Prints one JSON object:

- ``hcs_pods_per_s``, ``dra_pods_per_s``, ``ratio`` (hcs/dra);
- ``hcs_bind_p99_s``, ``dra_bind_p99_s``: p99 over pods of the time from the scheduler's start to the
  pod being bound (every pod is pending at the start, so this is the tail of the run, not a
  per-pod latency under light load);
- ``decision_p99_ms``: the allocator's p99 time to answer filter and prioritize (its
  ``hcs_allocator_decision_seconds`` histogram, interpolated within a bucket), ``bind_p99_ms`` the same
  for bind (which includes its two API writes); ``decision_cpu_p99_ms`` the same in CPU time of the
  answering thread (``hcs_allocator_decision_cpu_seconds``: without the waits for a core on a busy machine);
  ``decision_runqueue_p99_ms`` how long the answering thread waited for a core (schedstat run delay: the
  machine's load) and ``decision_active_p99_ms`` wall time minus that wait (CPU, GIL, locks);
- ``allocator_rss_mib``: the allocator daemon's peak RSS (VmHWM);
- ``kcm_qps`` / ``kcm_burst``: kube-controller-manager's client limits; ``scheduler_qps``;
- ``cpu_split``: with ``--allocator-cpus`` (e.g. ``1``), the allocator daemon runs on those CPUs and this
  bench with everything it starts (private control plane, the hcs kube-scheduler) on the others, as a
  deployment gives the allocator its own node or a CPU request; the DRA path's kube-scheduler, which does
  that path's allocating, gets the allocator's CPUs in its turn; without it (``null``) they all share every core, and
  ``decision_runqueue_p99_ms`` shows how much of the wall time was the wait for a core.

    .venv/bin/python bench/scheduler.py [--nodes 500] [--pods 5000] [--devices 8] [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from hcs.allocator.kube import CN_PATH
from hcs.kube import KubeError, KubeRest
from hcs.node.computenode import install_crd
from hcs.testing import overcommit
from hcs.testing.cluster import ensure_cluster
from hcs.testing.private_cp import ControlPlane, private_control_plane

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


def api_client(kubeconfig: Path, workers: int) -> Any:
    """A kubernetes ApiClient whose connection pool holds a connection per creating thread: the default
    (5 x CPUs, 10 here) makes every thread beyond it open a fresh TLS connection per request and throw it
    away ("Connection pool is full"), which on a small machine costs the bench more than the requests."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = max(workers, 10) + 4  # + the bind watch and the odd LIST
    return client.ApiClient(cfg)


def ignore_missing(fn: Any, *a: Any, **kw: Any) -> None:
    try:
        fn(*a, **kw)
    except KubeError as exc:
        if exc.status not in (404, 409):
            raise


def setup(rest: KubeRest, nodes: int, workers: int, per_node: int = 8) -> list[str]:
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
                    "healthScore": 100} for i in range(per_node)]
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
                                  "allowMultipleAllocations": True} for i in range(per_node)]}})

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


def run_scheduler(cluster: Any, tmp: Path, name: str, profile: dict[str, Any], extenders: list[Any],
                  cpus: set[int] | None = None) -> Any:
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
                            stdout=logf, stderr=subprocess.STDOUT,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


REPO = Path(__file__).resolve().parents[1]
class BindWatch:
    """Records when each pod of one run is first seen bound (a list+watch on the bench namespace)."""

    def __init__(self, rest: KubeRest, kind: str) -> None:
        from hcs.allocator.kube import Informer

        self.bound: dict[str, float] = {}
        self.t0 = time.monotonic()

        def trim(pod: dict[str, Any]) -> dict[str, Any]:
            return {"metadata": {"name": pod["metadata"]["name"]},
                    "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName") or ""}}

        def seen(etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            if new is not None and new["spec"]["nodeName"]:
                self.bound.setdefault(new["metadata"]["name"], time.monotonic())

        self.inf = Informer(rest, f"/api/v1/namespaces/{NS}/pods", f"bench-{kind}",
                            query={"labelSelector": f"run={kind}"}, trim=trim, on_change=seen, watch_timeout_s=300)

    def start(self) -> None:
        self.inf.start()
        self.inf.wait_synced(120)

    def stop(self) -> None:
        self.inf.stop()


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[max(0, -(-len(v) * 99 // 100) - 1)]


def measure(rest: KubeRest, kind: str, n: int, start_scheduler: Any, timeout: float) -> dict[str, Any]:
    watch = BindWatch(rest, kind)
    watch.start()
    already = len(watch.bound)
    t0 = time.monotonic()
    proc = start_scheduler()
    try:
        shown = t0
        while time.monotonic() - t0 < timeout and len(watch.bound) < n:
            time.sleep(0.1)
            if time.monotonic() - shown >= 60:  # progress on stderr (a run cut short still says something)
                shown = time.monotonic()
                print(f"{kind}: {len(watch.bound)}/{n} bound after {shown - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        watch.stop()
    times = [t - t0 for t in watch.bound.values() if t >= t0]
    left = unbound(rest, kind, exact=True)
    elapsed = max(times) if times and left == 0 else time.monotonic() - t0
    out = {"bound": n - left, "seconds": round(elapsed, 2), "pods_per_s": round((n - left) / elapsed, 2),
           "bind_p99_s": round(p99(times), 2)}
    if already:
        out["bound_before_start"] = already
    return out


def start_allocator(cp: Any, tmp: Path, cpus: set[int] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``hcs allocator`` as its own process: live watches, Lease, metrics; returns (process, URL)."""
    port = free_port()
    cfg = tmp / "allocator.yaml"
    cfg.write_text(f"allocator:\n  namespace: default\n  leaseName: hcs-bench-{os.getpid()}\n"
                   "  leaseSeconds: 10\n  syncIntervalSeconds: 2\n")
    logf = (tmp / "allocator.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "hcs.cli", "--log-level=warning", "allocator",
                             "--config", str(cfg), "--kubeconfig", str(cp.kubeconfig),
                             "--grpc-address", f"unix://{tmp / 'alloc.sock'}",
                             "--extender-address", f"127.0.0.1:{port}",
                             # the bench's kube-scheduler calls a plain-HTTP extender (caller authentication
                             # costs are measured by bench/allocator_auth.py; attacks in tests/security)
                             "--insecure-dev"],
                            stdout=logf, stderr=subprocess.STDOUT, cwd=str(REPO),
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"allocator exited ({proc.returncode}); see {tmp / 'allocator.log'}:\n"
                               + (tmp / "allocator.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("allocator not ready (leader with its watches listed) within 600 s")


def histogram_quantile(text: str, name: str, verbs: set[str], q: float) -> float | None:
    """Prometheus-style quantile from ``name``'s buckets (summed over ``verbs``), linear within a bucket."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "_bucket{"):
            continue
        labels, _, value = line.rpartition(" ")
        verb = labels.split('verb="', 1)[1].split('"', 1)[0] if 'verb="' in labels else ""
        if verb not in verbs:
            continue
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + float(value)
    if not buckets or buckets.get(float("inf"), 0.0) == 0:
        return None
    bounds = sorted(buckets)
    total = buckets[float("inf")]
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_b, prev_c = b, c
    return prev_b


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--devices", type=int, default=8, help="simulated 80Gi devices per node")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--control-plane", choices=("private", "shared"), default="private")
    ap.add_argument("--kcm-qps", type=int, default=2000)
    ap.add_argument("--kcm-burst", type=int, default=4000)
    ap.add_argument("--keep", action="store_true", help="leave the objects (and a private control plane) in place")
    ap.add_argument("--paths", choices=("both", "hcs"), default="both",
                    help="hcs: skip the DRA path (a shorter run for the allocator's own numbers; ratio is null)")
    ap.add_argument("--reuse", action="store_true", help="reuse a running private control plane (default: a fresh one)")
    ap.add_argument("--allocator-cpus", default="",
                    help="comma-separated CPUs for the allocator daemon alone; the rest of the run (control "
                         "plane, schedulers, this script) is pinned to the other CPUs (default: no pinning)")
    args = ap.parse_args()
    alloc_cpus: set[int] | None = None
    cpu_split: dict[str, list[int]] | None = None
    if args.allocator_cpus:
        try:
            alloc_cpus = {int(c) for c in args.allocator_cpus.split(",")}
        except ValueError:
            ap.error(f"--allocator-cpus {args.allocator_cpus!r}: expected CPU numbers like 1 or 2,3")
        rest_cpus = os.sched_getaffinity(0) - alloc_cpus
        if not rest_cpus or not alloc_cpus <= os.sched_getaffinity(0):
            ap.error(f"--allocator-cpus {args.allocator_cpus}: must be a proper subset of this machine's CPUs "
                     f"{sorted(os.sched_getaffinity(0))}")
        if args.reuse or args.control_plane == "shared":
            ap.error("--allocator-cpus pins the control plane this run starts; "
                     "it cannot be combined with --reuse or --control-plane shared")
        os.sched_setaffinity(0, rest_cpus)  # everything started from here on inherits it
        # the DRA path's allocator is its kube-scheduler: it gets the allocator's CPUs
        cpu_split = {"allocator": sorted(alloc_cpus), "dra_scheduler": sorted(alloc_cpus), "rest": sorted(rest_cpus)}
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    if args.pods > args.nodes * args.devices * 5:  # 16Gi of 80Gi: five pods per device
        ap.error(f"--pods {args.pods}: at most {args.nodes * args.devices * 5} fit on {args.nodes} nodes")
    cp: Any
    if args.control_plane == "private":
        cp = private_control_plane(args.kcm_qps, args.kcm_burst, fresh=not args.reuse)
        kcm = {"kcm_qps": args.kcm_qps, "kcm_burst": args.kcm_burst}
    else:
        cp = ensure_cluster()
        kcm = {"kcm_qps": 20, "kcm_burst": 30}  # the shared cluster's kube-controller-manager: defaults
    rest = Retrying(api_client(cp.kubeconfig, args.workers))
    teardown(rest)
    result: dict[str, Any] = {"nodes": args.nodes, "pods": args.pods, "devices_per_node": args.devices,
                              "control_plane": args.control_plane, **kcm, "scheduler_qps": 1000,
                              "cpu_split": cpu_split}
    alloc: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        try:
            t = time.monotonic()
            setup(rest, args.nodes, args.workers, args.devices)
            result["setup_s"] = round(time.monotonic() - t, 1)
            print(f"setup done in {result['setup_s']} s", file=sys.stderr, flush=True)
            # HCS path: the allocator daemon (live list+watch sync) as the extender
            alloc, url = start_allocator(cp, tmp, alloc_cpus)
            ext_cfg = yaml.safe_load((REPO / "hcs" / "allocator" / "scheduler-config.yaml").read_text())[
                "extenders"][0]
            ext_cfg["urlPrefix"] = url
            ext_cfg["enableHTTPS"] = False  # the in-process extender runs with insecure_dev (no client certs)
            ext_cfg.pop("tlsConfig", None)
            t = time.monotonic()
            make_pods(rest, args.pods, "hcs", HCS_PROFILE, args.workers)
            result["hcs_create_s"] = round(time.monotonic() - t, 1)
            result["hcs"] = measure(rest, "hcs", args.pods, lambda: run_scheduler(
                cp, tmp, "hcs", {"schedulerName": HCS_PROFILE}, [ext_cfg]), args.timeout)
            with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
                metrics = resp.read().decode()
            dec = histogram_quantile(metrics, "hcs_allocator_decision_seconds", {"filter", "prioritize"}, 0.99)
            bnd = histogram_quantile(metrics, "hcs_allocator_decision_seconds", {"bind"}, 0.99)
            result["decision_p99_ms"] = round(dec * 1000, 2) if dec is not None else None
            cpu = histogram_quantile(metrics, "hcs_allocator_decision_cpu_seconds", {"filter", "prioritize"}, 0.99)
            result["decision_cpu_p99_ms"] = round(cpu * 1000, 2) if cpu is not None else None
            for key, hist in (("decision_runqueue_p99_ms", "hcs_allocator_decision_runqueue_seconds"),
                              ("decision_active_p99_ms", "hcs_allocator_decision_active_seconds")):
                v = histogram_quantile(metrics, hist, {"filter", "prioritize"}, 0.99)
                result[key] = round(v * 1000, 2) if v is not None else None
            result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
            result["bind_p99_ms"] = round(bnd * 1000, 2) if bnd is not None else None
            result["allocator_rss_mib"] = rss_mib(alloc.pid)
            rep = overcommit.check(rest, NS)
            result["hcs"].update(granted=rep.granted_pods, overcommitted_devices=len(rep.overcommitted),
                                 bound_without_grant=len(rep.bound_without_grant))
            alloc.terminate()
            alloc.wait(timeout=30)
            alloc = None
            print(f"hcs path done: {json.dumps(result)}", file=sys.stderr, flush=True)  # progress (stdout: the end)
            # DRA path: kube-scheduler's own allocation from ResourceSlices
            if args.paths == "both":
                t = time.monotonic()
                make_pods(rest, args.pods, "dra", "bench-dra", args.workers)
                result["dra_create_s"] = round(time.monotonic() - t, 1)
                result["dra"] = measure(rest, "dra", args.pods, lambda: run_scheduler(
                    cp, tmp, "dra", {"schedulerName": "bench-dra"}, [], alloc_cpus), args.timeout)
            else:
                result["dra"] = {"skipped": True, "pods_per_s": None, "bind_p99_s": None}
        finally:
            if alloc is not None:
                alloc.kill()
            if not args.keep:
                teardown(rest)
                if isinstance(cp, ControlPlane):
                    cp.down()
    hcs_r = result["hcs"]["pods_per_s"]
    dra_r = result["dra"]["pods_per_s"]
    result["paths"] = args.paths
    result.update(hcs_pods_per_s=hcs_r, dra_pods_per_s=dra_r, ratio=round(hcs_r / dra_r, 3) if dra_r else None,
                  hcs_bind_p99_s=result["hcs"]["bind_p99_s"], dra_bind_p99_s=result["dra"]["bind_p99_s"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
