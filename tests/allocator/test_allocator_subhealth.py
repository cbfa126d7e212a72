"""The allocator reads the node agent's sub-health grade: never places on failing, avoids degraded."""

from __future__ import annotations

from typing import Any

import pytest

from hcs.allocator.placement import Constraints, ContainerDemand, PodDemand, PodRef
from hcs.allocator.state import AllocatorState, NoFit
from hcs.cluster_inventory import parse_computenode

GI = 2**30


def computenode(grades: list[str], scores: list[int] | None = None) -> dict[str, Any]:
    scores = scores or [100] * len(grades)
    return {"metadata": {"name": "n1"}, "spec": {"nodeName": "n1", "vendor": "nvidia", "devices": [
        {"name": f"nvidia-{i}", "vendor": "nvidia", "model": "a100-80g", "uuid": f"GPU-{i}", "index": i,
         "vramBytes": 80 * GI, "compute": {"fp16Tflops": 312, "fp32Tflops": 19.5, "int8Tops": 624, "rate": 1.0},
         "topology": {"busId": f"0000:1{i}:00.0", "numaNode": 0, "island": "nvl-0"}, "healthScore": scores[i],
         "grade": g} for i, g in enumerate(grades)]}}


def demand(uid: str, vram: int) -> PodDemand:
    return PodDemand(PodRef(uid, "default", uid), (ContainerDemand("c0", vram, 0),), Constraints(), 0, 0)


def test_grade_failing_is_never_placed_on_even_with_a_stale_high_score() -> None:
    inv = parse_computenode(computenode(["failing", "lost"], scores=[100, 100]))
    assert [d.healthy for d in inv.devices] == [False, False]
    s = AllocatorState()
    s.set_node(inv)
    with pytest.raises(NoFit):
        s.reserve(demand("a", 16 * GI))


def test_degraded_device_is_avoided_while_a_healthy_one_fits() -> None:
    s = AllocatorState()
    s.set_node(parse_computenode(computenode(["degraded", "healthy"], scores=[70, 100])))
    for uid in ("a", "b", "c"):
        r = s.reserve(demand(uid, 16 * GI))
        assert next(r.grants()).device == "nvidia-1"
    s.check_invariants()


def test_degraded_device_is_still_used_when_nothing_else_fits() -> None:
    s = AllocatorState()
    s.set_node(parse_computenode(computenode(["degraded", "failing"], scores=[70, 10])))
    r = s.reserve(demand("a", 16 * GI))
    assert next(r.grants()).device == "nvidia-0"
