"""Validation of simulated-node profiles (``driver/profiles/*.json``, format in driver/README.md).

The simulated C libraries refuse a bad profile too; this module gives the user-facing message
(file and field) before any library is loaded, and is what property-based tests exercise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hcs.devices.catalog import Catalog, default_catalog
from hcs.devices.model import LinkType, Vendor
from hcs.errors import ConfigError

PCI_BUS_ID = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
HEALTH_STATES = ("ok", "warning", "critical", "lost")
_REQUIRED = {"vendor": str, "model": str, "uuid": str, "pci_bus_id": str, "memory_mib": int, "numa_node": int}
_OPTIONAL = {"memory_used_mib": int, "minor": int, "serial": str, "temperature_c": int, "utilization_pct": int,
             "health": str, "links": list}


def load_profile(path: str | Path, catalog: Catalog | None = None) -> dict[str, Any]:
    """Read and validate a profile file; raise ConfigError naming the file and field."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(
            f"profile {p}: cannot read ({exc.strerror}); set HCS_SIM_PROFILE to a file in driver/profiles/"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"profile {p}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    validate_profile(data, source=str(p), catalog=catalog)
    return data  # type: ignore[no-any-return]


def validate_profile(data: Any, *, source: str = "profile", catalog: Catalog | None = None) -> None:
    catalog = catalog or default_catalog()

    def fail(field: str, message: str) -> ConfigError:
        return ConfigError(f"profile {source}: {field}: {message}")

    if not isinstance(data, dict):
        raise fail("(top level)", "must be a JSON object with a 'devices' list")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise fail("devices", "must be a non-empty list of device objects")
    seen_uuid: dict[str, int] = {}
    seen_pci: dict[str, int] = {}
    per_vendor: dict[str, int] = {}
    for i, dev in enumerate(devices):
        where = f"devices[{i}]"
        if not isinstance(dev, dict):
            raise fail(where, "must be an object")
        for name in dev:
            if name not in _REQUIRED and name not in _OPTIONAL:
                raise fail(f"{where}.{name}", "unknown field (check the spelling; see driver/README.md)")
        for name, typ in _REQUIRED.items():
            if name not in dev:
                raise fail(f"{where}.{name}", "is required")
            if not _is(dev[name], typ):
                raise fail(f"{where}.{name}", f"must be {typ.__name__}, got {dev[name]!r}")
        for name, typ in _OPTIONAL.items():
            if name in dev and not _is(dev[name], typ):
                raise fail(f"{where}.{name}", f"must be {typ.__name__}, got {dev[name]!r}")
        try:
            vendor = Vendor(dev["vendor"])
        except ValueError:
            raise fail(f"{where}.vendor", f"unknown vendor {dev['vendor']!r}; use one of "
                       f"{', '.join(v.value for v in Vendor)}") from None
        if catalog.lookup(vendor, dev["model"], dev["memory_mib"] << 20) is None:
            raise fail(f"{where}.model", f"{dev['model']!r} is not a known {vendor} model in the catalog "
                       "(hcs/devices/catalog.yaml); add it there with its specs and source")
        if dev["memory_mib"] <= 0:
            raise fail(f"{where}.memory_mib", "must be > 0")
        if not 0 <= dev.get("memory_used_mib", 0) <= dev["memory_mib"]:
            raise fail(f"{where}.memory_used_mib", "must be between 0 and memory_mib")
        if dev["numa_node"] < -1:
            raise fail(f"{where}.numa_node", "must be >= -1 (-1 = unknown)")
        if not PCI_BUS_ID.match(dev["pci_bus_id"]):
            raise fail(f"{where}.pci_bus_id", f"{dev['pci_bus_id']!r} is not domain:bus:device.function")
        if dev.get("health", "ok") not in HEALTH_STATES:
            raise fail(f"{where}.health", f"must be one of {', '.join(HEALTH_STATES)}")
        pci = dev["pci_bus_id"].lower()
        pci = pci if len(pci.split(":")[0]) == 8 else "0000" + pci
        for key, seen, value in (("uuid", seen_uuid, dev["uuid"]), ("pci_bus_id", seen_pci, pci)):
            if value in seen:
                raise fail(f"{where}.{key}", f"duplicate of devices[{seen[value]}]")
            seen[value] = i
        per_vendor[vendor] = per_vendor.get(vendor, 0) + 1
    switches = len(data["nvswitches"]) if isinstance(data.get("nvswitches"), list) else 0
    index_in_vendor: dict[str, int] = {}
    for i, dev in enumerate(devices):
        own = index_in_vendor.get(dev["vendor"], 0)
        index_in_vendor[dev["vendor"]] = own + 1
        for j, link in enumerate(dev.get("links", [])):
            _check_link(link, f"devices[{i}].links[{j}]", dev, own, per_vendor[dev["vendor"]], switches, fail)
    _check_switches(data, devices, fail)


def _check_switches(data: dict[str, Any], devices: list[Any], fail: Callable[[str, str], ConfigError]) -> None:
    switches: Any = data.get("nvswitches", [])
    if not isinstance(switches, list):
        raise fail("nvswitches", "must be a list of {pci_bus_id} objects")
    device_buses = {str(d["pci_bus_id"]).lower() for d in devices}
    for k, sw in enumerate(switches):
        if not isinstance(sw, dict) or set(sw) != {"pci_bus_id"} or not isinstance(sw["pci_bus_id"], str) \
                or not PCI_BUS_ID.match(sw["pci_bus_id"]):
            raise fail(f"nvswitches[{k}]", "must be {\"pci_bus_id\": \"domain:bus:device.function\"}")
        if sw["pci_bus_id"].lower() in device_buses:
            raise fail(f"nvswitches[{k}].pci_bus_id", "is also a device's address")


def _check_link(link: Any, where: str, dev: dict[str, Any], own: int, vendor_devices: int, switches: int,
                fail: Callable[[str, str], ConfigError]) -> None:
    """One entry of a device's ``links``: a direct link to a peer, or (NVIDIA) a link to an NVSwitch."""
    if not isinstance(link, dict):
        raise fail(where, "must be an object with peer (or switch), type and gbps")
    for name in link:
        if name not in ("peer", "switch", "type", "gbps", "version"):
            raise fail(f"{where}.{name}", "unknown field (check the spelling; see driver/README.md)")
    kind: Any = link.get("type")
    gbps: Any = link.get("gbps")
    version: Any = link.get("version", 1)
    if "switch" in link:
        sw: Any = link["switch"]
        if "peer" in link:
            raise fail(where, "set either peer (a direct link) or switch (a link to an NVSwitch), not both")
        if dev["vendor"] != Vendor.NVIDIA.value or kind != LinkType.NVLINK.value:
            raise fail(f"{where}.switch", "only NVIDIA devices link to NVSwitches, over nvlink")
        if not _is(sw, int) or not 0 <= sw < switches:
            raise fail(f"{where}.switch", f"{sw!r} names no entry of nvswitches (the profile lists {switches})")
    else:
        peer: Any = link.get("peer")
        if not _is(peer, int) or not 0 <= peer < vendor_devices:
            raise fail(f"{where}.peer", f"{peer!r} names no {dev['vendor']} device on this node "
                       f"(valid: 0..{vendor_devices - 1})")
        if peer == own:
            raise fail(f"{where}.peer", "a device cannot link to itself")
    if kind not in {t.value for t in LinkType}:
        raise fail(f"{where}.type", f"{kind!r} is not one of {', '.join(t.value for t in LinkType)}")
    if not _is(gbps, float) or gbps <= 0:
        raise fail(f"{where}.gbps", f"must be a positive number, got {gbps!r}")
    if not _is(version, int) or not 1 <= version <= 5:
        raise fail(f"{where}.version", f"must be an NVLink generation 1..5, got {version!r}")


def _is(value: Any, typ: type) -> bool:
    if isinstance(value, bool):
        return typ is bool
    if typ is float:
        return isinstance(value, int | float)
    return isinstance(value, typ)
