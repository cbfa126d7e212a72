"""The uniform, vendor-neutral device model every HCS component speaks.

Backends (``hcs.devices.<vendor>``) turn a vendor library's view into these frozen
dataclasses; the node agent, allocator and CLI only ever see this model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Vendor(StrEnum):
    NVIDIA = "nvidia"
    ASCEND = "ascend"
    HYGON = "hygon"
    CAMBRICON = "cambricon"


class LinkType(StrEnum):
    NVLINK = "nvlink"
    HCCS = "hccs"
    XGMI = "xgmi"
    MLULINK = "mlulink"
    PCIE = "pcie"


#: The interconnect each vendor uses for its high-bandwidth islands.
FABRIC_OF: dict[Vendor, LinkType] = {
    Vendor.NVIDIA: LinkType.NVLINK,
    Vendor.ASCEND: LinkType.HCCS,
    Vendor.HYGON: LinkType.XGMI,
    Vendor.CAMBRICON: LinkType.MLULINK,
}


@dataclass(frozen=True)
class Link:
    """A direct device-to-device link (peer is the peer's index on the same node and vendor)."""

    type: LinkType
    peer: int
    gbps: float  # GB/s, one direction


@dataclass(frozen=True)
class Health:
    """0–100; 100 is healthy, 0 unusable. Reasons explain every point taken off."""

    score: int = 100
    reasons: tuple[str, ...] = ()
    grade: str = ""  # sub-health verdict healthy|degraded|failing|lost; "" = derived from the score

    @property
    def verdict(self) -> str:
        """The graded verdict (hcs.devices.subhealth); derived from the score when none was set."""
        if self.grade:
            return self.grade
        return "healthy" if self.score >= 100 else "degraded" if self.score >= HEALTHY_THRESHOLD else "failing"

    @property
    def healthy(self) -> bool:
        return self.score >= HEALTHY_THRESHOLD

    @property
    def degraded(self) -> bool:
        return HEALTHY_THRESHOLD <= self.score < 100


#: A device below this score is treated as unhealthy (not schedulable).
HEALTHY_THRESHOLD = 50


@dataclass(frozen=True)
class Compute:
    """Dense throughput; ``rate`` is the A100-equivalent exchange rate for tflops-fp16."""

    fp16_tflops: float
    fp32_tflops: float
    int8_tops: float
    rate: float

    @property
    def a100_equiv_tflops(self) -> float:
        return round(self.rate * 312.0, 3)


@dataclass(frozen=True)
class Device:
    vendor: Vendor
    model: str  # canonical catalog id, e.g. "a100-80g"
    name: str  # as the vendor library reports it, e.g. "NVIDIA A100-SXM4-80GB"
    uuid: str
    index: int
    pci_bus_id: str  # "0000:18:00.0"
    numa_node: int  # -1 when unknown
    vram_total_bytes: int
    vram_used_bytes: int
    compute: Compute
    device_nodes: tuple[str, ...] = ()
    links: tuple[Link, ...] = ()
    health: Health = field(default_factory=Health)
    island: str = ""  # interconnect island id, set by the topology view
    temperature_c: int | None = None
    utilization_pct: int | None = None

    @property
    def key(self) -> str:
        """Node-unique device name, e.g. ``nvidia-0``."""
        return f"{self.vendor}-{self.index}"


@dataclass(frozen=True)
class LibraryStatus:
    """What inventory found when it looked for one vendor library."""

    vendor: Vendor
    library: str
    loaded: bool
    path: str = ""
    error: str = ""
    device_count: int = 0
