"""Allocator metrics and replica readiness over real HTTP (no cluster): /metrics, /readyz on a standby."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from hcs.allocator.extender import Extender, serve_http
from hcs.allocator.metrics import AllocatorMetrics, vram_summary
from hcs.allocator.placement import ContainerDemand, PodDemand, PodRef
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30


def state_with_two_nodes() -> Any:
    from hcs.allocator.state import AllocatorState

    state = AllocatorState()
    state.set_node(NodeInventory("big", tuple(
        DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, 312_000, "nvl0") for i in range(2))))
    state.set_node(NodeInventory("t4", (DeviceInfo("nvidia-0", "nvidia", "t4", "GPU-t4", 0, 16 * GI, 20_000),
                                        DeviceInfo("nvidia-1", "nvidia", "t4", "GPU-t4b", 1, 16 * GI, 20_000, "",
                                                   10))))  # unhealthy: not counted
    return state


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post(url: str, body: Any) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def pod(vram: str, uid: str = "u-1") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"ai.compute/vram": vram}}}]}}


def test_free_and_fragmented_vram_follow_reservations() -> None:
    state = state_with_two_nodes()
    assert vram_summary(state) == {("nvidia", "a100-80g"): (160 * GI, 0), ("nvidia", "t4"): (16 * GI, 0)}
    state.reserve(PodDemand(PodRef("u-1", "default", "p"), (ContainerDemand("c", 30 * GI, 0),)), "big")
    free, frag = vram_summary(state)[("nvidia", "a100-80g")]
    assert free == 130 * GI and frag == 50 * GI  # the partly used device's 50Gi cannot take a whole-device pod
    state.release("u-1")
    assert vram_summary(state)[("nvidia", "a100-80g")] == (160 * GI, 0)


def test_metrics_endpoint_counts_decisions_by_verb_and_outcome() -> None:
    state = state_with_two_nodes()
    metrics = AllocatorMetrics(state)
    server = serve_http(Extender(state, None, lambda: True, metrics), "127.0.0.1", 0, insecure_dev=True)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert post(f"{url}/filter", {"Pod": pod("40Gi"), "NodeNames": ["big", "t4"]})["NodeNames"] == ["big"]
        assert post(f"{url}/filter", {"Pod": pod("900Gi", "u-2"), "NodeNames": ["big", "t4"]})["NodeNames"] == []
        post(f"{url}/prioritize", {"Pod": pod("40Gi"), "NodeNames": ["big"]})
        assert post(f"{url}/bind", {"PodName": "p", "PodNamespace": "default", "PodUID": "u-1", "Node": "big"})[
            "Error"]  # no API server connection here
        code, body = get(f"{url}/metrics")
        text = body.decode()
        assert code == 200
        for line in ('hcs_allocator_decisions_total{outcome="ok",verb="filter"} 1.0',
                     'hcs_allocator_decisions_total{outcome="nofit",verb="filter"} 1.0',
                     'hcs_allocator_decisions_total{outcome="ok",verb="prioritize"} 1.0',
                     'hcs_allocator_decisions_total{outcome="error",verb="bind"} 1.0',
                     'hcs_allocator_decision_seconds_count{verb="filter"} 2.0',
                     'hcs_allocator_vram_free_bytes{model="a100-80g",vendor="nvidia"} 1.7179869184e+11',
                     'hcs_allocator_leader 1.0'):
            assert line in text, line
        assert 'hcs_allocator_reservations{state="pending"} 0.0' in text
    finally:
        server.shutdown()


def test_standby_is_not_ready_and_answers_the_scheduler_with_a_retriable_error() -> None:
    state = state_with_two_nodes()
    leader = [False]
    metrics = AllocatorMetrics(state)
    server = serve_http(Extender(state, None, lambda: leader[0], metrics), "127.0.0.1", 0,
                        insecure_dev=True)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, body = get(f"{url}/readyz")
        assert code == 503 and json.loads(body) == {"ok": False, "leader": False}
        assert get(f"{url}/healthz")[0] == 200  # alive: not restarted by the liveness probe
        out = post(f"{url}/filter", {"Pod": pod("40Gi"), "NodeNames": ["big"]})
        assert out["NodeNames"] is None and "not the leader" in out["Error"]  # scheduler requeues the pod
        assert "not the leader" in post(f"{url}/bind", {"PodName": "p", "PodNamespace": "default",
                                                         "PodUID": "u-1", "Node": "big"})["Error"]
        assert state.reservations() == []
        text = get(f"{url}/metrics")[1].decode()
        assert "hcs_allocator_leader 0.0" in text
        assert 'hcs_allocator_decisions_total{outcome="not_leader",verb="filter"} 1.0' in text
        leader[0] = True
        assert get(f"{url}/readyz")[0] == 200
    finally:
        server.shutdown()


def test_grpc_decisions_are_counted_by_method_and_outcome(tmp_path: Any) -> None:
    import grpc

    from hcs.allocator.service import AllocatorService, serve
    from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
    from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg

    state = state_with_two_nodes()
    metrics = AllocatorMetrics(state)
    address = f"unix://{tmp_path / 'a.sock'}"
    server = serve(AllocatorService(state), address, interceptors=(metrics.grpc_interceptor(),))
    try:
        with grpc.insecure_channel(address) as ch:
            stub = pbg.AllocatorStub(ch)
            req = pb.PodRequest(pod=pb.PodRef(uid="u-9", namespace="default", name="p"),
                                containers=[pb.ContainerRequest(container="c", vram_bytes=40 * GI)])
            stub.Reserve(pb.ReserveRequest(request=req), timeout=10)
            big = pb.PodRequest(pod=pb.PodRef(uid="u-10", namespace="default", name="q"),
                                containers=[pb.ContainerRequest(container="c", vram_bytes=900 * GI)])
            try:
                stub.Reserve(pb.ReserveRequest(request=big), timeout=10)
                raise AssertionError("900Gi fits nowhere")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        text = metrics.exposition().decode()
        assert 'hcs_allocator_decisions_total{outcome="ok",verb="reserve"} 1.0' in text
        assert 'hcs_allocator_decisions_total{outcome="nofit",verb="reserve"} 1.0' in text
        assert 'hcs_allocator_reservations{state="pending"} 1.0' in text
    finally:
        server.stop(0)
