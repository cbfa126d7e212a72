"""The simulated Cambricon CNDev (libcndev.so) through ctypes with versioned structs."""

from __future__ import annotations

from typing import Any

import pytest
from drv_sim import build, load_profile, run_child, vendor_devices

INVENTORY = r"""
from ctypes import byref, c_int32
c = cndev(lib("cambricon"))
assert c.cndevInit(0) == 0
info = CnCardInfo(version=CNDEV_VERSION_6)
assert c.cndevGetDeviceCount(byref(info)) == 0
out = {"count": info.number, "devices": []}
for i in range(info.number):
    h = c_int32(-1)
    assert c.cndevGetDeviceHandleByIndex(i, byref(h)) == 0
    h = h.value
    name = CnCardName(version=6); uuid = CnUUID(version=6); sn = CnCardSN(version=6); pci = CnPCIeInfoV2()
    mem = CnMemoryInfoV2(); numa = CnNUMANodeId(version=6); health = CnCardHealthState(version=6)
    temp = CnTemperatureInfo(version=6); util = CnUtilizationInfo(version=6); ecc = CnECCInfo(version=6)
    for fn, arg in [("cndevGetCardName", name), ("cndevGetUUID", uuid), ("cndevGetCardSN", sn),
                    ("cndevGetPCIeInfoV2", pci), ("cndevGetMemoryUsageV2", mem), ("cndevGetNUMANodeIdByDevId", numa),
                    ("cndevGetCardHealthState", health), ("cndevGetTemperatureInfo", temp),
                    ("cndevGetDeviceUtilizationInfo", util), ("cndevGetECCInfo", ecc)]:
        rc = getattr(c, fn)(byref(arg), h)
        assert rc == 0, (fn, rc)
    ports = c.cndevGetMLULinkPortNumber(h)
    links = []
    for k in range(ports):
        st = CnMLULinkStatusV2(); ri = CnMLULinkRemoteInfo(version=6)
        assert c.cndevGetMLULinkStatusV2(byref(st), h, k) == 0
        assert c.cndevGetMLULinkRemoteInfo(byref(ri), h, k) == 0
        links.append({"mac": st.macState, "serdes": st.serdesState, "uuid": cstr(ri.uuid), "slot": ri.slotId,
                      "port": ri.portId})
    rel = []
    for j in range(info.number):
        t = CnTopologyRelationship(version=6)
        assert c.cndevTopologyGetRelationship(byref(t), h, j) == 0
        rel.append(t.relation)
    out["devices"].append({
        "name_id": name.id, "name": c.cndevGetCardNameStringByDevId(h).decode(), "uuid": cstr(uuid.uuid),
        "sn": sn.sn, "vendor": pci.vendor, "domain": pci.domain, "bus": pci.bus, "dev": pci.device, "fn": pci.function,
        "total_mb": mem.physicalMemoryTotal, "used_mb": mem.physicalMemoryUsed, "numa": numa.nodeId,
        "health": [health.health, health.deviceState, health.driverState], "temp": temp.board,
        "util": util.averageCoreUtilization, "ecc": [ecc.correctedError, ecc.uncorrectedError],
        "ports": ports, "links": links, "rel": rel})
st = CnMLULinkStatusV2()
out["bad_link"] = c.cndevGetMLULinkStatusV2(byref(st), 0, 99)
out["bad_handle"] = c.cndevGetUUID(byref(CnUUID(version=6)), info.number)
out["bad_version"] = c.cndevGetUUID(byref(CnUUID(version=0)), 0)
out["error_string"] = c.cndevGetErrorString(6).decode()
print(json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    build()


@pytest.fixture(scope="module")
def inventory() -> tuple[dict[str, Any], dict[str, Any]]:
    return load_profile("mlu370-x8-mlulink-8"), run_child(INVENTORY, "mlu370-x8-mlulink-8")


def test_identity_memory_pci_numa(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    profile, out = inventory
    want = vendor_devices(profile, "cambricon")
    assert out["count"] == len(want) == 8
    for d, got in zip(want, out["devices"], strict=True):
        assert got["name_id"] == 23 and got["name"] == d["model"] == "MLU370-X8"
        assert d["uuid"] == f"MLU-{got['uuid']}" and len(got["uuid"]) == 36
        assert got["sn"] == int(d["serial"], 16)
        dom, bus, rest = d["pci_bus_id"].split(":")
        dev, fn = rest.split(".")
        assert (got["vendor"], got["domain"], got["bus"], got["dev"], got["fn"]) == (
            0xCABC, int(dom, 16), int(bus, 16), int(dev, 16), int(fn, 16))
        assert got["total_mb"] == d["memory_mib"] and got["used_mb"] == 0
        assert got["numa"] == d["numa_node"]
        assert got["health"] == [1, 1, 4]  # healthy, GOOD, RUNNING
        assert got["temp"] == d["temperature_c"] and got["util"] == 0 and got["ecc"] == [0, 0]


def test_mlulink_ports_name_their_peers(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    profile, out = inventory
    want = vendor_devices(profile, "cambricon")
    for i, (d, got) in enumerate(zip(want, out["devices"], strict=True)):
        assert got["ports"] == len(d["links"]) == 7
        for link, spec in zip(got["links"], d["links"], strict=True):
            peer = want[spec["peer"]]
            assert (link["mac"], link["serdes"]) == (1, 1)
            assert f"MLU-{link['uuid']}" == peer["uuid"]
            assert link["slot"] == spec["peer"]
            # The remote port is the peer's port that links back to this device.
            back = [k for k, pl in enumerate(peer["links"]) if pl["peer"] == i]
            assert link["port"] == back[0]
        for j, rel in enumerate(got["rel"]):
            assert rel == (0 if i == j else 5 if want[j]["numa_node"] == d["numa_node"] else 6)


def test_error_codes(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, out = inventory
    assert out["bad_link"] == 11  # INVALID_LINK
    assert out["bad_handle"] == 6  # INVALID_DEVICE_ID
    assert out["bad_version"] == 3  # UNSUPPORTED_API_VERSION
    assert out["error_string"] == "CNDEV_ERROR_INVALID_DEVICE_ID"


def test_init_without_profile_is_no_driver() -> None:
    res = run_child('c = lib("cambricon")\nprint(json.dumps({"init": c.cndevInit(0)}))', None)
    assert res["init"] == 1  # NO_DRIVER
