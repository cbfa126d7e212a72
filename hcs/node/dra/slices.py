"""Build this node's ResourceSlices (``resource.k8s.io/v1``) from the device inventory. Pure functions.

Consumable mode: one device per accelerator, ``allowMultipleAllocations`` with consumable capacity
``memory`` (request policy: min/step, default = whole device) and ``tflopsFP16`` (A100-equivalent
TFLOPS; default 0 so a memory-only claim does not take all compute).
Partitioned mode: per accelerator a shared counter set ``<dev>-counters {memory}``, the whole device
and fixed-size partitions consuming from it (counters live in their own slices of the same pool).

API limits honoured: ≤128 devices per slice, ≤64 when any device uses taints or counters, ≤8 counter
sets per slice, only one of devices/sharedCounters per slice, attribute/capacity names C identifiers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from hcs.devices.model import FABRIC_OF, Device
from hcs.node.dra.config import DraConfig
from hcs.quantity import format_bytes

MAX_DEVICES = 128
MAX_DEVICES_TAINTS_OR_COUNTERS = 64
MAX_COUNTER_SETS = 8
CAPACITY_MEMORY = "memory"
CAPACITY_TFLOPS = "tflopsFP16"
SPEC_HASH_ANNOTATION = "hcs.io/slice-spec-hash"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class PublishedDevice:
    """A device name in our slices and what it stands for on the node."""

    name: str
    device: Device
    memory_bytes: int  # whole device, or the partition size
    partition: bool = False


@dataclass(frozen=True)
class SliceContent:
    """One slice to publish, without pool generation/count (the controller sets those)."""

    name: str
    spec: dict[str, Any]
    spec_hash: str


def quantity(value: float | Fraction | int) -> str:
    """A canonical Kubernetes quantity for a non-negative decimal (``296.4`` → ``296400m``)."""
    frac = Fraction(str(value)) if isinstance(value, float) else Fraction(value)
    if frac.denominator == 1:
        return str(frac.numerator)
    milli = frac * 1000
    return f"{round(milli)}m"


def taint_key(driver: str) -> str:
    return f"{driver}/unhealthy"


def _island(d: Device) -> str:
    return d.island or f"{d.key}-{FABRIC_OF[d.vendor].value}-none"


def device_attributes(d: Device, driver_version: str = "") -> dict[str, dict[str, Any]]:
    attrs: dict[str, dict[str, Any]] = {
        "vendor": {"string": d.vendor.value},
        "model": {"string": d.model},
        "productName": {"string": d.name[:64]},
        "uuid": {"string": d.uuid[:64]},
        "pciBusID": {"string": d.pci_bus_id},
        "numaNode": {"int": d.numa_node},
        "index": {"int": d.index},
        "island": {"string": _island(d)[:64]},
        "interconnect": {"string": FABRIC_OF[d.vendor].value if d.island else "pcie"},
    }
    if driver_version and _SEMVER.match(driver_version):
        attrs["driverVersion"] = {"version": driver_version}
    return attrs


def published_attributes(pub: PublishedDevice, mode: str, driver_version: str = "") -> dict[str, dict[str, Any]]:
    """The attributes ``pub`` carries in our slices (device metadata repeats them to containers)."""
    attrs = device_attributes(pub.device, driver_version)
    if mode == "partitioned":
        attrs["partition"] = {"bool": pub.partition}
    return attrs


def _taints(d: Device, driver: str) -> list[dict[str, Any]]:
    """Device taints from health. A graded verdict (hcs.devices.subhealth) maps degraded → NoSchedule
    and failing / lost → NoExecute (pods whose claims do not tolerate it are evicted), under the key
    ``<driver>/<grade>`` with the first reason, label-safe, as the value. Health without a grade
    (set directly) keeps the plain rule: unhealthy → ``<driver>/unhealthy=true:NoSchedule``."""
    grade = d.health.grade
    if grade in ("degraded", "failing", "lost"):
        effect = "NoSchedule" if grade == "degraded" else "NoExecute"
        return [{"key": f"{driver}/{grade}", "value": reason_value(d.health.reasons), "effect": effect}]
    if grade == "healthy" or d.health.healthy:
        return []
    return [{"key": taint_key(driver), "value": "true", "effect": "NoSchedule"}]


def reason_value(reasons: Sequence[str]) -> str:
    """The first reason as a label value (≤ 63 of [A-Za-z0-9-_.], alphanumeric at both ends)."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", reasons[0] if reasons else "unspecified")[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", text) or "unspecified"


def partition_names(d: Device, sizes: Sequence[int]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for size in sizes:
        label = format_bytes(size).lower()
        for j in range(d.vram_total_bytes // size):
            out.append((f"{d.key}-{label}-{j}", size))
    return out


def published_devices(devices: Sequence[Device], cfg: DraConfig) -> dict[str, PublishedDevice]:
    """Every device name we publish → what it is (used by prepare to resolve allocation results)."""
    out: dict[str, PublishedDevice] = {}
    for d in devices:
        out[d.key] = PublishedDevice(d.key, d, d.vram_total_bytes)
        if cfg.mode == "partitioned":
            for name, size in partition_names(d, cfg.partition_bytes):
                out[name] = PublishedDevice(name, d, size, partition=True)
    return out


def _whole_device_default(total: int, cfg: DraConfig) -> int:
    steps = (total - cfg.memory_min_bytes) // cfg.memory_step_bytes
    return cfg.memory_min_bytes + max(0, steps) * cfg.memory_step_bytes


def _consumable_device(d: Device, cfg: DraConfig, driver_version: str) -> dict[str, Any]:
    dev: dict[str, Any] = {
        "name": d.key,
        "attributes": device_attributes(d, driver_version),
        "capacity": {
            CAPACITY_MEMORY: {
                "value": format_bytes(d.vram_total_bytes),
                "requestPolicy": {
                    # the API requires a default with validRange: a claim that names no memory
                    # takes the whole device (rounded down to the step)
                    "default": format_bytes(_whole_device_default(d.vram_total_bytes, cfg)),
                    "validRange": {
                        "min": format_bytes(cfg.memory_min_bytes),
                        "step": format_bytes(cfg.memory_step_bytes),
                    },
                },
            },
            CAPACITY_TFLOPS: {
                "value": quantity(d.compute.a100_equiv_tflops),
                "requestPolicy": {"default": "0", "validRange": {"min": "0"}},
            },
        },
        "allowMultipleAllocations": True,
    }
    taints = _taints(d, cfg.driver_name)
    if taints:
        dev["taints"] = taints
    return dev


def _counter_set(d: Device) -> str:
    return f"{d.key}-counters"


def _partitioned_devices(d: Device, cfg: DraConfig, driver_version: str) -> list[dict[str, Any]]:
    attrs = device_attributes(d, driver_version)
    taints = _taints(d, cfg.driver_name)
    whole = [(d.key, d.vram_total_bytes)]
    out = []
    for name, size in whole + partition_names(d, cfg.partition_bytes):
        share = Fraction(size, d.vram_total_bytes)
        dev: dict[str, Any] = {
            "name": name,
            "attributes": {**attrs, "partition": {"bool": name != d.key}},
            "capacity": {
                CAPACITY_MEMORY: {"value": format_bytes(size)},
                CAPACITY_TFLOPS: {"value": quantity(Fraction(str(d.compute.a100_equiv_tflops)) * share)},
            },
            "consumesCounters": [
                {"counterSet": _counter_set(d), "counters": {CAPACITY_MEMORY: {"value": format_bytes(size)}}}
            ],
        }
        if taints:
            dev["taints"] = taints
        out.append(dev)
    return out


def _chunks(items: Sequence[Any], n: int) -> list[list[Any]]:
    return [list(items[i : i + n]) for i in range(0, len(items), n)]


def spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def slice_name(node: str, driver: str, i: int) -> str:
    return f"{node}-{driver}-{i}"[:253]


def build_slices(
    devices: Sequence[Device],
    cfg: DraConfig,
    driver_versions: Mapping[str, str] | None = None,
) -> list[SliceContent]:
    """The desired slices for this node, deterministic for equal input (names, order, hashes)."""
    versions = driver_versions or {}
    ordered = sorted(devices, key=lambda d: (d.vendor.value, d.index))
    base = {"driver": cfg.driver_name, "nodeName": cfg.node_name}
    specs: list[dict[str, Any]] = []
    if cfg.mode == "partitioned":
        for group in _chunks(ordered, MAX_COUNTER_SETS):
            specs.append({**base, "sharedCounters": [
                {"name": _counter_set(d), "counters": {CAPACITY_MEMORY: {"value": format_bytes(d.vram_total_bytes)}}}
                for d in group
            ]})
        devs = [x for d in ordered for x in _partitioned_devices(d, cfg, versions.get(d.vendor.value, ""))]
        limit = MAX_DEVICES_TAINTS_OR_COUNTERS
    else:
        devs = [_consumable_device(d, cfg, versions.get(d.vendor.value, "")) for d in ordered]
        limit = MAX_DEVICES_TAINTS_OR_COUNTERS if any("taints" in x for x in devs) else MAX_DEVICES
    for group in _chunks(devs, limit):
        specs.append({**base, "devices": group})
    if not specs:  # no devices: publish one empty slice so the pool exists and old devices vanish
        specs.append({**base, "devices": []})
    return [
        SliceContent(slice_name(cfg.node_name, cfg.driver_name, i), spec, spec_hash(spec))
        for i, spec in enumerate(specs)
    ]
