"""Scheduler-extender wire format over real HTTP (filter / prioritize; bind needs the cluster)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from hcs.allocator.extender import SCHEDULER_CONFIG, Extender, serve_http
from hcs.allocator.state import AllocatorState
from hcs.cli import main
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30


def a100s(n: int) -> tuple[DeviceInfo, ...]:
    return tuple(DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, 312_000, "nvl0")
                 for i in range(n))


@pytest.fixture()
def url() -> Iterator[str]:
    state = AllocatorState()
    state.set_node(NodeInventory("big", a100s(2)))
    state.set_node(NodeInventory("small", (DeviceInfo("nvidia-0", "nvidia", "t4", "GPU-t4", 0, 16 * GI, 20_000),)))
    server = serve_http(Extender(state), "127.0.0.1", 0, insecure_dev=True)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def post(url: str, body: Any) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def pod(vram: str, **ann: str) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "default", "uid": "u-1", "annotations": ann},
            "spec": {"schedulerName": "hcs-scheduler",
                     "containers": [{"name": "c", "resources": {"requests": {"ai.compute/vram": vram}}}]}}


def test_filter_keeps_fitting_nodes_and_explains_the_rest(url: str) -> None:
    out = post(f"{url}/filter", {"Pod": pod("40Gi"), "NodeNames": ["big", "small", "ghost"]})
    assert out["NodeNames"] == ["big"]
    assert out["FailedNodes"]["small"] == ("node too small: needs 3 whole t4 devices (16.0Gi each) for 40.0Gi VRAM, "
                                           "the node has 1")
    assert "no ComputeNode" in out["FailedNodes"]["ghost"]
    assert out["Error"] == ""


def test_filter_accepts_full_node_objects_and_lowercase_keys(url: str) -> None:
    nodes = {"items": [{"metadata": {"name": "big"}}, {"metadata": {"name": "small"}}]}
    out = post(f"{url}/filter", {"pod": pod("8Gi"), "nodes": nodes})
    assert sorted(out["NodeNames"]) == ["big", "small"]


def test_malformed_annotation_fails_every_node_unresolvably(url: str) -> None:
    out = post(f"{url}/filter", {"Pod": pod("8Gi", **{"hcs.io/scheduling-policy": "fastest"}),
                                 "NodeNames": ["big", "small"]})
    assert out["NodeNames"] == []
    assert "use 'binpack' or 'spread'" in out["FailedAndUnresolvableNodes"]["big"]


def test_pods_without_accelerator_requests_pass_through(url: str) -> None:
    p = {"metadata": {"name": "x", "uid": "u"}, "spec": {"containers": [{"name": "c"}]}}
    assert post(f"{url}/filter", {"Pod": p, "NodeNames": ["a", "b"]})["NodeNames"] == ["a", "b"]


def test_prioritize_scores_are_0_to_10(url: str) -> None:
    out = post(f"{url}/prioritize", {"Pod": pod("8Gi"), "NodeNames": ["big", "small"]})
    assert {h["Host"] for h in out} == {"big", "small"}
    assert all(0 <= h["Score"] <= 10 for h in out)
    assert max(h["Score"] for h in out) == 10


def test_bad_body_and_unknown_verb(url: str) -> None:
    req = urllib.request.Request(f"{url}/filter", data=b"[1,", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as err2:
        post(f"{url}/preempt", {})
    assert err2.value.code == 404


def test_bind_without_api_server_reports_an_error(url: str) -> None:
    out = post(f"{url}/bind", {"PodName": "p", "PodNamespace": "default", "PodUID": "u-1", "Node": "big"})
    assert "no API server" in out["Error"]


def test_scheduler_config_declares_managed_resources(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = yaml.safe_load(SCHEDULER_CONFIG.read_text())
    assert cfg["kind"] == "KubeSchedulerConfiguration" and cfg["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert cfg["profiles"][0]["schedulerName"] == "hcs-scheduler"
    ext = cfg["extenders"][0]
    assert ext["nodeCacheCapable"] is True and ext["bindVerb"] == "bind"
    assert {(m["name"], m["ignoredByScheduler"]) for m in ext["managedResources"]} == {
        ("ai.compute/vram", True), ("ai.compute/tflops-fp16", True)}
    assert main(["allocator", "--print-scheduler-config", "--extender-url", "http://127.0.0.1:9999"]) == 0
    assert 'urlPrefix: "http://127.0.0.1:9999"' in capsys.readouterr().out


def test_filter_drops_a_reservation_left_by_an_interrupted_bind() -> None:
    from hcs.allocator.placement import demand_from_pod

    state = AllocatorState()
    state.set_node(NodeInventory("big", a100s(1)))
    p = pod("80Gi")
    demand = demand_from_pod(p)
    assert demand is not None
    state.reserve(demand, "big")  # reserved + annotated, then the allocator died before the Binding
    ext = Extender(state)
    out = ext.filter({"Pod": p, "NodeNames": ["big"]})  # the scheduler retries the still-unbound pod
    assert out["NodeNames"] == ["big"]
    assert state.reservation("u-1") is None and state.usage("big") == {}
