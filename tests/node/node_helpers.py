"""Shared helpers for the node-agent tests (imported by module name; tests/ has no packages)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hcs.devices.model import Compute, Device, Vendor
from hcs.kubeletsim.deviceplugin import KubeletSim
from hcs.node.assignments import PodDemand, PodRef, StaticPodLister
from hcs.node.config import NodeConfig, node_config

GiB = 1024**3
RESOURCE = "ai.compute/slot"

_NODES = {
    Vendor.NVIDIA: lambda i: (f"/dev/nvidia{i}",),
    Vendor.ASCEND: lambda i: (f"/dev/davinci{i}",),
    Vendor.HYGON: lambda i: (f"/dev/dri/card{i}", f"/dev/dri/renderD{128 + i}"),
    Vendor.CAMBRICON: lambda i: (f"/dev/cambricon_dev{i}",),
}


def device(vendor: Vendor, index: int, vram_gib: int, numa: int = 0, model: str = "a100-80g") -> Device:
    return Device(
        vendor=vendor, model=model, name=f"{vendor} test device", uuid=f"{vendor.upper()}-UUID-{index:04d}",
        index=index, pci_bus_id=f"0000:{index + 16:02x}:00.0", numa_node=numa,
        vram_total_bytes=vram_gib * GiB, vram_used_bytes=0,
        compute=Compute(312.0, 19.5, 624.0, 1.0), device_nodes=_NODES[vendor](index),
    )


def demand(name: str, vram_gib: float, created_ms: int, containers: tuple[str, ...] = ("main",),
           namespace: str = "default") -> PodDemand:
    return PodDemand(PodRef(f"uid-{name}", namespace, name, created_ms),
                     tuple((c, int(vram_gib * GiB)) for c in containers))


@dataclass
class Env:
    root: Path
    config: NodeConfig
    sim: KubeletSim
    pods: StaticPodLister

    def cfg(self, **kw: Any) -> NodeConfig:
        return replace(self.config, **kw)


@contextmanager
def node_env(**overrides: Any) -> Iterator[Env]:
    """Short paths under /tmp (unix sockets allow 107 bytes) + a started kubelet simulator."""
    root = Path(tempfile.mkdtemp(prefix="hcsn", dir="/tmp"))
    section: dict[str, Any] = {
        "nodeName": "node-a",
        "devicePluginDir": str(root / "dp"),
        "podResourcesSocket": str(root / "pr.sock"),
        "stateDir": str(root / "state"),
        "quotaDir": str(root / "quota"),
        "shmDir": str(root / "shm"),
        "computeDir": str(root / "compute"),
        "cdiDir": str(root / "cdi"),
        "interceptorDir": str(root / "lib"),
        "deviceNodes": "all",
        "slotsPerDevice": 4,
        "metricsPort": 0,
        "kubeletWatchInterval": 0.1,
        "healthPollInterval": 0.1,
    }
    section.update(overrides)
    (root / "lib").mkdir()
    config = node_config(section)
    sim = KubeletSim(config.devicePluginDir, config.podResourcesSocket).start()
    try:
        yield Env(root, config, sim, StaticPodLister())
    finally:
        sim.stop()
        shutil.rmtree(root, ignore_errors=True)
