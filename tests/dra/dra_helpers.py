"""Shared helpers for the DRA tests: devices built directly on the model, claim objects."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from hcs.devices.model import Compute, Device, Vendor

GiB = 1 << 30

_NODES = {
    Vendor.NVIDIA: lambda i: (f"/dev/nvidia{i}",),
    Vendor.ASCEND: lambda i: (f"/dev/davinci{i}",),
    Vendor.HYGON: lambda i: (f"/dev/dri/card{i}", f"/dev/dri/renderD{128 + i}"),
    Vendor.CAMBRICON: lambda i: (f"/dev/cambricon_dev{i}",),
}


def make_device(vendor: Vendor = Vendor.NVIDIA, index: int = 0, *, vram_gib: int = 80, model: str = "a100-80g",
                rate: float = 1.0, island: str = "") -> Device:
    return Device(
        vendor=vendor, model=model, name=f"{vendor.value} {model}", uuid=f"GPU-{vendor.value}-{index:04d}-uuid",
        index=index, pci_bus_id=f"0000:{0x10 + index:02x}:00.0", numa_node=index // 4,
        vram_total_bytes=vram_gib * GiB, vram_used_bytes=0,
        compute=Compute(fp16_tflops=312.0 * rate, fp32_tflops=19.5, int8_tops=624.0, rate=rate),
        device_nodes=_NODES[vendor](index), island=island,
    )


def make_devices(n: int, vendor: Vendor = Vendor.NVIDIA, **kw: Any) -> list[Device]:
    return [make_device(vendor, i, **kw) for i in range(n)]


def claim_object(namespace: str, name: str, uid: str, node: str, results: list[dict[str, Any]],
                 driver: str = "ai.compute") -> dict[str, Any]:
    """A ResourceClaim as the API returns it after allocation."""
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "spec": {"devices": {"requests": [{"name": r["request"].split("/")[0]} for r in results]}},
        "status": {"allocation": {"devices": {"results": [
            {"driver": driver, "pool": node, **r} for r in results
        ]}}},
    }


def new_uid() -> str:
    return str(uuidlib.uuid4())


class MemoryClaims:
    """An in-memory stand-in for the claim store, for tests that exercise files and sockets only
    (tests of the API path use the real API server)."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.down = False

    def add(self, obj: dict[str, Any]) -> None:
        self.claims[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        from hcs.kube import KubeError

        if self.down:
            raise KubeError(0, "GET claim: API server unreachable: connection refused")
        try:
            return self.claims[(namespace, name)]
        except KeyError:
            raise KubeError(404, f"resourceclaims {name} not found") from None
