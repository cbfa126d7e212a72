"""Island capacity from ComputeNode objects, its cache, and the image-map parser."""

from __future__ import annotations

from typing import Any

import pytest

from hcs.webhook.capacity import CachedCapacity, CapacityUnavailable, largest_island_of
from hcs.webhook.kube import parse_image_map

GI = 2**30


def computenode(devices: list[dict[str, Any]], islands: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNode",
            "spec": {"nodeName": "n", "vendor": "nvidia", "devices": devices, "islands": islands or []}}


def dev(i: int, gib: int, island: str = "", **extra: Any) -> dict[str, Any]:
    topo: dict[str, Any] = {"busId": f"0000:{i:02x}:00.0", "numaNode": 0}
    if island:
        topo["island"] = island
    return {"name": f"nvidia-{i}", "vendor": "nvidia", "model": "a100-80g", "uuid": f"GPU-{i}", "index": i,
            "vramBytes": gib * GI, "healthScore": 100, "topology": topo, **extra}


def test_islands_sum_and_singletons() -> None:
    node_a = computenode([dev(0, 80, "nv0"), dev(1, 80, "nv0"), dev(2, 80, "nv1"), dev(3, 80)])
    node_b = computenode([dev(0, 64), dev(1, 64), dev(2, 64)])  # PCIe only: 64Gi singletons
    assert largest_island_of([node_b]) == 64 * GI
    assert largest_island_of([node_a, node_b]) == 160 * GI


def test_island_membership_from_the_islands_list() -> None:
    node = computenode([dev(0, 32), dev(1, 32), dev(2, 32)],
                       [{"id": "hccs-0", "linkType": "hccs", "members": ["nvidia-0", "nvidia-1", "nvidia-2"]}])
    assert largest_island_of([node]) == 96 * GI


def test_unhealthy_devices_do_not_count() -> None:
    node = computenode([dev(0, 80, "nv0"), dev(1, 80, "nv0", healthy=False), dev(2, 80, "nv0", healthScore=10)])
    assert largest_island_of([node]) == 80 * GI


def test_empty_and_malformed_inventories() -> None:
    assert largest_island_of([]) is None
    assert largest_island_of([computenode([])]) is None
    assert largest_island_of([{"spec": "x"}, {"spec": {"devices": [None, {"vramBytes": "lots"}]}}, "x"]) is None  # type: ignore[list-item]


class Flaky:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def largest_island_bytes(self) -> int | None:
        self.calls += 1
        if self.fail:
            raise CapacityUnavailable("down")
        return self.calls * GI


def test_cache_ttl_and_error_caching() -> None:
    now = [0.0]
    inner = Flaky()
    cache = CachedCapacity(inner, ttl_s=10, error_ttl_s=2, clock=lambda: now[0])
    assert cache.largest_island_bytes() == GI
    now[0] = 9.9
    assert cache.largest_island_bytes() == GI and inner.calls == 1
    now[0] = 10.0
    inner.fail = True
    with pytest.raises(CapacityUnavailable):
        cache.largest_island_bytes()
    now[0] = 11.0
    with pytest.raises(CapacityUnavailable):  # remembered, not re-asked
        cache.largest_island_bytes()
    assert inner.calls == 2
    inner.fail = False
    now[0] = 12.5
    assert cache.largest_island_bytes() == 3 * GI


def test_image_map_parser_skips_bad_entries(caplog: pytest.LogCaptureFixture) -> None:
    text = """
pytorch/pytorch:2.4-cuda: {ascend: ascendhub/torch_npu:2.4, amd: rocm/pytorch}
bad-entry: just-a-string
"""
    assert parse_image_map(text, source="cm") == {"pytorch/pytorch:2.4-cuda": {"ascend": "ascendhub/torch_npu:2.4"}}
    assert "unknown vendor(s) amd" in caplog.text and "bad-entry" in caplog.text
    assert parse_image_map(": : :", source="cm") == {}
    assert parse_image_map("- a list", source="cm") == {}
