"""Shared helpers for the node-agent tests (imported by module name; tests/ has no packages)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
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


@contextmanager
def agent_on_allocator(rest: Any, kube_cluster: Any, allocator_state: Any, *, leader: bool, resource: str,
                       tag: str, devices: list[Device], compute_policy: str | None = None) -> Iterator[Any]:
    """A node agent on the local cluster's real kubelet (``resource``, 2 slots per device) whose assignment
    source is a real allocator gRPC server over ``allocator_state`` (a leader, or a standby whose
    GetNodeAssignments answers UNAVAILABLE). ``compute_policy`` turns on compute limits (the node-wide
    compute dir under the agent's temporary root). Yields the agent once the kubelet lists the slots;
    stops it all and removes the root after."""
    from hcs.allocator.service import AllocatorService, serve
    from hcs.allocator.state import AllocatorState
    from hcs.node.agent import NodeAgent
    from hcs.node.sources import AllocatorAssignmentSource
    from hcs.testing.cluster import wait_for

    assert isinstance(allocator_state, AllocatorState)
    # a short root: the unix socket paths under it must stay within the kernel's limit
    root = Path(tempfile.mkdtemp(prefix=f"hcs{tag[0]}", dir="/tmp"))
    server = serve(AllocatorService(allocator_state, is_leader=lambda: leader), f"unix://{root}/alloc.sock")
    source = AllocatorAssignmentSource(f"unix://{root}/alloc.sock", kube_cluster.node_name)
    config: dict[str, Any] = {
        "nodeName": kube_cluster.node_name,
        "devicePluginDir": str(Path(kube_cluster.kubelet_dir) / "device-plugins"),
        "podResourcesSocket": str(Path(kube_cluster.kubelet_dir) / "pod-resources" / "kubelet.sock"),
        "resourceName": resource, "socketName": f"hcs-{tag}-{uuid.uuid4().hex[:6]}.sock",
        "stateDir": str(root / "state"), "quotaDir": str(root / "quota"), "shmDir": str(root / "shm"),
        "cdiDir": str(root / "cdi"), "interceptorDir": "", "slotsPerDevice": 2, "metricsPort": 0,
        "reportInterval": 3600, "assignmentSource": "allocator", "allocateWaitSeconds": 8,
    }
    if compute_policy is not None:
        config.update(computePolicy=compute_policy, computeDir=str(root / "compute"))
    agent = None
    try:
        agent = NodeAgent(node_config(config), devices, kube=rest, source=source).start()
        slots = str(2 * len(devices))

        def capacity() -> bool:
            n = rest.request("GET", f"/api/v1/nodes/{kube_cluster.node_name}")
            return bool(n["status"].get("allocatable", {}).get(resource) == slots)

        wait_for(capacity, timeout=60, interval=0.1, what=f"{resource} allocatable on {kube_cluster.node_name}")
        yield agent
    finally:
        if agent is not None:
            agent.stop()
        source.close()
        server.stop(None)
        shutil.rmtree(root, ignore_errors=True)

