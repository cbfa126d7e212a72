"""Interconnect islands and the pairwise bandwidth matrix of one node.

An island is a connected component of devices of one vendor joined by the vendor's fabric
(NVLink, HCCS, xGMI, MLU-Link). Multi-device jobs with ``high-bandwidth`` preference must stay in
one island. A device without fabric links is an island of its own, of link type PCIe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hcs.devices.model import Device, LinkType, Vendor


@dataclass(frozen=True)
class Island:
    id: str
    vendor: Vendor
    link_type: LinkType
    members: tuple[str, ...]  # device keys
    min_gbps: float  # weakest direct link between two members (0 for a single device or no full mesh)


def bandwidth_matrix(devices: list[Device]) -> dict[tuple[str, str], float]:
    """Direct-link GB/s between every ordered pair of same-vendor devices (0 = PCIe only)."""
    by_vendor_index = {(d.vendor, d.index): d for d in devices}
    matrix: dict[tuple[str, str], float] = {}
    for d in devices:
        for other in devices:
            if other.key != d.key and other.vendor == d.vendor:
                matrix[(d.key, other.key)] = 0.0
        for link in d.links:
            peer = by_vendor_index.get((d.vendor, link.peer))
            if peer is not None and link.type != LinkType.PCIE:
                matrix[(d.key, peer.key)] = matrix.get((d.key, peer.key), 0.0) + link.gbps
    return matrix


def find_islands(devices: list[Device]) -> tuple[list[Device], list[Island]]:
    """Assign each device its island id; return the updated devices and the islands."""
    parent = {d.key: d.key for d in devices}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    by_vendor_index = {(d.vendor, d.index): d for d in devices}
    for d in devices:
        for link in d.links:
            peer = by_vendor_index.get((d.vendor, link.peer))
            if peer is not None and link.type != LinkType.PCIE:
                parent[root(d.key)] = root(peer.key)
    groups: dict[str, list[Device]] = {}
    for d in devices:
        groups.setdefault(root(d.key), []).append(d)
    matrix = bandwidth_matrix(devices)
    islands: list[Island] = []
    counters: dict[Vendor, int] = {}
    assigned: dict[str, str] = {}
    for members in sorted(groups.values(), key=lambda ms: (ms[0].vendor, min(m.index for m in ms))):
        vendor = members[0].vendor
        n = counters.get(vendor, 0)
        counters[vendor] = n + 1
        fabric = next((lk.type for m in members for lk in m.links if lk.type != LinkType.PCIE), LinkType.PCIE)
        island_id = f"{vendor}-{fabric}-{n}"
        pairs = [matrix.get((a.key, b.key), 0.0) for a in members for b in members if a.key != b.key]
        islands.append(Island(island_id, vendor, fabric, tuple(m.key for m in sorted(members, key=lambda m: m.index)),
                              min(pairs) if pairs else 0.0))
        for m in members:
            assigned[m.key] = island_id
    return [replace(d, island=assigned[d.key]) for d in devices], islands
