"""Slot IDs the device plugin advertises: ``slotsPerDevice`` small IDs per physical device.

A slot is an admission token, not a device: which device(s) a container gets comes from its
assignment. Each slot is still tied to one device so the kubelet sees health and NUMA affinity
(an unhealthy device's slots turn Unhealthy, and allocatable drops accordingly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hcs.devices.model import Device


@dataclass(frozen=True)
class Slot:
    id: str
    device_key: str
    numa_node: int


def build_slots(devices: Sequence[Device], per_device: int) -> tuple[Slot, ...]:
    if per_device < 1:
        raise ValueError(f"slotsPerDevice must be >= 1, got {per_device}")
    total = len(devices) * per_device
    width = max(3, len(str(max(total - 1, 0))))
    out = []
    for ordinal, d in enumerate(sorted(devices, key=lambda d: (str(d.vendor), d.index))):
        for k in range(per_device):
            out.append(Slot(f"s{ordinal * per_device + k:0{width}d}", d.key, d.numa_node))
    return tuple(out)
