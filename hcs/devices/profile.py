"""Validation of simulated-node profiles (``driver/profiles/*.json``, format in driver/README.md).

The simulated C libraries refuse a bad profile too; this module gives the user-facing message
(file and field) before any library is loaded, and is what property-based tests exercise.
"""

from __future__ import annotations

import json
import re
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
    if not isinstance(data, dict):
        raise _fail(source, "(top level)", "must be a JSON object with a 'devices' list")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise _fail(source, "devices", "must be a non-empty list of device objects")
    seen_uuid: dict[str, int] = {}
    seen_pci: dict[str, int] = {}
    per_vendor: dict[str, int] = {}
    for i, dev in enumerate(devices):
        where = f"devices[{i}]"
        _check_fields(dev, where, source)
        vendor = _check_values(dev, where, source, catalog)
        pci = dev["pci_bus_id"].lower()
        pci = pci if len(pci.split(":")[0]) == 8 else "0000" + pci
        for key, seen, value in (("uuid", seen_uuid, dev["uuid"]), ("pci_bus_id", seen_pci, pci)):
            if value in seen:
                raise _fail(source, f"{where}.{key}", f"duplicate of devices[{seen[value]}]")
            seen[value] = i
        per_vendor[vendor] = per_vendor.get(vendor, 0) + 1
    switches = len(data["nvswitches"]) if isinstance(data.get("nvswitches"), list) else 0
    index_in_vendor: dict[str, int] = {}
    for i, dev in enumerate(devices):
        own = index_in_vendor.get(dev["vendor"], 0)
        index_in_vendor[dev["vendor"]] = own + 1
        for j, link in enumerate(dev.get("links", [])):
            _check_link(link, f"devices[{i}].links[{j}]", source, dev["vendor"], own, per_vendor[dev["vendor"]],
                        switches)
    _check_switches(data, devices, source)


def _check_switches(data: dict[str, Any], devices: list[Any], source: str) -> None:
    """Top-level ``nvswitches``: the NVSwitch chips NVIDIA links may point at (each a PCI address)."""
    switches: Any = data.get("nvswitches", [])
    if not isinstance(switches, list):
        raise _fail(source, "nvswitches", "must be a list of {pci_bus_id} objects")
    device_buses = {str(d["pci_bus_id"]).lower() for d in devices}
    for k, sw in enumerate(switches):
        if not isinstance(sw, dict) or set(sw) != {"pci_bus_id"} or not isinstance(sw["pci_bus_id"], str) \
                or not PCI_BUS_ID.match(sw["pci_bus_id"]):
            raise _fail(source, f"nvswitches[{k}]", "must be {\"pci_bus_id\": \"domain:bus:device.function\"}")
        if sw["pci_bus_id"].lower() in device_buses:
            raise _fail(source, f"nvswitches[{k}].pci_bus_id", "is also a device's address")


def _fail(source: str, field: str, message: str) -> ConfigError:
    return ConfigError(f"profile {source}: {field}: {message}")


def _check_fields(dev: Any, where: str, source: str) -> None:
    """An object with every required field, no unknown one, each of its type."""
    if not isinstance(dev, dict):
        raise _fail(source, where, "must be an object")
    for name in dev:
        if name not in _REQUIRED and name not in _OPTIONAL:
            raise _fail(source, f"{where}.{name}", "unknown field (check the spelling; see driver/README.md)")
    for name, typ in _REQUIRED.items():
        if name not in dev:
            raise _fail(source, f"{where}.{name}", "is required")
        if not _is(dev[name], typ):
            raise _fail(source, f"{where}.{name}", f"must be {typ.__name__}, got {dev[name]!r}")
    for name, typ in _OPTIONAL.items():
        if name in dev and not _is(dev[name], typ):
            raise _fail(source, f"{where}.{name}", f"must be {typ.__name__}, got {dev[name]!r}")


def _check_values(dev: dict[str, Any], where: str, source: str, catalog: Catalog) -> Vendor:
    """The device's values in range (vendor and model in the catalog, memory, NUMA node, PCI address,
    health); returns its vendor."""
    try:
        vendor = Vendor(dev["vendor"])
    except ValueError:
        raise _fail(source, f"{where}.vendor", f"unknown vendor {dev['vendor']!r}; use one of "
                    f"{', '.join(v.value for v in Vendor)}") from None
    if catalog.lookup(vendor, dev["model"], dev["memory_mib"] << 20) is None:
        raise _fail(source, f"{where}.model", f"{dev['model']!r} is not a known {vendor} model in the catalog "
                    "(hcs/devices/catalog.yaml); add it there with its specs and source")
    if dev["memory_mib"] <= 0:
        raise _fail(source, f"{where}.memory_mib", "must be > 0")
    if not 0 <= dev.get("memory_used_mib", 0) <= dev["memory_mib"]:
        raise _fail(source, f"{where}.memory_used_mib", "must be between 0 and memory_mib")
    if dev["numa_node"] < -1:
        raise _fail(source, f"{where}.numa_node", "must be >= -1 (-1 = unknown)")
    if not PCI_BUS_ID.match(dev["pci_bus_id"]):
        raise _fail(source, f"{where}.pci_bus_id", f"{dev['pci_bus_id']!r} is not domain:bus:device.function")
    if dev.get("health", "ok") not in HEALTH_STATES:
        raise _fail(source, f"{where}.health", f"must be one of {', '.join(HEALTH_STATES)}")
    return vendor


def _check_link(link: Any, where: str, source: str, vendor: str, own: int, devices_of_vendor: int,
                switches: int) -> None:
    """One link of device ``own`` (its index among the vendor's devices): to another device of the same
    vendor or (NVIDIA) to one of the profile's NVSwitches, of a known type, with a positive bandwidth."""
    if not isinstance(link, dict):
        raise _fail(source, where, "must be an object with peer (or switch), type and gbps")
    for name in link:
        if name not in ("peer", "switch", "type", "gbps", "version"):
            raise _fail(source, f"{where}.{name}", "unknown field (check the spelling; see driver/README.md)")
    kind: Any = link.get("type")
    gbps: Any = link.get("gbps")
    version: Any = link.get("version", 1)
    if "switch" in link:
        _check_switch_link(link, where, source, vendor, kind, switches)
    else:
        peer: Any = link.get("peer")
        if not _is(peer, int) or not 0 <= peer < devices_of_vendor:
            raise _fail(source, f"{where}.peer", f"{peer!r} names no {vendor} device on this node "
                        f"(valid: 0..{devices_of_vendor - 1})")
        if peer == own:
            raise _fail(source, f"{where}.peer", "a device cannot link to itself")
    if kind not in {t.value for t in LinkType}:
        raise _fail(source, f"{where}.type", f"{kind!r} is not one of {', '.join(t.value for t in LinkType)}")
    if not _is(gbps, float) or gbps <= 0:
        raise _fail(source, f"{where}.gbps", f"must be a positive number, got {gbps!r}")
    if not _is(version, int) or not 1 <= version <= 5:
        raise _fail(source, f"{where}.version", f"must be an NVLink generation 1..5, got {version!r}")


def _check_switch_link(link: dict[str, Any], where: str, source: str, vendor: str, kind: Any, switches: int) -> None:
    sw: Any = link["switch"]
    if "peer" in link:
        raise _fail(source, where, "set either peer (a direct link) or switch (a link to an NVSwitch), not both")
    if vendor != Vendor.NVIDIA.value or kind != LinkType.NVLINK.value:
        raise _fail(source, f"{where}.switch", "only NVIDIA devices link to NVSwitches, over nvlink")
    if not _is(sw, int) or not 0 <= sw < switches:
        raise _fail(source, f"{where}.switch", f"{sw!r} names no entry of nvswitches (the profile lists {switches})")


def _is(value: Any, typ: type) -> bool:
    if isinstance(value, bool):
        return typ is bool
    if typ is float:
        return isinstance(value, int | float)
    return isinstance(value, typ)
