"""The demo's workloads: the seed's example pods plus a burst of fractional pods."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

GI = 2**30


@dataclass(frozen=True)
class DemoPod:
    name: str
    vram_bytes: int  # per pod (all devices together)
    tflops: float = 0.0  # A100-equivalent TFLOPS-fp16
    limit_bytes: int = 0  # VRAM limit (0 = same as the request)
    annotations: dict[str, str] = field(default_factory=dict)
    note: str = ""


def seed_pods() -> list[DemoPod]:
    """The seed's examples, written once and run on whatever vendor fits."""
    return [
        DemoPod("inference-basic", 16 * GI, 100, note="seed basic pod: 16Gi + 100 TFLOPS"),
        DemoPod("training", 32 * GI, 0, limit_bytes=64 * GI, note="seed training pod: requests 32Gi, limits 64Gi"),
        DemoPod("multi-gpu-160g", 160 * GI, 0, annotations={"hcs.io/topology-preference": "high-bandwidth"},
                note="seed multi-GPU pod: 160Gi on one interconnect island"),
        DemoPod("ascend-only", 24 * GI, 0, annotations={"hcs.io/vendor": "ascend"}, note="vendor include list"),
        DemoPod("not-nvidia", 20 * GI, 0, annotations={"hcs.io/vendor": "!nvidia"}, note="vendor exclude list"),
        DemoPod("mlu-pinned", 12 * GI, 0, annotations={"hcs.io/model": "mlu370-x8"}, note="model include list"),
    ]


def burst_pods(count: int, seed: int) -> list[DemoPod]:
    """Fractional pods of 4-40Gi; some spread, most binpacked (the default)."""
    rng = random.Random(seed)
    sizes = [4, 6, 8, 8, 10, 12, 16, 16, 20, 24, 32, 40]
    pods = []
    for i in range(count):
        size = rng.choice(sizes)
        annotations = {"hcs.io/scheduling-policy": "spread"} if rng.random() < 0.15 else {}
        pods.append(DemoPod(f"burst-{i:02d}", size * GI, round(size * 2.5, 1), annotations=annotations))
    return pods


def overflow_pods() -> list[DemoPod]:
    """A request that must wait: a whole 8-device island while the 160Gi job holds two of the NVLink GPUs."""
    return [
        DemoPod("whole-island-640g", 640 * GI, 0, annotations={"hcs.io/topology-preference": "high-bandwidth"},
                note="640Gi on one interconnect island: waits, with a reason per node"),
    ]


def pod_manifest(name: str, vram: str, tflops: str = "", annotations: dict[str, str] | None = None,
                 namespace: str = "demo") -> dict[str, Any]:
    """The Pod a user would apply (the README's form: ``limits`` of ai.compute resources)."""
    limits = {"ai.compute/vram": vram, **({"ai.compute/tflops-fp16": tflops} if tflops else {})}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"demo-{name}",
                         "annotations": dict(annotations or {})},
            "spec": {"containers": [{"name": "main", "image": "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
                                     "resources": {"limits": limits}}]}}


def admission_pods() -> list[dict[str, Any]]:
    """Sent to the real webhook: the README's inference pod (admitted and routed to HCS), and one larger
    than any interconnect island (denied at admission, naming the largest island)."""
    return [pod_manifest("inference-basic", "16Gi", "100"),
            pod_manifest("too-big-1Ti", "1Ti", annotations={"hcs.io/topology-preference": "high-bandwidth"})]
