"""Against the real kube-apiserver: bind writes the assignment, a restarted allocator rebuilds the
same state from pod annotations, deleted pods release, and the Lease elects one leader."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hcs.allocator.extender import Extender
from hcs.allocator.kube import CN_PATH, KubeSync, LeaderElector
from hcs.allocator.placement import ANN_ASSIGNMENT
from hcs.allocator.state import AllocatorState
from hcs.kube import KubeError, KubeRest
from hcs.node.computenode import install_crd

pytestmark = pytest.mark.cluster
GI = 2**30


@pytest.fixture()
def rest(api_client: Any) -> KubeRest:
    r = KubeRest(api_client)
    install_crd(r)
    deadline = time.time() + 60
    while True:  # the CRD is served once established
        try:
            r.request("GET", CN_PATH)
            return r
        except KubeError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture()
def fake_node(rest: KubeRest) -> Iterator[str]:
    name = f"hcs-alloc-{uuid.uuid4().hex[:6]}"
    rest.request("POST", "/api/v1/nodes", body={
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
                   "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"}}})
    devices = [{"name": f"nvidia-{i}", "vendor": "nvidia", "model": "a100-80g", "uuid": f"GPU-{name}-{i}",
                "index": i, "vramBytes": 80 * GI,
                "compute": {"fp16Tflops": 312, "fp32Tflops": 19.5, "int8Tops": 624, "rate": 1.0},
                "topology": {"busId": f"0000:1{i}:00.0", "numaNode": 0, "island": "nvl-0"}, "healthScore": 100}
               for i in range(2)]
    rest.request("POST", CN_PATH, body={"apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNode",
                                        "metadata": {"name": name},
                                        "spec": {"nodeName": name, "vendor": "nvidia", "devices": devices}})
    try:
        yield name
    finally:
        for path in (f"{CN_PATH}/{name}", f"/api/v1/nodes/{name}"):
            with contextlib.suppress(KubeError):
                rest.request("DELETE", path)


def make_pod(rest: KubeRest, vram: str) -> dict[str, Any]:
    name = f"hcs-alloc-pod-{uuid.uuid4().hex[:6]}"
    return rest.request("POST", "/api/v1/namespaces/default/pods", body={
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"schedulerName": "hcs-scheduler", "containers": [{
            "name": "main", "image": "busybox", "command": ["sleep", "3600"],
            "resources": {"requests": {"ai.compute/vram": vram, "cpu": "1"}, "limits": {"ai.compute/vram": vram}}}]}})


def test_bind_persists_and_restart_rebuilds_the_same_state(rest: KubeRest, fake_node: str) -> None:
    state = AllocatorState()
    sync = KubeSync(rest, state)
    sync.sync_inventory()
    ext = Extender(state, sync)
    pods = [make_pod(rest, "50Gi") for _ in range(3)]
    try:
        bound = []
        for p in pods:
            meta = p["metadata"]
            out = ext.filter({"Pod": p, "NodeNames": [fake_node]})
            if fake_node not in out["NodeNames"]:
                assert "not enough free VRAM" in out["FailedNodes"][fake_node] or \
                    "devices busy" in out["FailedNodes"][fake_node]
                continue
            result = ext.bind({"PodName": meta["name"], "PodNamespace": "default", "PodUID": meta["uid"],
                               "Node": fake_node})
            assert result["Error"] == ""
            bound.append(meta)
        assert len(bound) == 2  # two 80Gi devices, 50Gi each: the third cannot fit
        for meta in bound:
            live = sync.get_pod("default", meta["name"])
            assert live["spec"]["nodeName"] == fake_node
            assert ANN_ASSIGNMENT in live["metadata"]["annotations"]
        before = {r.pod.uid: r for r in state.reservations(fake_node)}

        # the scheduler retries a pod whose bind timed out on its side but succeeded here: its copy
        # says unbound; the reservation must survive (the API server says bound)
        stale = next(p for p in pods if p["metadata"]["uid"] == bound[0]["uid"])
        ext.filter({"Pod": stale, "NodeNames": [fake_node]})
        assert state.reservation(bound[0]["uid"]) is not None
        again = ext.bind({"PodName": bound[0]["name"], "PodNamespace": "default", "PodUID": bound[0]["uid"],
                          "Node": fake_node})
        assert again["Error"] == ""  # idempotent: already bound there
        state.check_invariants()

        # a fresh allocator (restart) rebuilds exactly the same reservations
        state2 = AllocatorState()
        sync2 = KubeSync(rest, state2)
        sync2.sync_inventory()
        problems = sync2.resync()
        assert not [p for p in problems if any(m["name"] in p for m in bound)]
        after = {r.pod.uid: r for r in state2.reservations(fake_node)}
        assert {u: (r.node, r.containers) for u, r in after.items()} == \
            {u: (r.node, r.containers) for u, r in before.items()}
        assert state2.usage(fake_node) == state.usage(fake_node)

        # deleting a pod releases its devices at the next resync
        rest.request("DELETE", f"/api/v1/namespaces/default/pods/{bound[0]['name']}",
                     query={"gracePeriodSeconds": "0"})
        deadline = time.time() + 30
        while time.time() < deadline:
            sync2.resync()
            if bound[0]["uid"] not in {r.pod.uid for r in state2.reservations()}:
                break
            time.sleep(0.5)
        assert bound[0]["uid"] not in {r.pod.uid for r in state2.reservations()}
        state2.check_invariants()
    finally:
        for p in pods:
            with contextlib.suppress(KubeError):
                rest.request("DELETE", f"/api/v1/namespaces/default/pods/{p['metadata']['name']}",
                             query={"gracePeriodSeconds": "0"})


def test_lease_elects_exactly_one_leader(rest: KubeRest) -> None:
    name = f"hcs-alloc-lease-{uuid.uuid4().hex[:6]}"
    a = LeaderElector(rest, "default", name, "a", duration_s=15)
    b = LeaderElector(rest, "default", name, "b", duration_s=15)
    try:
        assert a.step() and a.is_leader()
        assert not b.step() and not b.is_leader()
        assert a.step()  # renew
        a.release()
        assert b.step() and b.is_leader()
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{name}")


def test_allocator_daemon_serves_grpc_and_extender_and_stops_cleanly(kube_cluster: Any, tmp_path: Any,
                                                                     rest: KubeRest) -> None:
    import json
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    import grpc

    from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
    from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock = tmp_path / "alloc.sock"
    cfg = tmp_path / "hcs.yaml"
    lease = f"hcs-alloc-test-{uuid.uuid4().hex[:6]}"
    cfg.write_text(f"allocator:\n  namespace: default\n  leaseName: {lease}\n"
                   f"  leaseSeconds: 6\nexchangeRates:\n  a100: 1.0\n")
    proc = subprocess.Popen([sys.executable, "-m", "hcs.cli", "allocator", "--config", str(cfg),
                             "--kubeconfig", str(kube_cluster.kubeconfig), "--grpc-address", f"unix://{sock}",
                             "--extender-address", f"127.0.0.1:{port}",
                             # plaintext client below; caller authentication: tests/security/test_sec_auth_*.py
                             "--insecure-dev"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        leader = False
        while time.time() < deadline and not leader:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    leader = json.loads(resp.read())["leader"]
            except OSError:
                pass
            time.sleep(0.5)
        assert leader, "the only replica never became leader"
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            out = pbg.AllocatorStub(ch).GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="nowhere"), timeout=10)
        assert list(out.assignments) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        out_text = proc.communicate(timeout=30)[0]
        with contextlib.suppress(KubeError):  # the Lease object outlives the daemon
            rest.request("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{lease}")
    assert proc.returncode == 0, out_text


def test_gated_pod_is_placed_retargeted_and_kept_on_its_node(rest: KubeRest, fake_node: str) -> None:
    """Issue 8 part 5: the webhook gated the pod; the allocator picks the vendor, sets that vendor's image,
    removes the gate, and the extender keeps the pod on the reserved node."""
    import json

    state = AllocatorState()
    sync = KubeSync(rest, state)
    sync.sync_inventory()
    name = f"hcs-alloc-gated-{uuid.uuid4().hex[:6]}"
    images = {"main": {"nvidia": "repo/torch:cuda", "ascend": "repo/torch:npu"}}
    pod = rest.request("POST", "/api/v1/namespaces/default/pods", body={
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"hcs.io/allocator": "gated"},  # as the webhook
                     "annotations": {"hcs.io/vendor-images": json.dumps(images)}},
        "spec": {"schedulerName": "hcs-scheduler", "schedulingGates": [{"name": "hcs.io/vendor-image"}],
                 "containers": [{"name": "main", "image": "repo/torch:cuda-generic", "command": ["sleep", "1"],
                                 "resources": {"requests": {"ai.compute/vram": "40Gi"},
                                               "limits": {"ai.compute/vram": "40Gi"}}}]}})
    try:
        sync.pods.relist()  # the pod watch (selector hcs.io/allocator) sees the gated pod
        assert sync.release_vendor_gates() >= 1
        live = rest.request("GET", f"/api/v1/namespaces/default/pods/{name}")
        assert live["spec"]["containers"][0]["image"] == "repo/torch:cuda"
        assert not any(g["name"] == "hcs.io/vendor-image" for g in live["spec"].get("schedulingGates") or [])
        assert ANN_ASSIGNMENT in live["metadata"]["annotations"]
        held = state.reservation(pod["metadata"]["uid"])
        assert held is not None  # on fake_node or another node some other test left in the shared cluster
        ext = Extender(state, sync)
        verdict = ext.filter({"Pod": live, "NodeNames": [held.node, "some-other-node"]})
        assert verdict["NodeNames"] == [held.node]
        sync.pods.relist()
        assert sync.release_vendor_gates() == 0  # nothing gated any more
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/default/pods/{name}")
