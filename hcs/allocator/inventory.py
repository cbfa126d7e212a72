"""Cluster inventory as the allocator sees it: ComputeNode objects (hetero.zrs.io/v1alpha1, written by
each node agent) plus the Node's allocatable CPU and memory. All parsing of those objects lives here.

TFLOPS are counted in A100-equivalent milli-TFLOPS: a device offers ``rate(model) × 312 × 1000``.
The rate is the configured exchange rate (``exchangeRates`` keyed by catalog rate key or model id),
else the rate the node agent reported in the ComputeNode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hcs.devices.catalog import Catalog, default_catalog
from hcs.errors import HcsError
from hcs.quantity import parse_bytes, parse_quantity

A100_FP16_TFLOPS = 312.0
HEALTHY_THRESHOLD = 50


class InventoryError(HcsError):
    """A ComputeNode or Node object the allocator cannot use (names the object and field)."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # node-unique key, e.g. "nvidia-0"
    vendor: str
    model: str
    uuid: str
    index: int
    vram_bytes: int
    tflops_milli: int  # A100-equivalent milli-TFLOPS the device offers
    island: str = ""
    health_score: int = 100

    @property
    def healthy(self) -> bool:
        return self.health_score >= HEALTHY_THRESHOLD

    @property
    def degraded(self) -> bool:
        return HEALTHY_THRESHOLD <= self.health_score < 100


@dataclass(frozen=True)
class NodeInventory:
    name: str
    devices: tuple[DeviceInfo, ...]
    cpu_milli: int = 0  # allocatable; 0 = unknown (not checked)
    memory_bytes: int = 0  # allocatable; 0 = unknown (not checked)

    def device(self, name: str) -> DeviceInfo | None:
        return next((d for d in self.devices if d.name == name), None)


@dataclass(frozen=True)
class ExchangeRates:
    """A100-equivalent rates; ``overrides`` keyed by model id or catalog rate key."""

    overrides: Mapping[str, float]
    catalog: Catalog

    @classmethod
    def from_config(cls, overrides: Mapping[str, Any] | None) -> ExchangeRates:
        cat = default_catalog().with_rates(overrides)
        return cls({str(k): float(v) for k, v in (overrides or {}).items()}, cat)

    def rate(self, model: str, reported: float) -> float:
        spec = self.catalog.by_id(model)
        if model in self.overrides:
            return self.overrides[model]
        if spec is not None and spec.rate_key in self.overrides:
            return self.overrides[spec.rate_key]
        if reported > 0:
            return reported
        return self.catalog.rate(spec) if spec is not None else 0.0


def _field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise InventoryError(f"{where}: missing field '{key}'; the node agent writes it — check its version")
    return obj[key]


def parse_computenode(obj: Mapping[str, Any], rates: ExchangeRates | None = None) -> NodeInventory:
    """A ComputeNode (API JSON dict) → :class:`NodeInventory` (CPU/memory unknown until a Node is merged)."""
    rates = rates or ExchangeRates.from_config(None)
    meta = obj.get("metadata") or {}
    where = f"ComputeNode {meta.get('name', '?')}"
    spec = _field(obj, "spec", where)
    node = str(_field(spec, "nodeName", f"{where} spec"))
    devices = []
    for i, d in enumerate(_field(spec, "devices", f"{where} spec") or []):
        at = f"{where} spec.devices[{i}]"
        try:
            compute = d.get("compute") or {}
            model = str(_field(d, "model", at))
            rate = rates.rate(model, float(compute.get("rate", 0) or 0))
            topo = d.get("topology") or {}
            score = int(d.get("healthScore", 100))
            if d.get("healthy") is False:
                score = min(score, HEALTHY_THRESHOLD - 1)
            devices.append(DeviceInfo(
                name=str(_field(d, "name", at)), vendor=str(_field(d, "vendor", at)), model=model,
                uuid=str(_field(d, "uuid", at)), index=int(_field(d, "index", at)),
                vram_bytes=int(_field(d, "vramBytes", at)),
                tflops_milli=int(round(rate * A100_FP16_TFLOPS * 1000)),
                island=str(topo.get("island", "") or ""), health_score=score))
        except (TypeError, ValueError) as exc:
            raise InventoryError(f"{at}: malformed value ({exc}); the node agent should rewrite it") from exc
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise InventoryError(f"{where}: duplicate device names {sorted(names)}")
    return NodeInventory(node, tuple(devices))


def with_node(inv: NodeInventory, node: Mapping[str, Any]) -> NodeInventory:
    """Merge a Node's ``status.allocatable`` CPU and memory into the inventory."""
    alloc = ((node.get("status") or {}).get("allocatable")) or {}
    try:
        cpu = int(parse_quantity(str(alloc.get("cpu", "0")), field="cpu") * 1000)
        mem = parse_bytes(str(alloc.get("memory", "0")), field="memory")
    except HcsError as exc:
        raise InventoryError(f"Node {inv.name} status.allocatable: {exc}") from exc
    return replace(inv, cpu_milli=cpu, memory_bytes=mem)
