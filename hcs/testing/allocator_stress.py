"""Binds racing with watch disconnects, relists and SIGKILLed allocator restarts, against a real API server.

:func:`run` plays kube-scheduler against a real ``hcs allocator`` daemon (filter, then bind, from
several threads), while a chaos thread SIGKILLs and restarts the daemon (``kills``) and cuts every
connection between it and the API server (``cuts``: watches break, the daemon relists; calls in
flight fail). An independent checker (:mod:`hcs.testing.overcommit`) reads the API server over and
over during the run. Bound pods are deleted now and then to make room, so the devices stay near full.
At the end the daemon's state is read (gRPC), the daemon is SIGKILLed and restarted, and the state
read again: it must be identical, and equal to what the API server's annotations say.

Used by tests/allocator/test_allocator_live_stress.py (small counts) and bench/allocator_stress.py.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import urllib.error
import uuid
from pathlib import Path
from typing import Any

from hcs.kube import KubeError, KubeRest
from hcs.testing import overcommit
from hcs.testing.allocator_procs import Daemon, TcpProxy, kubeconfig_via, server_of

CN_PATH = "/apis/hetero.zrs.io/v1alpha1/computenodes"
GI = 2**30
SIZES_GI = (8, 16, 16, 24, 40, 40, 80, 120)  # 120Gi spans two devices


def _mk_nodes(rest: KubeRest, prefix: str, n: int, devices: int) -> list[str]:
    names = [f"{prefix}-{i}" for i in range(n)]
    for name in names:
        rest.request("POST", "/api/v1/nodes", body={
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"hcs.io/stress": prefix}},
            "status": {"capacity": {"cpu": "64", "memory": "512Gi", "pods": "110"},
                       "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110"}}})
        devs = [{"name": f"nvidia-{i}", "vendor": "nvidia", "model": "a100-80g", "uuid": f"GPU-{name}-{i}",
                 "index": i, "vramBytes": 80 * GI,
                 "compute": {"fp16Tflops": 312, "fp32Tflops": 19.5, "int8Tops": 624, "rate": 1.0},
                 "topology": {"busId": f"0000:{16 + i:02x}:00.0", "numaNode": 0, "island": f"nvl-{i // 2}"},
                 "healthScore": 100} for i in range(devices)]
        rest.request("POST", CN_PATH, body={
            "apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNode",
            "metadata": {"name": name, "labels": {"hcs.io/stress": prefix}},
            "spec": {"nodeName": name, "vendor": "nvidia", "devices": devs}})
    return names


def _cleanup(rest: KubeRest, prefix: str, ns: str) -> None:
    for path in (CN_PATH, "/api/v1/nodes"):
        with contextlib.suppress(KubeError):
            rest.request("DELETE", path, query={"labelSelector": f"hcs.io/stress={prefix}"})
    with contextlib.suppress(KubeError):
        rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods", query={"gracePeriodSeconds": "0"})
    with contextlib.suppress(KubeError):
        rest.request("DELETE", f"/api/v1/namespaces/{ns}")
    with contextlib.suppress(KubeError):  # the daemons' Lease (in "default") outlives them
        rest.request("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{prefix}-lease")


def api_assignments(rest: KubeRest, ns: str) -> dict[str, tuple[str, tuple[tuple[str, str, int], ...]]]:
    """What the API server's annotations grant (unfinished pods in ``ns``), in Daemon.assignments' form."""
    out = {}
    for pod in rest.request("GET", f"/api/v1/namespaces/{ns}/pods").get("items") or []:
        text = ((pod.get("metadata") or {}).get("annotations") or {}).get(overcommit.ANN)
        if not text:
            continue
        a = json.loads(text)
        out[pod["metadata"]["uid"]] = (a["node"], tuple(sorted(
            (c["container"], d["uuid"], int(d.get("vramBytes") or 0))
            for c in a.get("containers") or [] for d in c.get("devices") or [])))
    return out


# Complexity 30: a test scenario told as one story (start daemons, race binds against kills and
# watch cuts, then check); its branches are the scenario's steps, not logic shared with anything.
def run(rest: KubeRest, kubeconfig: Path, tmp: Path, *, binds: int = 60, kills: int = 3, cuts: int = 3,
        nodes: int = 4, devices: int = 4, threads: int = 4, seed: int = 0) -> dict[str, Any]:
    rnd = random.Random(seed)
    prefix = f"hcs-stress-{uuid.uuid4().hex[:6]}"
    ns = prefix
    rest.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                     "metadata": {"name": ns}})
    names = _mk_nodes(rest, prefix, nodes, devices)
    proxy = TcpProxy(server_of(kubeconfig))
    daemon = Daemon(kubeconfig_via(kubeconfig, proxy.port, tmp / "via-proxy.kubeconfig"), tmp, "stress",
                    f"{prefix}-lease")
    stop = threading.Event()
    lock = threading.Lock()
    result: dict[str, Any] = {"binds": 0, "bind_errors": 0, "kills": 0, "kills_between_reserve_and_bind": 0,
                              "cuts": 0, "deleted": 0, "checks": 0, "max_overcommitted_devices": 0,
                              "bound_without_grant": 0, "restart_s": []}
    violations: list[str] = []
    bound_pods: list[str] = []

    def check_once() -> overcommit.Report:
        rep = overcommit.check(rest, ns, set(names))
        with lock:
            result["checks"] += 1
            result["max_overcommitted_devices"] = max(result["max_overcommitted_devices"], len(rep.overcommitted))
            result["bound_without_grant"] = max(result["bound_without_grant"], len(rep.bound_without_grant))
            violations.extend(rep.overcommitted + rep.bound_without_grant)
        return rep

    def checker() -> None:
        while not stop.is_set():
            with contextlib.suppress(KubeError):
                check_once()
            stop.wait(0.05)

    def make_pod() -> dict[str, Any]:
        size = rnd.choice(SIZES_GI)
        return rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body={
            "apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "p-", "namespace": ns},
            "spec": {"schedulerName": "hcs-scheduler", "nodeSelector": {"hcs.io/stress": prefix},
                     "containers": [{"name": "main", "image": "busybox", "resources": {
                         "requests": {"ai.compute/vram": f"{size}Gi"}, "limits": {"ai.compute/vram": f"{size}Gi"}}}]}})

    def make_room() -> None:
        with lock:
            if not bound_pods:
                return
            victim = bound_pods.pop(rnd.randrange(len(bound_pods)))
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{victim}", query={"gracePeriodSeconds": "0"})
            with lock:
                result["deleted"] += 1

    def driver() -> None:
        pod: dict[str, Any] | None = None
        while not stop.is_set():
            with lock:
                if result["binds"] >= binds:
                    return
            try:
                if pod is None:
                    pod = make_pod()
                meta = pod["metadata"]
                out = daemon.post("filter", {"Pod": pod, "NodeNames": names})
                if out.get("Error"):
                    time.sleep(0.1)  # standby / restarting: the scheduler would requeue
                    continue
                fit = out.get("NodeNames") or []
                if not fit:
                    make_room()
                    time.sleep(0.05)
                    continue
                res = daemon.post("bind", {"PodName": meta["name"], "PodNamespace": ns, "PodUID": meta["uid"],
                                           "Node": fit[0]})
                if res.get("Error"):
                    with lock:
                        result["bind_errors"] += 1
                    live = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{meta['name']}")
                    if not (live.get("spec") or {}).get("nodeName"):
                        time.sleep(0.05)
                        continue  # retried like the scheduler does: filter and bind again
                with lock:
                    result["binds"] += 1
                    bound_pods.append(meta["name"])
                pod = None
            except (OSError, urllib.error.URLError, KubeError, ValueError):
                time.sleep(0.1)  # the daemon was killed mid-call, or the API server refused: retry

    def chaos() -> None:
        try:
            _chaos()
        except BaseException as exc:  # reported, not lost with the thread
            with lock:
                result["chaos_error"] = repr(exc)

    def _chaos() -> None:
        actions = ["kill"] * kills + ["cut"] * cuts
        rnd.shuffle(actions)
        per = max(1, binds // (len(actions) + 1))
        for i, action in enumerate(actions):
            while not stop.is_set():  # spread the actions over the binds
                with lock:
                    if result["binds"] >= per * (i + 1) or result["binds"] >= binds:
                        break
                time.sleep(0.01)
            if stop.is_set():
                return
            if action == "cut":
                proxy.cut()
                with lock:
                    result["cuts"] += 1
                continue
            daemon.kill()
            # an assignment written whose Binding was not: the kill fell between reserve and bind
            with contextlib.suppress(KubeError):
                pending = [p for p in rest.request("GET", f"/api/v1/namespaces/{ns}/pods").get("items") or []
                           if overcommit.ANN in ((p.get("metadata") or {}).get("annotations") or {})
                           and not (p.get("spec") or {}).get("nodeName")]
                with lock:
                    result["kills_between_reserve_and_bind"] += 1 if pending else 0
            daemon.start()
            t_start = time.monotonic()
            while True:  # a slow restart (a loaded machine, a big cluster to list) must not end the chaos
                try:
                    daemon.wait_ready(60)
                    break
                except TimeoutError:
                    with lock:
                        result["slow_restarts"] = result.get("slow_restarts", 0) + 1
                    if time.monotonic() - t_start > 900:
                        raise
            with lock:
                result["kills"] += 1
                result["restart_s"].append(round(time.monotonic() - t_start, 2))

    try:
        daemon.start()
        daemon.wait_ready(180)
        workers = [threading.Thread(target=driver, daemon=True) for _ in range(threads)]
        aux = [threading.Thread(target=checker, daemon=True), threading.Thread(target=chaos, daemon=True)]
        t0 = time.monotonic()
        for t in workers + aux:
            t.start()
        for t in workers:
            t.join()
        aux[1].join()  # the chaos thread finishes its remaining actions
        stop.set()
        aux[0].join()
        result["seconds"] = round(time.monotonic() - t0, 1)
        # quiesce, then: state before == state after a SIGKILL restart == the API server's annotations
        time.sleep(2)
        daemon.wait_ready(180)
        before = daemon.assignments(names)
        truth = api_assignments(rest, ns)
        daemon.kill()
        daemon.start()
        result["restart_s"].append(round(daemon.wait_ready(180), 2))
        after = daemon.assignments(names)
        result["reservations"] = len(after)
        result["restart_identical"] = before == after
        result["matches_api_server"] = after == truth
        if before != after or after != truth:
            result["state_diff"] = {"only_before": sorted(set(before) - set(after))[:5],
                                    "only_after": sorted(set(after) - set(truth))[:5],
                                    "only_api": sorted(set(truth) - set(after))[:5]}
        check_once()
        result["violations"] = violations[:10]
        rs = sorted(result["restart_s"])
        result["restart_p50_s"] = rs[len(rs) // 2] if rs else None
        result["restart_max_s"] = rs[-1] if rs else None
        del result["restart_s"]
        return result
    finally:
        stop.set()
        daemon.stop()
        proxy.close()
        _cleanup(rest, prefix, ns)
