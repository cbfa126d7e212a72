"""Assignment sources that talk to other parts of the system: the allocator's gRPC API and the
API server's pod list (input of the local best-fit policy)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc

from hcs.allocator_client import channel as allocator_channel
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as al
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as al_grpc
from hcs.devices.model import Vendor
from hcs.kube import KubeError, KubeRest
from hcs.node.assignments import (
    Assignment,
    ContainerAssignment,
    DeviceGrant,
    PodDemand,
    PodRef,
    demand_from_pod,
    dumps,
)
from hcs.records import RecordKey

log = logging.getLogger(__name__)


def assignment_from_proto(a: al.Assignment) -> Assignment:
    """``hcs.allocator.v1.Assignment`` → the agent's model (direct field access: json_format is slow)."""
    try:
        containers = tuple(
            ContainerAssignment(c.container, tuple(
                DeviceGrant(Vendor(g.vendor), g.index, g.uuid, g.vram_bytes, g.tflops_milli, g.model, g.island)
                for g in c.devices))
            for c in a.containers)
    except ValueError as exc:
        raise ValueError(f"pod {a.pod.namespace}/{a.pod.name}: {exc}") from exc
    return Assignment(PodRef(a.pod.uid, a.pod.namespace, a.pod.name, a.pod.creation_time_unix_ms), containers,
                      a.state == al.ASSIGNMENT_STATE_CONFIRMED)


class AllocatorAssignmentSource:
    """``hcs.allocator.v1.Allocator``: GetNodeAssignments / Confirm / Release for this node."""

    def __init__(self, address: str, node: str, timeout_s: float = 1.0, attempts: int = 3, *,
                 token_file: str = "", ca_file: str = "", server_name: str = "") -> None:
        """``token_file``/``ca_file``: the caller identity and the allocator's CA (see
        :func:`hcs.allocator.auth.channel`); both empty only against an ``--insecure-dev`` allocator."""
        self.address = address
        self.node = node
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._channel = allocator_channel(address, token_file=token_file, ca_file=ca_file, server_name=server_name,
                                          options=[("grpc.max_reconnect_backoff_ms", 1000)])
        self._stub = al_grpc.AllocatorStub(self._channel)  # type: ignore[no-untyped-call]

    def assignments(self) -> Sequence[Assignment]:
        last = ""
        for attempt in range(self.attempts):
            try:
                resp = self._stub.GetNodeAssignments(al.GetNodeAssignmentsRequest(node=self.node),
                                                     timeout=self.timeout_s, wait_for_ready=attempt > 0)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                time.sleep(0.2 * (attempt + 1))
                continue
            out = []
            for a in resp.assignments:
                try:
                    out.append(assignment_from_proto(a))
                except ValueError as exc:
                    log.warning("allocator at %s sent a bad assignment (%s); skipping it", self.address, exc)
            return out
        log.error("allocator at %s unreachable for node %s (%s); no assignment can be matched now",
                  self.address, self.node, last)
        return []

    def confirm(self, pod_uid: str) -> None:
        self._stub.Confirm(al.ConfirmRequest(pod_uid=pod_uid, node=self.node), timeout=5, wait_for_ready=True)

    def release(self, pod_uid: str) -> None:
        self._stub.Release(al.ReleaseRequest(pod_uid=pod_uid), timeout=5, wait_for_ready=True)

    def close(self) -> None:
        self._channel.close()


class KubePodLister:
    """Pods bound to this node that ask for ``ai.compute/vram`` (fresh list on every call: the pod
    being admitted must be in it, so no cache). Every request carries the ``spec.nodeName`` field
    selector: the agent never reads other nodes' pods. Recorded assignments are checked with
    ``records`` (see :mod:`hcs.records`) before the local policy adopts them."""

    def __init__(self, rest: KubeRest, node: str, records: RecordKey | None = None) -> None:
        if not node:
            raise ValueError("KubePodLister needs the node name (it lists only that node's pods)")
        self.rest = rest
        self.node = node
        self.records = records if records is not None else RecordKey.from_env()

    def __call__(self) -> Sequence[PodDemand]:
        try:
            data: dict[str, Any] = self.rest.request("GET", "/api/v1/pods", query=node_pods_query(self.node))
        except KubeError as exc:
            raise RuntimeError(f"listing pods on node {self.node}: {exc}") from exc
        out = []
        for pod in data.get("items") or []:
            if ((pod.get("spec") or {}).get("nodeName") or "") != self.node:
                continue  # never act on another node's pod, whatever the server returned
            d = demand_from_pod(pod, self.records, self.node)
            if d is not None:
                out.append(d)
        return out

    def recorded(self) -> Sequence[Assignment]:
        """The assignments recorded on this node's pods that pass the record checks (signed with the
        record key, bound to the pod's uid/namespace/name and this node): the allocator writes the
        record before it binds the pod, so a pod the kubelet admits always has its record here."""
        return [d.assigned for d in self() if d.assigned is not None]

    def compute_policy(self, pod_uid: str) -> str:
        """The ``hcs.io/compute-policy`` of this node's pod ``pod_uid`` ("" when it has none, asks for
        no VRAM, or is not on this node): the allocator's assignments carry no policy, the pod does."""
        for d in self():
            if d.pod.uid == pod_uid:
                return d.pod.compute_policy
        return ""

    def annotate(self, a: Assignment) -> None:
        """Write the (local policy's) assignment onto the pod, signed, as the allocator does."""
        text = dumps(a, node=self.node)
        body = {"metadata": {"annotations": self.records.annotations(text)}}
        self.rest.request("PATCH", f"/api/v1/namespaces/{a.pod.namespace}/pods/{a.pod.name}", body=body,
                          content_type="application/merge-patch+json")


def node_pods_query(node: str) -> dict[str, str]:
    """The query of every pod list/watch the node agent makes: only pods bound to ``node``."""
    return {"fieldSelector": f"spec.nodeName={node}"}
