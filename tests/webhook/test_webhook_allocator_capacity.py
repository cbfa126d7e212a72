"""The island check against a real allocator: ``AllocatorCapacity`` → gRPC ``GetCapacity`` on a TCP port
→ the webhook's HTTPS AdmissionReview answer (allowed / denied / warnings per allocatorFailurePolicy)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from webhook_helpers import ServerFactory, pod, review

from hcs.allocator.inventory import DeviceInfo, NodeInventory
from hcs.allocator.service import AllocatorService
from hcs.allocator.state import AllocatorState
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.webhook.capacity import (
    AllocatorCapacity,
    CachedCapacity,
    CapacityUnavailable,
    FallbackCapacity,
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


def validate(serve: ServerFactory, cfg: WebhookConfig, capacity: IslandCapacity | None, vram: str) -> dict[str, object]:
    _, client = serve(cfg=cfg, capacity=capacity)
    return client.admit("validate", review(pod({"ai.compute/vram": vram}, name="p")))


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
    ok = client.admit("validate", review(pod({"ai.compute/vram": "320Gi"}, name="fits")))
    assert ok["allowed"] is True and not ok.get("warnings")
    denied = client.admit("validate", review(pod({"ai.compute/vram": "321Gi"}, name="big")))
    assert denied["allowed"] is False
    text = message(denied)
    # the unhealthy fifth device does not count: 320Gi, not 400Gi
    assert "larger than the largest interconnect island in the cluster (320Gi)" in text, text
    assert "Ask for less VRAM" in text


def test_allocator_summary_names_where_the_largest_island_is(allocator: Allocator) -> None:
    cap = AllocatorCapacity(allocator.address)
    try:
        s = cap.summary()
        assert (s.largest_bytes, s.node, s.island, s.nodes, s.healthy_devices) == (320 * GI, "big", "nvl-a", 2, 6)
        assert s.by_vendor == {"nvidia": 320 * GI}
        assert s.describe() == "node big island nvl-a (nvidia-0, nvidia-1, nvidia-2, nvidia-3)"
        allocator.state.set_node(NodeInventory("big", (gpu(0, 80, "nvl-a", health=0),)))
        allocator.state.remove_node("small")
        s = cap.summary()
        assert s.largest_bytes is None and s.describe() == "no healthy accelerator registered"
    finally:
        cap.close()


def test_no_healthy_device_admits_with_a_warning(serve: ServerFactory, allocator: Allocator) -> None:
    for name in ("big", "small"):
        allocator.state.remove_node(name)
    cfg = WebhookConfig(allocator_address=allocator.address, allocator_failure=FailurePolicy.CLOSED)
    resp = validate(serve, cfg, build_capacity(cfg, None), "16Gi")
    assert resp["allowed"] is True
    assert any("no accelerators are registered" in str(w) for w in resp["warnings"])  # type: ignore[attr-defined]


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
        assert cap.largest_island_bytes() == 320 * GI
        allocator.stop()
        assert cap.largest_island_bytes() == 320 * GI  # still cached: no call
        now[0] = 11
        with pytest.raises(CapacityUnavailable, match="UNAVAILABLE"):
            cap.largest_island_bytes()
        allocator.start()  # same port
        now[0] = 14
        # the channel reconnects within its capped back-off (a few seconds, not gRPC's default 2 min)
        for _ in range(50):
            try:
                assert cap.largest_island_bytes() == 320 * GI
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
