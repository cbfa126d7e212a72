"""The pod's ``hcs.io/compute-policy`` on the allocator path (issue 19).

The allocator's assignments (``GetNodeAssignments``) carry the devices, VRAM and TFLOPS, not the
pod's compute policy, so the agent used to write the node's default into the share file. Here the real
kubelet of the local cluster admits a pod annotated ``hcs.io/compute-policy: burst`` that asks for
``ai.compute/tflops-fp16``; a real allocator gRPC server (leader) holds its reservation and is the
agent's assignment source; the agent reads the policy from the pod, and the container prints the share
file it was given."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_helpers import GiB, agent_on_allocator, device  # noqa: E402
from test_node_allocate_race import _bind, _finished  # noqa: E402

from hcs.devices.model import Vendor  # noqa: E402
from hcs.kube import KubeError, KubeRest  # noqa: E402
from hcs.records import RecordKey  # noqa: E402

pytestmark = pytest.mark.cluster

RESOURCE = "test.hcs.io/policy-slot"
NS = "default"


@pytest.fixture
def leader_and_agent(rest: KubeRest, kube_cluster: Any, record_key: RecordKey) -> Iterator[Any]:
    """A leader allocator (its state is the test's to fill) and a node agent on the real kubelet whose
    assignment source it is."""
    from hcs.allocator.state import AllocatorState

    state = AllocatorState()
    with agent_on_allocator(rest, kube_cluster, state, leader=True, resource=RESOURCE, tag="policy",
                            devices=[device(Vendor.NVIDIA, 0, 80)], compute_policy="hard") as agent:
        assert agent.core.policy_lookup is not None
        yield state, agent


def test_allocator_assignment_gets_the_pods_compute_policy(rest: KubeRest, kube_cluster: Any,
                                                           leader_and_agent: Any) -> None:
    from hcs.allocator.placement import Grant, PodRef
    from hcs.allocator.state import Reservation

    state, agent = leader_and_agent
    node = kube_cluster.node_name
    name = f"hcs-policy-{uuid.uuid4().hex[:6]}"
    limits = {"ai.compute/vram": "8Gi", "ai.compute/tflops-fp16": "78", RESOURCE: "1"}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "annotations": {"hcs.io/compute-policy": "burst"}},
           "spec": {"schedulerName": "hcs-test-nobody", "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": kube_cluster.busybox_image, "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", "tr '\\n' ';' < $HCS_SHM_DIR/compute"],
                                    "resources": {"requests": limits, "limits": limits}}]}}
    created = rest.request("POST", f"/api/v1/namespaces/{NS}/pods", body=pod)
    try:
        m = created["metadata"]
        # the allocator's reservation (what GetNodeAssignments answers): 8 GiB + 78 TFLOPS on nvidia-0,
        # and - as every allocator assignment - no compute policy
        state.restore([Reservation(PodRef(m["uid"], NS, name), node, (("main", (
            Grant("nvidia-0", "NVIDIA-UUID-0000", 0, "nvidia", "a100-80g", "", 8 * GiB, 78_000),)),))])
        assert state.reservations(node)
        _bind(rest, name, node)
        p = _finished(rest, name)
        assert p["status"]["phase"] == "Succeeded", p["status"]
        share = kube_cluster.kubectl("logs", "-n", NS, name).stdout.split(";")
        assert "policy burst" in share, share  # the pod's, not the node's default (hard)
        assert "0 0.250000 78.0000 312.0000 NVIDIA-UUID-0000" in share, share
        assert [a.pod.name for a in agent.core.allocations()] == [name]
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}", query={"gracePeriodSeconds": "0"})
