"""Island capacity from ComputeNode objects (the allocator's parser and arithmetic), its cache, and the
image-map parser. ComputeNode fixtures are built by the node agent's own builders (webhook_helpers)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from webhook_helpers import GI, ComputeNodeApi, accel, computenode

from hcs.webhook.capacity import (
    CachedCapacity,
    CapacityUnavailable,
    ClusterIslands,
    ComputeNodeCapacity,
    Island,
    StaticCapacity,
    inventory_of,
)
from hcs.webhook.kube import parse_image_map


def islands(api: ComputeNodeApi, *items: Any) -> ClusterIslands:
    api.items = list(items)
    return ComputeNodeCapacity(api.client).islands()


def test_fixtures_are_what_the_node_agent_writes() -> None:
    cn = computenode("a", [accel("nvidia", 0, 80, "nv0"), accel("nvidia", 1, 80, "nv0"), accel("nvidia", 2, 80)])
    dev = cn["spec"]["devices"][0]
    assert dev["vramBytes"] == 80 * GI and dev["topology"]["island"] == "nv0" and dev["healthy"] is True
    assert cn["spec"]["islands"] == [{"id": "nv0", "vendor": "nvidia", "linkType": "nvlink",
                                      "members": ["nvidia-0", "nvidia-1"], "minGbps": 100.0}]
    assert cn["spec"]["devices"][2]["topology"]["island"] == ""


def test_islands_sum_per_node_and_a_device_outside_any_island_is_its_own(computenode_api: ComputeNodeApi) -> None:
    node_a = computenode("a", [accel("nvidia", 0, 80, "nv0"), accel("nvidia", 1, 80, "nv0"),
                               accel("nvidia", 2, 80, "nv1"), accel("nvidia", 3, 80, "nv1"), accel("nvidia", 4, 141)])
    node_b = computenode("b", [accel("hygon", i, 64) for i in range(3)])  # PCIe only: 64Gi singletons
    only_b = islands(computenode_api, node_b)
    assert only_b.largest == Island(64 * GI, "hygon", "b", "", ("hygon-0",))
    assert only_b.largest.describe() == "64Gi: device hygon-0 on node b, outside any interconnect island"
    both = islands(computenode_api, node_a, node_b)
    # two equal 160Gi islands: the first in name order; bigger than the 141Gi singleton
    assert both.largest == Island(160 * GI, "nvidia", "a", "nv0", ("nvidia-0", "nvidia-1"))
    assert both.largest.describe() == "160Gi: island nv0 on node a, 2 devices"
    assert (both.nodes, both.devices, both.healthy_devices) == (2, 8, 8)


def test_largest_island_per_vendor(computenode_api: ComputeNodeApi) -> None:
    gpus = computenode("gpu", [accel("nvidia", i, 80, "nvl") for i in range(4)])
    npus = computenode("npu", [accel("ascend", i, 64, "hccs-0") for i in range(2)])
    cl = islands(computenode_api, gpus, npus)
    assert cl.knows_vendors and cl.by_vendor is not None
    assert {v: i.vram_bytes for v, i in cl.by_vendor.items()} == {"nvidia": 320 * GI, "ascend": 128 * GI}
    assert cl.largest_among(None) == cl.largest and cl.largest is not None and cl.largest.vendor == "nvidia"
    assert cl.largest_among(["ascend"]) == Island(128 * GI, "ascend", "npu", "hccs-0", ("ascend-0", "ascend-1"))
    assert cl.largest_among(["ascend", "hygon"]) == cl.by_vendor["ascend"]
    assert cl.largest_among(["hygon", "cambricon"]) is None


def test_unhealthy_devices_do_not_count(computenode_api: ComputeNodeApi) -> None:
    node = computenode("a", [accel("nvidia", 0, 80, "nv0"), accel("nvidia", 1, 80, "nv0", health=10),
                             accel("nvidia", 2, 80, "nv0", health=60)])  # degraded (60) still counts
    cl = islands(computenode_api, node)
    assert cl.largest == Island(160 * GI, "nvidia", "a", "nv0", ("nvidia-0", "nvidia-2"))
    assert (cl.devices, cl.healthy_devices) == (3, 2)
    assert islands(computenode_api, computenode("a", [accel("nvidia", 0, 80, health=0)])).largest is None


def test_nothing_registered(computenode_api: ComputeNodeApi) -> None:
    assert islands(computenode_api) == ClusterIslands(None, {})
    assert islands(computenode_api, computenode("empty", [])).largest is None
    computenode_api.status = 404  # CRD not installed
    assert ComputeNodeCapacity(computenode_api.client).islands().largest is None


def test_api_errors_are_unavailable(computenode_api: ComputeNodeApi) -> None:
    computenode_api.status = 403
    with pytest.raises(CapacityUnavailable, match=r"listing ComputeNodes failed \(403\)"):
        ComputeNodeCapacity(computenode_api.client).islands()


def test_a_malformed_object_is_skipped_and_logged_once(computenode_api: ComputeNodeApi,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    good = computenode("good", [accel("nvidia", 0, 80, "nv0"), accel("nvidia", 1, 80, "nv0")])
    invented = computenode("invented", [accel("nvidia", 0, 80)])
    dev = invented["spec"]["devices"][0]
    dev["vramTotalBytes"] = dev.pop("vramBytes")  # a field name the node agent does not write
    not_a_device = computenode("junk", [accel("nvidia", 0, 80)])
    not_a_device["spec"]["devices"].append("nvidia-1")
    no_spec = {"apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNode", "metadata": {"name": "nospec"}}
    bad_value = computenode("badvalue", [accel("nvidia", 0, 80)])
    bad_value["spec"]["devices"][0]["vramBytes"] = "lots"
    api = computenode_api
    api.items = [good, invented, not_a_device, no_spec, bad_value, "garbage"]
    cap = ComputeNodeCapacity(api.client)
    with caplog.at_level(logging.WARNING, logger="hcs.webhook.capacity"):
        first = cap.islands()
        second = cap.islands()
    assert first == second and first.nodes == 1
    assert first.largest == Island(160 * GI, "nvidia", "good", "nv0", ("nvidia-0", "nvidia-1"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5, lines  # once per broken object, not once per call
    assert any("ComputeNode invented spec.devices[0]: missing field 'vramBytes'" in line for line in lines), lines
    assert any("junk" in line for line in lines) and any("nospec" in line for line in lines)
    assert any("badvalue" in line and "malformed" in line for line in lines)
    assert any("#5" in line for line in lines)
    # fixed, then broken again: logged again
    caplog.clear()
    api.items = [good]
    cap.islands()
    api.items = [good, invented]
    with caplog.at_level(logging.WARNING, logger="hcs.webhook.capacity"):
        cap.islands()
    assert len(caplog.records) == 1 and "invented" in caplog.records[0].getMessage()


def test_inventory_of_reports_the_rejected_names() -> None:
    nodes, broken = inventory_of([computenode("ok", [accel("ascend", 0, 64)]), {"metadata": {"name": "x"}}],
                                 logged={"x"})
    assert [n.name for n in nodes] == ["ok"] and broken == {"x"}


def test_static_capacity_knows_only_the_size() -> None:
    cl = StaticCapacity(640 * GI).islands()
    assert cl.largest == Island(640 * GI) and not cl.knows_vendors
    assert cl.largest_among(["ascend"]) == cl.largest  # no vendor knowledge: the one number
    assert cl.largest.describe() == "640Gi"
    assert StaticCapacity(None).islands().largest is None


class Flaky:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def islands(self) -> ClusterIslands:
        self.calls += 1
        if self.fail:
            raise CapacityUnavailable("down")
        return ClusterIslands.of_size(self.calls * GI)


def test_cache_ttl_and_error_caching() -> None:
    now = [0.0]
    inner = Flaky()
    cache = CachedCapacity(inner, ttl_s=10, error_ttl_s=2, clock=lambda: now[0])
    assert cache.islands().largest == Island(GI)
    now[0] = 9.9
    assert cache.islands().largest == Island(GI) and inner.calls == 1
    now[0] = 10.0
    inner.fail = True
    with pytest.raises(CapacityUnavailable):
        cache.islands()
    now[0] = 11.0
    with pytest.raises(CapacityUnavailable):  # remembered, not re-asked
        cache.islands()
    assert inner.calls == 2
    inner.fail = False
    now[0] = 12.5
    assert cache.islands().largest == Island(3 * GI)


def test_image_map_parser_skips_bad_entries(caplog: pytest.LogCaptureFixture) -> None:
    text = """
pytorch/pytorch:2.4-cuda: {ascend: ascendhub/torch_npu:2.4, amd: rocm/pytorch}
bad-entry: just-a-string
"""
    assert parse_image_map(text, source="cm") == {"pytorch/pytorch:2.4-cuda": {"ascend": "ascendhub/torch_npu:2.4"}}
    assert "unknown vendor(s) amd" in caplog.text and "bad-entry" in caplog.text
    assert parse_image_map(": : :", source="cm") == {}
    assert parse_image_map("- a list", source="cm") == {}
