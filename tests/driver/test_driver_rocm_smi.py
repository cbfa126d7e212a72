"""The simulated Hygon ROCm-SMI (librocm_smi64.so.2) through ctypes."""

from __future__ import annotations

from typing import Any

import pytest
from drv_sim import build, load_profile, run_child, vendor_devices

INVENTORY = r"""
from ctypes import byref, c_bool, c_char_p, c_int, c_int64, c_uint16, c_uint32, c_uint64, create_string_buffer
r = rsmi(lib("hygon"))
assert r.rsmi_init(0) == 0
n = c_uint32(99)
assert r.rsmi_num_monitor_devices(byref(n)) == 0
msg = c_char_p()
assert r.rsmi_status_string(10, byref(msg)) == 0
out = {"count": n.value, "status10": msg.value.decode(), "devices": []}
for i in range(n.value):
    name = create_string_buffer(64); serial = create_string_buffer(64)
    uid = c_uint64(); did = c_uint16(); vid = c_uint16(); bdf = c_uint64(); total = c_uint64(); used = c_uint64()
    numa = c_uint32(); temp = c_int64(); busy = c_uint32(); ecc = RsmiErrorCount(); power = c_uint64()
    hive = c_uint64(); xerr = c_int(-1)
    assert r.rsmi_dev_name_get(i, name, 64) == 0
    assert r.rsmi_dev_serial_number_get(i, serial, 64) == 0
    assert r.rsmi_dev_unique_id_get(i, byref(uid)) == 0
    assert r.rsmi_dev_id_get(i, byref(did)) == 0
    assert r.rsmi_dev_vendor_id_get(i, byref(vid)) == 0
    assert r.rsmi_dev_pci_id_get(i, byref(bdf)) == 0
    assert r.rsmi_dev_memory_total_get(i, 0, byref(total)) == 0
    assert r.rsmi_dev_memory_usage_get(i, 0, byref(used)) == 0
    assert r.rsmi_topo_get_numa_node_number(i, byref(numa)) == 0
    assert r.rsmi_dev_temp_metric_get(i, 0, 0, byref(temp)) == 0
    assert r.rsmi_dev_busy_percent_get(i, byref(busy)) == 0
    assert r.rsmi_dev_ecc_count_get(i, c_uint64(1), byref(ecc)) == 0
    assert r.rsmi_dev_power_ave_get(i, 0, byref(power)) == 0
    assert r.rsmi_dev_xgmi_hive_id_get(i, byref(hive)) == 0
    assert r.rsmi_dev_xgmi_error_status(i, byref(xerr)) == 0
    pairs = []
    for j in range(n.value):
        if j == i:
            continue
        hops = c_uint64(); typ = c_int(); weight = c_uint64(); p2p = c_bool()
        assert r.rsmi_topo_get_link_type(i, j, byref(hops), byref(typ)) == 0
        assert r.rsmi_topo_get_link_weight(i, j, byref(weight)) == 0
        assert r.rsmi_is_P2P_accessible(i, j, byref(p2p)) == 0
        pairs.append([j, hops.value, typ.value, weight.value, p2p.value])
    out["devices"].append({
        "name": name.value.decode(), "serial": serial.value.decode(), "uid": f"0x{uid.value:016x}",
        "dev_id": did.value, "vendor": vid.value, "bdf": bdf.value, "total": total.value, "used": used.value,
        "numa": numa.value, "temp": temp.value, "busy": busy.value, "ecc": [ecc.correctable_err, ecc.uncorrectable_err],
        "power": power.value, "hive": hive.value, "xgmi_err": xerr.value, "pairs": pairs})
t = c_int(); h = c_uint64()
out["self_pair"] = r.rsmi_topo_get_link_type(0, 0, byref(h), byref(t))
out["bad_index"] = r.rsmi_dev_pci_id_get(n.value, byref(h))
out["small_name"] = r.rsmi_dev_name_get(0, create_string_buffer(4), 4)
assert r.rsmi_shut_down() == 0
out["after_shutdown"] = r.rsmi_num_monitor_devices(byref(n))
print(json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    build()


@pytest.fixture(scope="module")
def inventory() -> tuple[dict[str, Any], dict[str, Any]]:
    return load_profile("hygon-k100ai-xgmi-8"), run_child(INVENTORY, "hygon-k100ai-xgmi-8")


def test_identity_memory_pci_numa(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    profile, out = inventory
    want = vendor_devices(profile, "hygon")
    assert out["count"] == len(want) == 8
    assert out["status10"].startswith("RSMI_STATUS_NOT_FOUND")
    for d, got in zip(want, out["devices"], strict=True):
        assert got["name"] == d["model"] == "K100_AI"
        assert got["serial"] == d["serial"]
        assert got["uid"] == d["uuid"]
        assert got["vendor"] == 0x1D94 and got["dev_id"] == 0x6320
        dom, bus, rest = d["pci_bus_id"].split(":")
        dev, fn = rest.split(".")
        assert got["bdf"] == (int(dom, 16) << 32) | (int(bus, 16) << 8) | (int(dev, 16) << 3) | int(fn, 16)
        assert got["total"] == d["memory_mib"] << 20 and got["used"] == 0
        assert got["numa"] == d["numa_node"]
        assert got["temp"] == d["temperature_c"] * 1000
        assert got["busy"] == 0 and got["ecc"] == [0, 0] and got["xgmi_err"] == 0
        assert got["power"] > 0


def test_xgmi_links_and_single_hive(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    profile, out = inventory
    want = vendor_devices(profile, "hygon")
    hives = {got["hive"] for got in out["devices"]}
    assert len(hives) == 1 and hives != {0}
    for d, got in zip(want, out["devices"], strict=True):
        peers = {link["peer"] for link in d["links"]}
        for j, hops, typ, weight, p2p in got["pairs"]:
            assert j in peers
            assert (hops, typ, weight, p2p) == (1, 2, 15, True)  # XGMI


def test_error_codes(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, out = inventory
    assert out["self_pair"] == 1  # INVALID_ARGS
    assert out["bad_index"] == 1
    assert out["small_name"] == 11  # INSUFFICIENT_SIZE (truncated copy)
    assert out["after_shutdown"] == 8  # INIT_ERROR


def test_pcie_only_devices_are_not_in_a_hive(tmp_path: Any) -> None:
    profile = load_profile("hygon-k100ai-xgmi-8")
    for d in profile["devices"]:
        d.pop("links")
    path = tmp_path / "hygon-pcie.json"
    import json

    path.write_text(json.dumps(profile))
    out = run_child(INVENTORY, path)
    assert {got["hive"] for got in out["devices"]} == {0}
    want = profile["devices"]
    for i, got in enumerate(out["devices"]):
        for j, hops, typ, _weight, p2p in got["pairs"]:
            same = want[i]["numa_node"] == want[j]["numa_node"]
            assert typ == 1  # PCIe
            assert (hops, p2p) == ((2, True) if same else (3, False))
