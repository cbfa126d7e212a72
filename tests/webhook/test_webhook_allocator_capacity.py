"""The island check against a real allocator: ``AllocatorCapacity`` → gRPC ``GetCapacity`` on a TCP port
→ the webhook's HTTPS AdmissionReview answer (allowed / denied / warnings per allocatorFailurePolicy),
including ``hcs.io/vendor`` pins and the ComputeNode fallback giving the same answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from webhook_helpers import ComputeNodeApi, ServerFactory, accel, computenode, hb_pod, review

from hcs.allocator.service import AllocatorService
from hcs.allocator.state import AllocatorState
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import DeviceInfo, NodeInventory, parse_computenode
from hcs.webhook.capacity import (
    AllocatorCapacity,
    CachedCapacity,
    CapacityUnavailable,
    ComputeNodeCapacity,
    FallbackCapacity,
    Island,
    IslandCapacity,
    StaticCapacity,
)
from hcs.webhook.cli import build_capacity
from hcs.webhook.config import FailurePolicy, WebhookConfig

GI = 2**30


class Allocator:
    """An in-process allocator gRPC server on 127.0.0.1 (a real port), restartable on the same port."""

    def __init__(self) -> None:
        self.state = AllocatorState()
        self.leader = True
        self.port = 0
        self._server: grpc.Server | None = None

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        service = AllocatorService(self.state, is_leader=lambda: self.leader)
        pbg.add_AllocatorServicer_to_server(service, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert port, f"cannot listen on 127.0.0.1:{self.port}"
        self.port = port
        server.start()
        self._server = server
        with grpc.insecure_channel(self.address) as ch:  # listening before a test's fail-fast call (one CI run
            grpc.channel_ready_future(ch).result(timeout=30)  # under load was refused right after start)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(None).wait()
            self._server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def gpu(i: int, gib: int, island: str = "", health: int = 100) -> DeviceInfo:
    return DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, gib * GI, 312_000, island, health)


@pytest.fixture()
def allocator() -> Iterator[Allocator]:
    a = Allocator()
    # big: 4×80Gi NVLink island (320Gi) + one unhealthy 80Gi in it; small: two 80Gi PCIe devices
    a.state.set_node(NodeInventory("big", (gpu(0, 80, "nvl-a"), gpu(1, 80, "nvl-a"), gpu(2, 80, "nvl-a"),
                                           gpu(3, 80, "nvl-a"), gpu(4, 80, "nvl-a", health=0))))
    a.state.set_node(NodeInventory("small", (gpu(0, 80), gpu(1, 80))))
    a.start()
    try:
        yield a
    finally:
        a.stop()


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def validate(serve: ServerFactory, cfg: WebhookConfig, capacity: IslandCapacity | None, vram: str,
             vendor: str | None = None) -> dict[str, object]:
    _, client = serve(cfg=cfg, capacity=capacity)
    annotations = {"hcs.io/vendor": vendor} if vendor is not None else None
    return client.admit("validate", review(hb_pod({"ai.compute/vram": vram}, annotations=annotations, name="p")))


def largest_bytes(cap: IslandCapacity) -> int | None:
    largest = cap.islands().largest
    return largest.vram_bytes if largest is not None else None


def message(resp: dict[str, object]) -> str:
    status = resp.get("status")
    return str(status.get("message", "")) if isinstance(status, dict) else ""


def test_too_large_request_is_denied_with_the_largest_island(serve: ServerFactory, allocator: Allocator,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    cfg = WebhookConfig(allocator_address=allocator.address)
    capacity = build_capacity(cfg, None)
    assert isinstance(capacity, CachedCapacity)
    assert "no island-capacity call" not in caplog.text
    _, client = serve(cfg=cfg, capacity=capacity)
    ok = client.admit("validate", review(hb_pod({"ai.compute/vram": "320Gi"}, name="fits")))
    assert ok["allowed"] is True and not ok.get("warnings")
    denied = client.admit("validate", review(hb_pod({"ai.compute/vram": "321Gi"}, name="big")))
    assert denied["allowed"] is False
    text = message(denied)
    # the unhealthy fifth device does not count: 320Gi, not 400Gi
    assert ("larger than the largest interconnect island in the cluster (320Gi: island nvl-a on node big, "
            "4 devices); no node can ever run it") in text, text
    assert "Ask for less VRAM" in text


def test_allocator_answer_names_where_the_largest_island_is(allocator: Allocator) -> None:
    cap = AllocatorCapacity(allocator.address)
    try:
        cl = cap.islands()
        assert cl.largest == Island(320 * GI, "nvidia", "big", "nvl-a", tuple(f"nvidia-{i}" for i in range(4)))
        assert (cl.nodes, cl.devices, cl.healthy_devices) == (2, 7, 6)
        assert cl.by_vendor == {"nvidia": cl.largest}
        assert cl.largest.describe() == "320Gi: island nvl-a on node big, 4 devices"
        allocator.state.set_node(NodeInventory("big", (gpu(0, 80, "nvl-a", health=0),)))
        allocator.state.remove_node("small")
        cl = cap.islands()
        assert cl.largest is None and cl.by_vendor == {}
    finally:
        cap.close()


def test_no_healthy_device_admits_with_a_warning(serve: ServerFactory, allocator: Allocator) -> None:
    for name in ("big", "small"):
        allocator.state.remove_node(name)
    cfg = WebhookConfig(allocator_address=allocator.address, allocator_failure=FailurePolicy.CLOSED)
    resp = validate(serve, cfg, build_capacity(cfg, None), "16Gi")
    assert resp["allowed"] is True
    assert any("no accelerators are registered" in str(w) for w in resp["warnings"])  # type: ignore[attr-defined]
    allocator.state.set_node(NodeInventory("sick", (gpu(0, 80, "nvl-a", health=0), gpu(1, 80, "nvl-a", health=0))))
    resp = validate(serve, cfg, build_capacity(cfg, None), "16Gi")
    assert resp["allowed"] is True
    assert any("none of the 2 accelerators registered in the cluster is healthy" in str(w)
               for w in resp["warnings"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", [FailurePolicy.OPEN, FailurePolicy.CLOSED])
def test_allocator_down_follows_the_failure_policy(serve: ServerFactory, policy: FailurePolicy) -> None:
    address = f"127.0.0.1:{closed_port()}"
    cfg = WebhookConfig(allocator_address=address, allocator_failure=policy)
    resp = validate(serve, cfg, build_capacity(cfg, None), "16Gi")
    if policy is FailurePolicy.OPEN:
        assert resp["allowed"] is True
        warnings = [str(w) for w in resp["warnings"]]  # type: ignore[attr-defined]
        assert any(f"allocator {address}: UNAVAILABLE" in w and "allocatorFailurePolicy=open" in w
                   for w in warnings), warnings
    else:
        assert resp["allowed"] is False
        text = message(resp)
        assert f"allocator {address}: UNAVAILABLE" in text and "retry when the HCS allocator is reachable" in text


def test_standby_allocator_counts_as_unavailable(serve: ServerFactory, allocator: Allocator) -> None:
    allocator.leader = False
    cfg = WebhookConfig(allocator_address=allocator.address, allocator_failure=FailurePolicy.CLOSED)
    resp = validate(serve, cfg, build_capacity(cfg, None), "16Gi")
    assert resp["allowed"] is False and "not the leader" in message(resp)


def test_outage_and_recovery_through_the_cache(allocator: Allocator) -> None:
    now = [0.0]
    inner = AllocatorCapacity(allocator.address)
    cap = CachedCapacity(inner, ttl_s=10, error_ttl_s=2, clock=lambda: now[0])
    try:
        assert largest_bytes(cap) == 320 * GI
        allocator.stop()
        assert largest_bytes(cap) == 320 * GI  # still cached: no call
        now[0] = 11
        with pytest.raises(CapacityUnavailable, match="UNAVAILABLE"):
            cap.islands()
        allocator.start()  # same port
        now[0] = 14
        # the channel reconnects within its capped back-off (a few seconds, not gRPC's default 2 min)
        for _ in range(50):
            try:
                assert largest_bytes(cap) == 320 * GI
                break
            except CapacityUnavailable:
                now[0] += 3
                time.sleep(0.1)
        else:
            pytest.fail("AllocatorCapacity did not recover after the allocator came back")
    finally:
        inner.close()


def test_fallback_source_answers_when_the_allocator_is_down(serve: ServerFactory) -> None:
    down = AllocatorCapacity(f"127.0.0.1:{closed_port()}")
    try:
        cfg = WebhookConfig(allocator_failure=FailurePolicy.CLOSED)
        capacity = FallbackCapacity(down, StaticCapacity(80 * GI), "ComputeNode objects")
        resp = validate(serve, cfg, capacity, "96Gi")
        assert resp["allowed"] is False and "(80Gi)" in message(resp)
    finally:
        down.close()


def test_build_capacity_with_api_access_falls_back_then_applies_the_policy(serve: ServerFactory) -> None:
    """allocatorAddress + API access: allocator down and API server down → both reasons, policy applies."""
    from kubernetes import client as k8s

    conf = k8s.Configuration()
    conf.host = f"http://127.0.0.1:{closed_port()}"
    api = k8s.ApiClient(conf)
    address = f"127.0.0.1:{closed_port()}"
    cfg = WebhookConfig(allocator_address=address, allocator_failure=FailurePolicy.CLOSED)
    try:
        resp = validate(serve, cfg, build_capacity(cfg, api), "16Gi")
    finally:
        api.close()
    text = message(resp)
    assert resp["allowed"] is False
    assert f"allocator {address}: UNAVAILABLE" in text and "ComputeNode objects failed too" in text, text


# --------------------------------------------------------------------------- vendor pins, one island reader

#: node gpu: 4×80Gi NVLink (320Gi); node npu: 2×64Gi HCCS (128Gi) + a dead third device; node dcu: one
#: Hygon device, unhealthy. As the node agent writes them; the allocator reads them with its own parser.
MIXED = [
    computenode("gpu", [accel("nvidia", i, 80, "nvl-a") for i in range(4)]),
    computenode("npu", [accel("ascend", 0, 64, "hccs-0"), accel("ascend", 1, 64, "hccs-0"),
                        accel("ascend", 2, 64, "hccs-0", health=0)]),
    computenode("dcu", [accel("hygon", 0, 64, health=20)]),
]


@pytest.fixture()
def mixed() -> Iterator[Allocator]:
    a = Allocator()
    for obj in MIXED:
        a.state.set_node(parse_computenode(obj))
    a.start()
    try:
        yield a
    finally:
        a.stop()


def test_vendor_pin_is_denied_when_its_islands_are_too_small(serve: ServerFactory, mixed: Allocator) -> None:
    """A 200Gi ascend pod would fit the 320Gi NVIDIA island, but it may only run on Ascend (128Gi)."""
    cfg = WebhookConfig(allocator_address=mixed.address)
    capacity = build_capacity(cfg, None)
    assert validate(serve, cfg, capacity, "200Gi")["allowed"] is True  # unpinned: the NVIDIA island holds it
    resp = validate(serve, cfg, capacity, "200Gi", vendor="ascend")
    assert resp["allowed"] is False
    text = message(resp)
    assert ("ai.compute/vram 200Gi is larger than the largest ascend interconnect island in the cluster "
            "(128Gi: island hccs-0 on node npu, 2 devices); no node can ever run it") in text, text
    assert "Ask for less VRAM" in text
    assert "allow nvidia in metadata.annotations[hcs.io/vendor]: its largest island holds 320Gi " \
           "(island nvl-a on node gpu, 4 devices)" in text, text
    assert validate(serve, cfg, capacity, "128Gi", vendor="ascend")["allowed"] is True


def test_vendor_exclusion_is_checked_against_the_other_vendors(serve: ServerFactory, mixed: Allocator) -> None:
    cfg = WebhookConfig(allocator_address=mixed.address)
    capacity = build_capacity(cfg, None)
    resp = validate(serve, cfg, capacity, "200Gi", vendor="!nvidia")
    assert resp["allowed"] is False
    assert ("larger than the largest ascend, hygon or cambricon interconnect island in the cluster "
            "(128Gi: island hccs-0 on node npu, 2 devices)") in message(resp), message(resp)
    assert validate(serve, cfg, capacity, "300Gi", vendor="!ascend")["allowed"] is True


def test_vendor_without_a_healthy_device_is_admitted_with_a_warning(serve: ServerFactory, mixed: Allocator) -> None:
    cfg = WebhookConfig(allocator_address=mixed.address, allocator_failure=FailurePolicy.CLOSED)
    resp = validate(serve, cfg, build_capacity(cfg, None), "16Gi", vendor="hygon")  # its only device is dead
    assert resp["allowed"] is True
    warnings = [str(w) for w in resp["warnings"]]  # type: ignore[attr-defined]
    assert ("metadata.annotations[hcs.io/vendor]: no healthy hygon accelerator is registered in the cluster "
            "yet: VRAM was not checked") in warnings[0], warnings


def test_computenode_fallback_gives_the_allocators_answer(mixed: Allocator, computenode_api: ComputeNodeApi) -> None:
    computenode_api.items = MIXED
    from_api = ComputeNodeCapacity(computenode_api.client)
    from_allocator = AllocatorCapacity(mixed.address)
    try:
        answer = from_allocator.islands()
        assert from_api.islands() == answer
        assert answer.largest == Island(320 * GI, "nvidia", "gpu", "nvl-a", tuple(f"nvidia-{i}" for i in range(4)))
        assert answer.by_vendor is not None and sorted(answer.by_vendor) == ["ascend", "nvidia"]
        assert (answer.nodes, answer.devices, answer.healthy_devices) == (3, 8, 6)
    finally:
        from_allocator.close()


def test_vendor_pin_through_the_computenode_fallback(serve: ServerFactory, computenode_api: ComputeNodeApi,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Allocator down, API access: ComputeNode objects answer, a malformed one among them is skipped."""
    broken = computenode("broken", [accel("nvidia", 0, 80)])
    broken["spec"]["devices"][0]["vramTotalBytes"] = broken["spec"]["devices"][0].pop("vramBytes")
    computenode_api.items = [broken, *MIXED]
    cfg = WebhookConfig(allocator_address=f"127.0.0.1:{closed_port()}", allocator_failure=FailurePolicy.CLOSED)
    capacity = build_capacity(cfg, computenode_api.client)
    resp = validate(serve, cfg, capacity, "200Gi", vendor="ascend")
    assert resp["allowed"] is False
    assert "the largest ascend interconnect island in the cluster (128Gi: island hccs-0 on node npu" in message(resp)
    assert "ComputeNode broken spec.devices[0]: missing field 'vramBytes'" in caplog.text
