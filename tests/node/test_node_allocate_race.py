"""The kubelet's Allocate before the node agent's assignment source knows the pod (issue 15's burst race).

In the chart the node agent asks the allocator (``GetNodeAssignments``); the allocator records the
signed assignment on the pod, then binds it. Under a burst the kubelet admitted pods — and called
``Allocate`` — before the allocator replica the agent talked to had that reservation, and the pod
failed with ``UnexpectedAdmissionError``. Here the real kubelet of the local cluster admits the pods
and a real allocator gRPC server with an empty state (a standby whose watch has not delivered the
bind) is the agent's source, so every Allocate comes before the source has the assignment:

- the record is on the pod (the allocator's order: annotate, then bind): Allocate reads it;
- nothing is anywhere when Allocate comes; the record is written while Allocate waits: it succeeds;
- a record signed with another key (a tenant's forgery) is never used: the pod fails at the bound.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_helpers import GiB, agent_on_allocator, device  # noqa: E402

from hcs.devices.model import Vendor  # noqa: E402
from hcs.kube import KubeError, KubeRest  # noqa: E402
from hcs.node.assignments import Assignment, ContainerAssignment, DeviceGrant, PodRef, dumps  # noqa: E402
from hcs.records import RecordKey  # noqa: E402
from hcs.testing.cluster import wait_for  # noqa: E402

pytestmark = pytest.mark.cluster

RESOURCE = "test.hcs.io/race-slot"
NS = "default"


@pytest.fixture
def agent_on_real_kubelet(rest: KubeRest, kube_cluster: Any, record_key: RecordKey) -> Iterator[Any]:
    """A node agent registered with the real kubelet whose assignment source is a real allocator gRPC
    server that is a standby (GetNodeAssignments answers UNAVAILABLE: nothing to match)."""
    from hcs.allocator.state import AllocatorState

    devices = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 40)]
    with agent_on_allocator(rest, kube_cluster, AllocatorState(), leader=False, resource=RESOURCE, tag="race",
                            devices=devices) as agent:
        assert agent.core.record_lookup is not None
        yield agent


def _create_unbound(rest: KubeRest, kube_cluster: Any, name: str) -> dict[str, Any]:
    """A pod no scheduler picks up (its schedulerName is nobody's): we bind it, as the allocator does."""
    limits = {"ai.compute/vram": "8Gi", RESOURCE: "1"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
           "spec": {"schedulerName": "hcs-test-nobody", "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": kube_cluster.busybox_image, "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", "env | sort"],
                                    "resources": {"requests": limits, "limits": limits}}]}}
    out: dict[str, Any] = rest.request("POST", f"/api/v1/namespaces/{NS}/pods", body=pod)
    return out


def _record(pod: dict[str, Any], node: str, index: int, key: RecordKey) -> dict[str, str | None]:
    """The allocator's signed record for ``pod``: 8 GiB on nvidia-<index> of ``node``."""
    m = pod["metadata"]
    a = Assignment(PodRef(m["uid"], m["namespace"], m["name"]),
                   (ContainerAssignment("main", (DeviceGrant(Vendor.NVIDIA, index, f"NVIDIA-UUID-{index:04d}",
                                                             8 * GiB),)),))
    return key.annotations(dumps(a, node=node))


def _annotate(rest: KubeRest, name: str, annotations: dict[str, str | None]) -> None:
    rest.request("PATCH", f"/api/v1/namespaces/{NS}/pods/{name}", body={"metadata": {"annotations": annotations}},
                 content_type="application/merge-patch+json")


def _bind(rest: KubeRest, name: str, node: str) -> None:
    rest.request("POST", f"/api/v1/namespaces/{NS}/pods/{name}/binding",
                 body={"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                       "target": {"apiVersion": "v1", "kind": "Node", "name": node}})


def _finished(rest: KubeRest, name: str, timeout_s: float = 120) -> dict[str, Any]:
    def done() -> Any:
        p = rest.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    out: dict[str, Any] = wait_for(done, timeout=timeout_s, interval=0.1, what=f"pod {name} to finish")
    return out


@contextlib.contextmanager
def _pod(rest: KubeRest, kube_cluster: Any, prefix: str) -> Iterator[dict[str, Any]]:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    pod = _create_unbound(rest, kube_cluster, name)
    try:
        yield pod
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}", query={"gracePeriodSeconds": "0"})


def _run_with_record(rest: KubeRest, kube_cluster: Any, pod: dict[str, Any], index: int, key: RecordKey) -> str:
    """The allocator's order for ``pod``: its signed record (8 GiB on nvidia-<index>), then the Binding.
    The pod must succeed; returns its log."""
    name, node = pod["metadata"]["name"], kube_cluster.node_name
    _annotate(rest, name, _record(pod, node, index, key))
    _bind(rest, name, node)
    p = _finished(rest, name)
    assert p["status"]["phase"] == "Succeeded", p["status"]
    out: str = kube_cluster.kubectl("logs", "-n", NS, name).stdout
    return out


def test_allocate_before_the_allocator_has_it_uses_the_pods_signed_record(
        rest: KubeRest, kube_cluster: Any, record_key: RecordKey, agent_on_real_kubelet: Any) -> None:
    agent = agent_on_real_kubelet
    with _pod(rest, kube_cluster, "hcs-race-rec") as pod:
        name = pod["metadata"]["name"]
        # the allocator's order: the record first (nvidia-0, where best fit would pick the 40 GiB nvidia-1),
        # then the Binding; the standby allocator the agent asks never hears of it
        logs = _run_with_record(rest, kube_cluster, pod, 0, record_key)
        assert "NVIDIA_VISIBLE_DEVICES=NVIDIA-UUID-0000" in logs
        assert [(a.pod.name, [g.key for g in a.devices]) for a in agent.core.allocations()] == [(name, ["nvidia-0"])]


def test_allocate_waits_for_an_assignment_written_after_it_arrived(
        rest: KubeRest, kube_cluster: Any, record_key: RecordKey, agent_on_real_kubelet: Any) -> None:
    agent = agent_on_real_kubelet
    node = kube_cluster.node_name
    with _pod(rest, kube_cluster, "hcs-race-late") as pod:
        name = pod["metadata"]["name"]
        _bind(rest, name, node)  # bound with no record anywhere: the kubelet admits it and calls Allocate
        wait_for(lambda: agent.core.awaiting, timeout=60, interval=0.1,
                 what="the kubelet's Allocate to wait for the assignment")
        p = rest.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
        assert p["status"].get("phase") in (None, "Pending"), p["status"]  # not failed: still admitting
        _annotate(rest, name, _record(pod, node, 1, record_key))
        p = _finished(rest, name)
        assert p["status"]["phase"] == "Succeeded", p["status"]
        logs = kube_cluster.kubectl("logs", "-n", NS, name).stdout
        assert "NVIDIA_VISIBLE_DEVICES=NVIDIA-UUID-0001" in logs
        assert not agent.core.awaiting


def test_allocate_never_uses_a_forged_record(
        rest: KubeRest, kube_cluster: Any, record_key: RecordKey, agent_on_real_kubelet: Any) -> None:
    """A tenant who writes a record signed with a key of its own gets no devices: the pod fails once the
    wait is over (UnexpectedAdmissionError), and the agent holds nothing for it."""
    agent = agent_on_real_kubelet
    node = kube_cluster.node_name
    forger = RecordKey(os.urandom(48))
    with _pod(rest, kube_cluster, "hcs-race-forged") as pod:
        name = pod["metadata"]["name"]
        _annotate(rest, name, _record(pod, node, 0, forger))
        _bind(rest, name, node)
        t0 = time.monotonic()
        p = _finished(rest, name)
        assert p["status"]["phase"] == "Failed", p["status"]
        assert p["status"].get("reason") == "UnexpectedAdmissionError", p["status"]
        assert "no pending HCS assignment" in p["status"].get("message", ""), p["status"]
        assert time.monotonic() - t0 >= agent.config.allocateWaitSeconds - 1  # it did wait for a genuine one
        assert agent.core.allocations() == []


def test_admission_reads_the_watched_record_without_asking_the_allocator(
        rest: KubeRest, kube_cluster: Any, record_key: RecordKey, agent_on_real_kubelet: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet admits pods one at a time and waits on GetPreferredAllocation and Allocate: with the
    record already in the agent's watch (the allocator writes it before the Binding), neither call asks the
    allocator (here a standby that would answer UNAVAILABLE after retries) nor lists pods. The agent's
    watch may deliver the bound pod after the kubelet does: the admission waits for it (a generous bound
    here, so a loaded machine cannot make the test take the fallback)."""
    import hcs.node.deviceplugin as deviceplugin

    monkeypatch.setattr(deviceplugin, "CACHE_CATCH_UP_S", 20.0)
    agent = agent_on_real_kubelet
    assert agent.records is not None and agent.records.wait_synced(30)
    calls: list[str] = []
    real_assignments, real_lookup = agent.core.source.assignments, agent.core.record_lookup

    def counted_assignments() -> Any:
        calls.append("GetNodeAssignments")
        return real_assignments()

    def counted_lookup() -> Any:
        calls.append("list pods")
        return real_lookup()

    agent.core.source.assignments = counted_assignments
    agent.core.record_lookup = counted_lookup
    try:
        with _pod(rest, kube_cluster, "hcs-race-cached") as pod:
            assert "NVIDIA_VISIBLE_DEVICES=NVIDIA-UUID-0001" in _run_with_record(rest, kube_cluster, pod, 1, record_key)
            assert calls == []
    finally:
        agent.core.source.assignments = real_assignments
        agent.core.record_lookup = real_lookup
