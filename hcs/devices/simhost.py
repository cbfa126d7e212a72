"""The host side of a simulated node: the sysfs entries a real host would have for the profile's devices.

The simulated vendor libraries describe devices that are not on this machine's PCI bus, so where a
backend asks the kernel (``/sys/bus/pci/devices/<bdf>/numa_node``, ``/sys/devices/system/node``), a
simulated node needs the same answers written somewhere. Backends read sysfs under ``$HCS_HOST_SYSFS``
(default ``/sys``; a DaemonSet that mounts the host's /sys elsewhere sets it too); tools that run a
simulated profile point it at the tree made here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

#: CPUs per NUMA node on a simulated host (the simulated DCMI reports the same affinity ranges).
CPUS_PER_NODE = 48


def host_sysfs() -> Path:
    """Where this host's sysfs is mounted for device queries."""
    return Path(os.environ.get("HCS_HOST_SYSFS") or "/sys")


def write_simulated_sysfs(profile: Path, root: Path) -> Path:
    """Write the NUMA layout and PCI ``numa_node`` files of ``profile``'s devices under ``root``."""
    try:
        data = json.loads(profile.read_text())
    except (OSError, ValueError):
        return root  # the profile's own validation reports what is wrong with it
    devices = data.get("devices", []) if isinstance(data, dict) else []
    devices = [d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []
    nodes: set[int] = set()
    for dev in devices:
        bus, numa = str(dev.get("pci_bus_id", "")).lower(), dev.get("numa_node", -1)
        if not bus or not isinstance(numa, int):
            continue
        bus = bus if len(bus.split(":")[0]) == 4 else bus[-12:]
        pci = root / "bus/pci/devices" / bus
        pci.mkdir(parents=True, exist_ok=True)
        (pci / "numa_node").write_text(f"{numa}\n")
        if numa >= 0:
            nodes.add(numa)
    for n in sorted(nodes):
        node = root / "devices/system/node" / f"node{n}"
        node.mkdir(parents=True, exist_ok=True)
        (node / "cpulist").write_text(f"{n * CPUS_PER_NODE}-{n * CPUS_PER_NODE + CPUS_PER_NODE - 1}\n")
    return root


def simulated_sysfs(profile: Path) -> Path:
    """A fresh temporary sysfs tree for ``profile`` (removed by the OS's tmp cleanup; it is a few files)."""
    return write_simulated_sysfs(profile, Path(tempfile.mkdtemp(prefix="hcs-sim-sysfs-")))
