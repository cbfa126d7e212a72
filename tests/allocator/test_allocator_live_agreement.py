"""The webhook and the allocator agree: the same pods go through the webhook's validation (island
capacity asked from the allocator over gRPC) and the allocator's Reserve (gRPC), on a PCIe-only
cluster and on one with NVLink islands. The island check applies only to ``high-bandwidth`` pods, the
only ones the allocator keeps in one island; a pod the webhook denies is one the allocator can never
place, and a pod the allocator places is never denied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hcs.allocator.placement import demand_from_pod
from hcs.allocator.service import AllocatorService, demand_to_proto, serve
from hcs.allocator.state import AllocatorState
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import DeviceInfo, NodeInventory
from hcs.podspec import pod_template
from hcs.webhook.capacity import AllocatorCapacity
from hcs.webhook.config import WebhookConfig
from hcs.webhook.validate import validate_template

GI = 2**30


def dev(vendor: str, model: str, i: int, gib: int, island: str = "") -> DeviceInfo:
    return DeviceInfo(f"{vendor}-{i}", vendor, model, f"{model}-{i}", i, gib * GI, 100_000, island)


PCIE_ONLY = [NodeInventory("t4-node", tuple(dev("nvidia", "t4", i, 16) for i in range(4))),
             NodeInventory("l40s-node", tuple(dev("nvidia", "l40s", i, 48) for i in range(2)))]
NVLINK = [NodeInventory("dgx", tuple(dev("nvidia", "a100-80g", i, 80, f"nvl-{i // 4}") for i in range(8)))]


@pytest.fixture(params=["pcie-only", "nvlink"])
def cluster(request: Any, tmp_path: Path) -> Iterator[tuple[str, str]]:
    state = AllocatorState()
    for inv in PCIE_ONLY if request.param == "pcie-only" else NVLINK:
        state.set_node(inv)
    address = f"unix://{tmp_path / 'alloc.sock'}"
    server = serve(AllocatorService(state), address)
    try:
        yield request.param, address
    finally:
        server.stop(0)


def pod(vram: str, high_bandwidth: bool, uid: str) -> dict[str, Any]:
    ann = {"hcs.io/topology-preference": "high-bandwidth"} if high_bandwidth else {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p-{uid}", "namespace": "default", "uid": uid, "annotations": ann},
            "spec": {"containers": [{"name": "main", "image": "busybox", "resources": {
                "requests": {"ai.compute/vram": vram}, "limits": {"ai.compute/vram": vram}}}]}}


def allocator_places(address: str, obj: dict[str, Any]) -> bool:
    demand = demand_from_pod(obj)
    assert demand is not None
    with grpc.insecure_channel(address) as ch:
        stub = pbg.AllocatorStub(ch)  # type: ignore[no-untyped-call]
        try:
            stub.Reserve(pb.ReserveRequest(request=demand_to_proto(demand)), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return False
        stub.Release(pb.ReleaseRequest(pod_uid=demand.pod.uid), timeout=10)  # an empty cluster for the next one
    return True


def webhook_admits(address: str, obj: dict[str, Any]) -> bool:
    cap = AllocatorCapacity(address)
    try:
        t = pod_template(obj, "Pod")
        assert t is not None
        return validate_template(t, WebhookConfig(allocator_address=address), cap)[1].allowed
    finally:
        cap.close()


SIZES = ("8Gi", "16Gi", "32Gi", "48Gi", "64Gi", "96Gi", "160Gi", "320Gi", "321Gi", "640Gi")


def test_the_same_pods_through_the_webhook_and_the_allocator(cluster: tuple[str, str]) -> None:
    kind, address = cluster
    seen = []
    for i, vram in enumerate(SIZES):
        for hb in (False, True):
            obj = pod(vram, hb, f"u-{i}-{int(hb)}")
            admitted, placed = webhook_admits(address, obj), allocator_places(address, obj)
            seen.append((vram, hb, admitted, placed))
            assert admitted or not placed, f"{kind}: webhook denies {vram} (hb={hb}) the allocator places"
            if hb:  # the island check is exact for the one-island requests
                assert admitted == placed, f"{kind}: {vram} high-bandwidth: webhook {admitted}, allocator {placed}"
    if kind == "pcie-only":  # the case: 32Gi on 2xT4 (no island) is placed, and admitted
        assert ("32Gi", False, True, True) in seen
        assert ("64Gi", False, True, True) in seen  # 4xT4 or 2xL40S
        assert ("64Gi", True, False, False) in seen  # no island (no device) holds 64Gi here
    else:
        assert ("320Gi", True, True, True) in seen and ("321Gi", True, False, False) in seen
        assert ("640Gi", False, True, True) in seen  # both islands of the node
