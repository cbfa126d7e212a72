"""Cluster inventory as the allocator and the webhook see it: ComputeNode objects (hetero.zrs.io/v1alpha1,
written by each node agent) plus the Node's allocatable CPU and memory. All parsing of those objects lives here,
and so does :func:`capacity_of` (the largest interconnect islands), which the allocator's ``GetCapacity``
and the admission webhook's ComputeNode fallback both use, so the two always agree.

TFLOPS are counted in A100-equivalent milli-TFLOPS: a device offers ``rate(model) × 312 × 1000``.
The rate is the configured exchange rate (``exchangeRates`` keyed by catalog rate key or model id),
else the rate the node agent reported in the ComputeNode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
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


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def parse_computenode(obj: Mapping[str, Any], rates: ExchangeRates | None = None) -> NodeInventory:
    """A ComputeNode (API JSON dict) → :class:`NodeInventory` (CPU/memory unknown until a Node is merged)."""
    rates = rates or ExchangeRates.from_config(None)
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    where = f"ComputeNode {meta.get('name', '?') if isinstance(meta, Mapping) else '?'}"
    spec = _field(obj, "spec", where)
    node = str(_field(spec, "nodeName", f"{where} spec"))
    listed = _field(spec, "devices", f"{where} spec") or []
    if not isinstance(listed, list):
        raise InventoryError(f"{where}: spec.devices is {type(listed).__name__}, not a list")
    devices = []
    for i, d in enumerate(listed):
        at = f"{where} spec.devices[{i}]"
        try:
            compute = _mapping(d.get("compute") if isinstance(d, Mapping) else None)
            model = str(_field(d, "model", at))
            rate = rates.rate(model, float(compute.get("rate", 0) or 0))
            topo = _mapping(d.get("topology"))
            score = int(d.get("healthScore", 100))
            if d.get("healthy") is False or d.get("grade") in ("failing", "lost"):
                score = min(score, HEALTHY_THRESHOLD - 1)  # never placed on (sub-health: failing/lost)
            elif d.get("grade") == "degraded":
                score = min(score, 99)  # penalised in the score
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


def capacity_of(nodes: Iterable[NodeInventory]) -> pb.GetCapacityResponse:
    """Largest interconnect island over healthy devices, overall and per vendor.

    An island is the healthy devices of one node sharing ``DeviceInfo.island``; a device with no island
    is its own. Ties go to the first (node, island) in name order so repeated answers are stable.
    """
    islands: dict[tuple[str, str, str], pb.Island] = {}  # (node, island key, vendor) -> island
    total = healthy = count = 0
    for inv in nodes:
        count += 1
        for d in inv.devices:
            total += 1
            if not d.healthy:
                continue
            healthy += 1
            key = (inv.name, d.island or f"\0{d.name}", d.vendor)
            isl = islands.get(key)
            if isl is None:
                isl = islands[key] = pb.Island(node=inv.name, island=d.island, vendor=d.vendor)
            isl.vram_bytes += d.vram_bytes
            isl.devices.append(d.name)
    out = pb.GetCapacityResponse(nodes=count, devices=total, healthy_devices=healthy)
    per_vendor: dict[str, pb.Island] = {}
    for key in sorted(islands):
        isl = islands[key]
        if isl.vram_bytes <= 0:
            continue
        if not out.HasField("largest") or isl.vram_bytes > out.largest.vram_bytes:
            out.largest.CopyFrom(isl)
        best = per_vendor.get(isl.vendor)
        if best is None or isl.vram_bytes > best.vram_bytes:
            per_vendor[isl.vendor] = isl
    out.largest_by_vendor.extend(per_vendor[v] for v in sorted(per_vendor))
    return out


def with_node(inv: NodeInventory, node: Mapping[str, Any]) -> NodeInventory:
    """Merge a Node's ``status.allocatable`` CPU and memory into the inventory."""
    alloc = ((node.get("status") or {}).get("allocatable")) or {}
    try:
        cpu = int(parse_quantity(str(alloc.get("cpu", "0")), field="cpu") * 1000)
        mem = parse_bytes(str(alloc.get("memory", "0")), field="memory")
    except HcsError as exc:
        raise InventoryError(f"Node {inv.name} status.allocatable: {exc}") from exc
    return replace(inv, cpu_milli=cpu, memory_bytes=mem)
