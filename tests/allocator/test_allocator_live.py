"""Against the real kube-apiserver: the watch-fed state (list+watch, 410 relist), binds in flight never
dropped by reconciliation, and failover between two allocator daemons."""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hcs.allocator.extender import Extender
from hcs.allocator.kube import CN_PATH, LABEL, KubeSync
from hcs.allocator.placement import ANN_ASSIGNMENT, demand_from_pod
from hcs.allocator.state import AllocatorState
from hcs.kube import KubeError, KubeRest
from hcs.node.computenode import install_crd
from hcs.testing.allocator_procs import Daemon
from hcs.testing.cluster import wait_for

pytestmark = pytest.mark.cluster
GI = 2**30


@pytest.fixture()
def rest(api_client: Any) -> KubeRest:
    r = KubeRest(api_client)
    install_crd(r)
    wait_for(lambda: _served(r), timeout=60, what="the ComputeNode CRD served")
    return r


def _served(r: KubeRest) -> bool:
    try:
        r.request("GET", CN_PATH, query={"limit": "1"})
        return True
    except KubeError:
        return False


@pytest.fixture()
def fake_node(rest: KubeRest) -> Iterator[str]:
    name = f"hcs-live-{uuid.uuid4().hex[:6]}"
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


@pytest.fixture()
def pods(rest: KubeRest) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/default/pods/{name}", query={"gracePeriodSeconds": "0"})


def make_pod(rest: KubeRest, made: list[str], vram: str) -> dict[str, Any]:
    name = f"hcs-live-pod-{uuid.uuid4().hex[:6]}"
    made.append(name)
    return rest.request("POST", "/api/v1/namespaces/default/pods", body={
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"schedulerName": "hcs-scheduler", "containers": [{
            "name": "main", "image": "busybox",
            "resources": {"requests": {"ai.compute/vram": vram}, "limits": {"ai.compute/vram": vram}}}]}})


def started(rest: KubeRest) -> tuple[AllocatorState, KubeSync]:
    state = AllocatorState()
    sync = KubeSync(rest, state, watch_timeout_s=20)
    sync.start()
    assert sync.wait_synced(60)
    return state, sync


def bind(ext: Extender, pod: dict[str, Any], node: str) -> None:
    meta = pod["metadata"]
    assert node in ext.filter({"Pod": pod, "NodeNames": [node]})["NodeNames"]
    assert ext.bind({"PodName": meta["name"], "PodNamespace": "default", "PodUID": meta["uid"], "Node": node}) == \
        {"Error": ""}


def held(state: AllocatorState, node: str) -> dict[str, Any]:
    return {r.pod.uid: (r.node, r.containers) for r in state.reservations(node)}


def test_watch_fed_state_follows_binds_deletes_and_expired_resource_versions(
        rest: KubeRest, fake_node: str, pods: list[str]) -> None:
    state, sync = started(rest)
    other_state, other = started(rest)  # a second allocator that only watches (a hot standby)
    try:
        wait_for(lambda: any(n.name == fake_node for n in state.nodes()), timeout=30, what="ComputeNode watched")
        ext = Extender(state, sync)
        p1, p2 = make_pod(rest, pods, "50Gi"), make_pod(rest, pods, "30Gi")
        bind(ext, p1, fake_node)
        bind(ext, p2, fake_node)
        live = rest.request("GET", f"/api/v1/namespaces/default/pods/{p1['metadata']['name']}")
        assert live["metadata"]["labels"][LABEL] == "assigned" and ANN_ASSIGNMENT in live["metadata"]["annotations"]
        wait_for(lambda: held(other_state, fake_node) == held(state, fake_node), timeout=30,
                 what="the standby's watch to deliver both assignments")
        assert len(held(other_state, fake_node)) == 2

        # resume from an old resourceVersion: the server answers 410 Gone once the watch cache no longer
        # holds it (the informer relists) or replays every event since (on a young API server); either
        # way the state ends where it was
        before = held(other_state, fake_node)
        relists, events = other.pods.relists, other.pods.events
        other.pods.reconnect(resource_version=1)
        wait_for(lambda: other.pods.synced and (other.pods.relists > relists if other.pods.expired
                                                else other.pods.events > events),
                 timeout=30, what="410 Gone and a relist, or the replay")
        assert held(other_state, fake_node) == before
        # a broken stream (not a resume): relist
        other.pods.stop()
        other.pods.start()
        wait_for(lambda: other.pods.synced and other.pods.relists > relists, timeout=30, what="the relist")
        assert held(other_state, fake_node) == before

        # a deleted pod releases its devices in both, from the watch alone (no LIST)
        relists = other.pods.relists
        rest.request("DELETE", f"/api/v1/namespaces/default/pods/{p1['metadata']['name']}",
                     query={"gracePeriodSeconds": "0"})
        for s in (state, other_state):
            wait_for(lambda s=s: p1["metadata"]["uid"] not in held(s, fake_node), timeout=30,
                     what="the delete to release the reservation")
        assert other.pods.relists == relists
        assert set(held(state, fake_node)) == {p2["metadata"]["uid"]}
        state.check_invariants()
        other_state.check_invariants()
    finally:
        sync.stop()
        other.stop()


def test_reconciliation_never_drops_a_reservation_whose_bind_is_in_flight(
        rest: KubeRest, fake_node: str, pods: list[str]) -> None:
    state, sync = started(rest)
    try:
        wait_for(lambda: any(n.name == fake_node for n in state.nodes()), timeout=30, what="ComputeNode watched")
        pod = make_pod(rest, pods, "60Gi")
        uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
        demand = demand_from_pod(pod)
        assert demand is not None
        with sync.binding(uid):
            res = state.reserve(demand, fake_node)
            # pretend the reservation is old, so only the in-flight mark protects it
            state.release(uid)
            state.restore([replace(res, reserved_at_ms=0)])
            sync.pods.relist()  # a relist in the middle of the bind: the pod is not annotated yet
            sync.reconcile()
            assert state.reservation(uid) is not None, "dropped while its bind was in flight"
            sync.annotate(state.reservation(uid), "default", name)
            sync.pods.reconnect()  # and a watch disconnect while the annotation is on its way
            sync.reconcile()
            assert state.reservation(uid) is not None
        wait_for(lambda: sync.pods.get("default", name) is not None, timeout=30, what="the watch to see the pod")
        sync.reconcile()
        assert state.reservation(uid) is not None  # the watch has it: kept
        # control: an old reservation of a pod the watch does not have, not in flight, is released
        stray = make_pod(rest, pods, "10Gi")
        d2 = demand_from_pod(stray)
        assert d2 is not None
        r2 = state.reserve(d2, fake_node)
        state.release(r2.pod.uid)
        state.restore([replace(r2, reserved_at_ms=0)])
        sync.reconcile(full=False)  # the periodic light pass looks only at writes on record
        assert state.reservation(r2.pod.uid) is not None
        sync.reconcile()
        assert state.reservation(r2.pod.uid) is None
        state.check_invariants()
    finally:
        sync.stop()


def test_standby_takes_over_after_the_leader_is_killed(
        kube_cluster: Any, rest: KubeRest, fake_node: str, pods: list[str], tmp_path: Path) -> None:
    lease = f"hcs-live-lease-{uuid.uuid4().hex[:6]}"
    a = Daemon(kube_cluster.kubeconfig, tmp_path, "a", lease)
    b = Daemon(kube_cluster.kubeconfig, tmp_path, "b", lease)
    try:
        a.start()
        a.wait_ready(120)
        b.start()
        wait_for(lambda: b.proc is not None and "allocator b:" in b.tail(), timeout=60, what="standby started")
        time.sleep(2)
        assert not b.ready(), "a standby must not be ready"
        assert "not the leader" in b.post("filter", {"Pod": {}, "NodeNames": []})["Error"]
        pod = make_pod(rest, pods, "40Gi")
        meta = pod["metadata"]
        assert a.post("filter", {"Pod": pod, "NodeNames": [fake_node]})["NodeNames"] == [fake_node]
        assert a.post("bind", {"PodName": meta["name"], "PodNamespace": "default", "PodUID": meta["uid"],
                               "Node": fake_node})["Error"] == ""
        held_a = a.assignments([fake_node])
        assert meta["uid"] in held_a
        a.kill(signal.SIGKILL)
        took = b.wait_ready(60)
        print(f"failover after SIGKILL: {took:.1f} s")
        assert b.assignments([fake_node]) == held_a  # no reservation lost
    finally:
        a.stop()
        b.stop()
        with contextlib.suppress(KubeError):  # the Lease object outlives the daemons
            rest.request("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{lease}")


def test_a_bind_cut_short_leaves_no_stale_grant_and_its_late_binding_fails(
        rest: KubeRest, fake_node: str, pods: list[str]) -> None:
    """An allocator killed between writing the assignment and the Binding: the restarted one restores the
    pending reservation; when the scheduler retries the pod, the assignment is cleared on the API server
    *before* the devices are freed, and the dead allocator's Binding, if it still arrives, fails (it was for
    the annotated version of the pod)."""
    state, sync = started(rest)
    pod = make_pod(rest, pods, "70Gi")
    uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
    try:
        wait_for(lambda: any(n.name == fake_node for n in state.nodes()), timeout=30, what="ComputeNode watched")
        demand = demand_from_pod(pod)
        assert demand is not None
        with sync.binding(uid):
            version = sync.annotate(state.reserve(demand, fake_node), "default", name)
    finally:
        sync.stop()  # "killed": the Binding was never sent
    state2, sync2 = started(rest)
    try:
        wait_for(lambda: state2.reservation(uid) is not None, timeout=30, what="the pending reservation restored")
        ext2 = Extender(state2, sync2)
        ext2.filter({"Pod": pod, "NodeNames": [fake_node]})  # the scheduler retries the pod
        live = rest.request("GET", f"/api/v1/namespaces/default/pods/{name}")
        assert ANN_ASSIGNMENT not in (live["metadata"].get("annotations") or {}), "stale grant left on the pod"
        assert state2.reservation(uid) is None
        with pytest.raises(KubeError) as late:  # the dead allocator's Binding arrives late
            sync.bind("default", name, uid, fake_node, resource_version=version)
        assert late.value.status == 409
        assert not rest.request("GET", f"/api/v1/namespaces/default/pods/{name}")["spec"].get("nodeName")
        bind(ext2, pod, fake_node)  # and the retry binds it with a fresh grant
        assert ANN_ASSIGNMENT in rest.request("GET", f"/api/v1/namespaces/default/pods/{name}")["metadata"][
            "annotations"]
        state2.check_invariants()
    finally:
        sync2.stop()


def test_a_retried_bind_racing_a_landed_binding_never_clears_the_bound_pods_grant(
        rest: KubeRest, fake_node: str, pods: list[str]) -> None:
    """The interleaving behind the stress test's "bound without a grant": allocator A records a grant and
    sends the Binding, then dies; the scheduler, still holding its unbound copy of the pod, retries the bind
    on the new leader B; A's Binding lands just before B writes the grant again, and B's write loses its
    reply (a cut connection). B used to write unconditionally and then clear the grant unconditionally:
    the pod stayed bound with no grant. Now B writes only onto an unbound version of the pod (the write is
    refused) and never touches the bound pod's grant."""
    from hcs.testing import overcommit

    state, sync = started(rest)
    pod = make_pod(rest, pods, "30Gi")
    uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
    try:
        wait_for(lambda: any(n.name == fake_node for n in state.nodes()), timeout=30, what="ComputeNode watched")
        demand = demand_from_pod(pod)
        assert demand is not None
        with sync.binding(uid):
            version = sync.annotate(state.reserve(demand, fake_node), "default", name)
    finally:
        sync.stop()  # A dies with its Binding on the wire
    state2, sync2 = started(rest)
    try:
        wait_for(lambda: state2.reservation(uid) is not None, timeout=30, what="B restored the pending grant")
        granted = rest.request("GET", f"/api/v1/namespaces/default/pods/{name}")["metadata"]["annotations"]
        sync.bind("default", name, uid, fake_node, resource_version=version)  # A's Binding lands
        wait_for(lambda: ((sync2.pods.get("default", name) or {}).get("spec") or {}).get("nodeName") == fake_node,
                 timeout=30, what="B's watch to see the pod bound")
        ext2 = Extender(state2, sync2)
        real = sync2.annotate
        lost: list[str] = []

        def reply_lost(r: Any, namespace: str, pod_name: str, resource_version: str = "") -> str:
            out = real(r, namespace, pod_name, resource_version)  # the write lands...
            if r is not None and not lost:
                lost.append(out)
                raise KubeError(0, "connection reset by peer")  # ...and its reply is lost
            return out

        sync2.annotate = reply_lost  # type: ignore[method-assign]
        ext2.filter({"Pod": pod, "NodeNames": [fake_node]})  # the scheduler's stale, unbound copy
        out = ext2.bind({"PodName": name, "PodNamespace": "default", "PodUID": uid, "Node": fake_node})
        live = rest.request("GET", f"/api/v1/namespaces/default/pods/{name}")
        assert live["spec"].get("nodeName") == fake_node
        assert ANN_ASSIGNMENT in (live["metadata"].get("annotations") or {}), f"bound without a grant ({out})"
        assert live["metadata"]["annotations"][ANN_ASSIGNMENT] == granted[ANN_ASSIGNMENT], \
            "a bound pod's grant was rewritten"
        assert out == {"Error": ""} and not lost  # bound there already: the retry succeeds, touching nothing
        rep = overcommit.check(rest, "default", {fake_node})
        assert rep.bound_without_grant == [] and rep.overcommitted == []
        wait_for(lambda: is_bound(state2, uid), timeout=30, what="B to keep the bound pod's reservation")
        state2.check_invariants()
    finally:
        sync2.stop()


def is_bound(state: AllocatorState, uid: str) -> bool:
    r = state.reservation(uid)
    return r is not None and r.bound


@pytest.mark.parametrize("asks", [False, True], ids=["grant-only", "asks-vram"])
def test_a_grant_cleared_right_before_the_binding_makes_the_binding_fail(
        rest: KubeRest, fake_node: str, pods: list[str], asks: bool) -> None:
    """Between the extender's read of the pod (grant present) and its Binding, the grant is cleared (what a
    new leader does to an orphaned grant, or a release). A Binding sent without a resourceVersion
    precondition (the old path for a pod carrying a grant but asking for nothing) landed anyway: bound
    without a grant. Every Binding is now conditioned on a version that carries the grant."""
    state, sync = started(rest)
    try:
        wait_for(lambda: any(n.name == fake_node for n in state.nodes()), timeout=30, what="ComputeNode watched")
        if asks:
            pod = make_pod(rest, pods, "20Gi")
        else:
            pname = f"hcs-live-pod-{uuid.uuid4().hex[:6]}"
            pods.append(pname)
            pod = rest.request("POST", "/api/v1/namespaces/default/pods", body={
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pname, "namespace": "default"},
                "spec": {"schedulerName": "hcs-scheduler", "containers": [{"name": "main", "image": "busybox"}]}})
        uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
        asking = {**pod, "spec": {**pod["spec"], "containers": [{
            "name": "main", "resources": {"requests": {"ai.compute/vram": "20Gi"}}}]}}
        demand = demand_from_pod(asking)
        assert demand is not None
        if not asks:  # a grant recorded earlier (e.g. by the gRPC path), signed by this allocator
            with sync.binding(uid):
                sync.annotate(state.reserve(demand, fake_node), "default", name)
            pod = rest.request("GET", f"/api/v1/namespaces/default/pods/{name}")
        ext = Extender(state, sync)
        real_bind = sync.bind
        cleared: list[str] = []

        def cleared_first(namespace: str, pod_name: str, pod_uid: str, node: str, resource_version: str = "") -> None:
            if not cleared:  # the interleaving: the grant goes away just before the Binding arrives
                live = rest.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod_name}")
                cleared.append(sync.annotate(None, namespace, pod_name,
                                             resource_version=live["metadata"]["resourceVersion"]))
            real_bind(namespace, pod_name, pod_uid, node, resource_version)

        sync.bind = cleared_first  # type: ignore[method-assign]
        if asks:
            assert fake_node in ext.filter({"Pod": pod, "NodeNames": [fake_node]})["NodeNames"]
        out = ext.bind({"PodName": name, "PodNamespace": "default", "PodUID": uid, "Node": fake_node})
        assert cleared, "the interleaving did not happen"
        live = rest.request("GET", f"/api/v1/namespaces/default/pods/{name}")
        assert not live["spec"].get("nodeName"), f"bound without a grant ({out})"
        assert out["Error"]
        if asks:
            assert state.reservation(uid) is None  # the failed bind freed its devices
        state.check_invariants()
    finally:
        sync.stop()


def test_a_pod_whose_phase_turns_running_stops_counting_as_starting(
        rest: KubeRest, fake_node: str, pods: list[str]) -> None:
    """The watch feeds ``AllocatorState(start_burst=...)``: a bound pod counts as starting on its node until
    the kubelet reports it Running (the status written here, as a kubelet would)."""
    state = AllocatorState(start_burst=1)
    sync = KubeSync(rest, state, watch_timeout_s=20)
    sync.start()
    try:
        assert sync.wait_synced(60)
        wait_for(lambda: any(n.name == fake_node for n in state.nodes()), timeout=30, what="ComputeNode watched")
        ext = Extender(state, sync)
        pod = make_pod(rest, pods, "1Gi")
        bind(ext, pod, fake_node)
        assert state.starting(fake_node) == 1
        name = pod["metadata"]["name"]
        rest.request("PATCH", f"/api/v1/namespaces/default/pods/{name}/status",
                     body={"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}},
                     content_type="application/merge-patch+json")
        time.sleep(1)
        assert state.starting(fake_node) == 1  # a status change that is not Running: still starting
        rest.request("PATCH", f"/api/v1/namespaces/default/pods/{name}/status",
                     body={"status": {"phase": "Running"}}, content_type="application/merge-patch+json")
        wait_for(lambda: state.starting(fake_node) == 0, timeout=30, what="the Running phase to reach the state")
        assert state.reservation(pod["metadata"]["uid"]) is not None  # still holds its devices
    finally:
        sync.stop()
