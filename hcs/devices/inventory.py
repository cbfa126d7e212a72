"""Discover a node's accelerators through each vendor's library: the node's compute fingerprint."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from hcs.devices.backend import Backend, VendorError
from hcs.devices.catalog import Catalog, default_catalog
from hcs.devices.libraries import VENDOR_LIBRARIES, LibraryNotFound, MissingSymbol, load_library
from hcs.devices.model import Device, LibraryStatus, Vendor
from hcs.devices.profile import load_profile
from hcs.devices.topology import Island, bandwidth_matrix, find_islands

log = logging.getLogger(__name__)

BACKENDS: dict[Vendor, str] = {
    Vendor.NVIDIA: "hcs.devices.nvidia:NvidiaBackend",
    Vendor.ASCEND: "hcs.devices.ascend:AscendBackend",
    Vendor.HYGON: "hcs.devices.hygon:HygonBackend",
    Vendor.CAMBRICON: "hcs.devices.cambricon:CambriconBackend",
}


@dataclass(frozen=True)
class Inventory:
    devices: tuple[Device, ...]
    islands: tuple[Island, ...]
    libraries: tuple[LibraryStatus, ...]
    bandwidth: dict[tuple[str, str], float]

    def device(self, key: str) -> Device:
        return next(d for d in self.devices if d.key == key)

    def to_dict(self) -> dict[str, Any]:
        devices = []
        for d in self.devices:
            entry = asdict(d)
            entry["key"] = d.key
            entry["health"] = {"score": d.health.score, "reasons": list(d.health.reasons)}
            entry["compute"]["a100_equiv_tflops"] = d.compute.a100_equiv_tflops
            entry["device_nodes"] = list(d.device_nodes)
            entry["links"] = [{"type": str(lk.type), "peer": lk.peer, "gbps": lk.gbps} for lk in d.links]
            entry["vendor"] = str(d.vendor)
            devices.append(entry)
        return {
            "devices": devices,
            "islands": [{"id": i.id, "vendor": str(i.vendor), "link_type": str(i.link_type),
                         "members": list(i.members), "min_gbps": i.min_gbps} for i in self.islands],
            "libraries": [{"vendor": str(s.vendor), "library": s.library, "loaded": s.loaded, "path": s.path,
                           "error": s.error, "device_count": s.device_count} for s in self.libraries],
            "bandwidth_gbps": {f"{a}->{b}": v for (a, b), v in sorted(self.bandwidth.items()) if v},
            "summary": summarize(self.devices),
        }


def summarize(devices: tuple[Device, ...]) -> dict[str, Any]:
    by_vendor: dict[str, dict[str, Any]] = {}
    for d in devices:
        s = by_vendor.setdefault(str(d.vendor), {"count": 0, "vram_total_bytes": 0, "tflops_fp16_a100_equiv": 0.0,
                                                 "healthy": 0})
        s["count"] += 1
        s["vram_total_bytes"] += d.vram_total_bytes
        s["tflops_fp16_a100_equiv"] = round(s["tflops_fp16_a100_equiv"] + d.compute.a100_equiv_tflops, 3)
        s["healthy"] += int(d.health.healthy)
    return {"device_count": len(devices), "by_vendor": by_vendor}


def _backend_class(vendor: Vendor) -> type[Backend]:
    module, _, name = BACKENDS[vendor].partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), name)
    return cls


@contextmanager
def open_backends(catalog: Catalog | None = None,
                  vendors: tuple[Vendor, ...] = tuple(Vendor)) -> Iterator[tuple[list[Backend], list[LibraryStatus]]]:
    """Open every vendor library found; report the ones absent or failing instead of raising."""
    catalog = catalog or default_catalog()
    profile = os.environ.get("HCS_SIM_PROFILE")
    if profile:
        load_profile(profile, catalog)  # the user's input: a bad profile is an error, not a skip
    backends: list[Backend] = []
    statuses: list[LibraryStatus] = []
    for vendor in vendors:
        soname = _soname(vendor)
        try:
            lib = load_library(vendor)
            backend = _backend_class(vendor)(lib, catalog)
            backend.open()
        except LibraryNotFound as exc:
            statuses.append(LibraryStatus(vendor, soname, False, error=str(exc)))
            continue
        except (OSError, MissingSymbol, VendorError) as exc:
            log.warning("%s library skipped: %s", vendor, exc)
            statuses.append(LibraryStatus(vendor, soname, False, path=getattr(exc, "path", ""), error=str(exc)))
            continue
        backends.append(backend)
        statuses.append(LibraryStatus(vendor, soname, True, path=lib.path))
    try:
        yield backends, statuses
    finally:
        for b in backends:
            b.close()


def enumerate_devices(backends: list[Backend], statuses: list[LibraryStatus]) -> Inventory:
    devices: list[Device] = []
    final_statuses = []
    for status in statuses:
        backend = next((b for b in backends if b.vendor == status.vendor), None)
        if backend is None:
            final_statuses.append(status)
            continue
        try:
            found = backend.devices()
        except VendorError as exc:
            log.warning("%s enumeration failed: %s", status.vendor, exc)
            final_statuses.append(LibraryStatus(status.vendor, status.library, True, status.path, str(exc)))
            continue
        devices += found
        final_statuses.append(LibraryStatus(status.vendor, status.library, True, status.path,
                                            device_count=len(found)))
    devices, islands = find_islands(devices)
    return Inventory(tuple(devices), tuple(islands), tuple(final_statuses), bandwidth_matrix(devices))


def discover(catalog: Catalog | None = None, vendors: tuple[Vendor, ...] = tuple(Vendor)) -> Inventory:
    """One full inventory of this node (opens and closes the vendor libraries)."""
    with open_backends(catalog, vendors) as (backends, statuses):
        return enumerate_devices(backends, statuses)


def _soname(vendor: Vendor) -> str:
    return VENDOR_LIBRARIES[vendor][0]
