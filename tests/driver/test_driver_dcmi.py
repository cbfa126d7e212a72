"""The simulated Ascend DCMI (libdcmi.so) through ctypes with the real struct layouts."""

from __future__ import annotations

from typing import Any

import pytest
from drv_sim import build, load_profile, run_child, vendor_devices

INVENTORY = r"""
from ctypes import byref, c_int, c_uint, create_string_buffer
d = lib("ascend")
assert d.dcmi_init() == 0
num = c_int(-1); cards = (c_int * 64)()
assert d.dcmi_get_card_list(byref(num), cards, 64) == 0
num2 = c_int(-1)
assert d.dcmi_get_card_num_list(byref(num2), cards, 64) == 0 and num2.value == num.value
small = (c_int * 1)()
out = {"count": num.value, "too_small": d.dcmi_get_card_list(byref(num2), small, 1) if num.value > 1 else -8001,
       "devices": []}
ver = create_string_buffer(64)
assert d.dcmi_get_driver_version(ver, 64) == 0
out["driver"] = ver.value.decode()
for i in range(num.value):
    card = cards[i]
    n = c_int(); logic = c_int(); phy = c_uint(); cid = c_int(); did = c_int()
    assert d.dcmi_get_device_num_in_card(card, byref(n)) == 0
    assert d.dcmi_get_device_logic_id(byref(logic), card, 0) == 0
    assert d.dcmi_get_device_phyid_from_logicid(logic.value, byref(phy)) == 0
    assert d.dcmi_get_card_id_device_id_from_logicid(byref(cid), byref(did), logic.value) == 0
    chip = DcmiChipInfo(); chip2 = DcmiChipInfoV2(); pcie = DcmiPcieInfoAll(); die = DcmiDieId()
    mem = DcmiMemoryInfo(); hbm = DcmiHbmInfo(); ecc = DcmiEccInfo()
    bw = DcmiHccsBandwidth(profiling_time=100)
    assert d.dcmi_get_device_chip_info(card, 0, byref(chip)) == 0
    assert d.dcmi_get_device_chip_info_v2(card, 0, byref(chip2)) == 0
    assert d.dcmi_get_device_pcie_info_v2(card, 0, byref(pcie)) == 0
    assert d.dcmi_get_device_die_v2(card, 0, 0, byref(die)) == 0
    assert d.dcmi_get_device_memory_info_v3(card, 0, byref(mem)) == 0
    assert d.dcmi_get_device_hbm_info(card, 0, byref(hbm)) == 0
    assert d.dcmi_get_device_ecc_info(card, 0, 2, byref(ecc)) == 0
    hccs = d.dcmi_get_hccs_link_bandwidth_info(card, 0, byref(bw))
    cpus = create_string_buffer(64); length = c_int()
    assert d.dcmi_get_affinity_cpu_info_by_device_id(card, 0, cpus, byref(length)) == 0
    product = create_string_buffer(64)
    assert d.dcmi_get_product_type(card, 0, product, 64) == 0
    health = c_uint(9); temp = c_int(); util = c_uint(); power = c_int(); count = c_int(-1)
    codes = (c_uint * 8)()
    assert d.dcmi_get_device_health(card, 0, byref(health)) == 0
    assert d.dcmi_get_device_temperature(card, 0, byref(temp)) == 0
    assert d.dcmi_get_device_utilization_rate(card, 0, 2, byref(util)) == 0
    assert d.dcmi_get_device_power_info(card, 0, byref(power)) == 0
    assert d.dcmi_get_device_errorcode_v2(card, 0, byref(count), codes, 8) == 0
    topo = []
    for j in range(num.value):
        t = c_int(-1)
        assert d.dcmi_get_topo_info_by_device_id(card, 0, cards[j], 0, byref(t)) == 0
        topo.append(t.value)
    out["devices"].append({
        "card": card, "n": n.value, "logic": logic.value, "phy": phy.value, "cid": cid.value, "did": did.value,
        "chip_type": chip.chip_type.decode(), "chip_name": chip.chip_name.decode(), "aicore": chip.aicore_cnt,
        "npu_name": chip2.npu_name.decode(), "vendor": pcie.venderid, "domain": pcie.domain,
        "bus": pcie.bdf_busid, "dev": pcie.bdf_deviceid, "fn": pcie.bdf_funcid,
        "die": "-".join(f"{w:08X}" for w in die.soc_die), "mem_mb": mem.memory_size, "avail_mb": mem.memory_available,
        "hbm_mb": hbm.memory_size, "hbm_used": hbm.memory_usage, "ecc": [ecc.enable_flag, ecc.double_bit_error_cnt],
        "hccs": hccs, "hccs_total": bw.total_txbw, "hccs_links": [x for x in bw.tx_bandwidth if x],
        "cpus": cpus.value.decode(), "cpus_len": length.value, "product": product.value.decode(),
        "health": health.value, "temp": temp.value, "util": util.value, "power": power.value,
        "errors": count.value, "topo": topo})
health = c_uint()
out["bad_card"] = d.dcmi_get_device_health(num.value, 0, byref(health))
out["bad_device"] = d.dcmi_get_device_health(0, 1, byref(health)) if num.value else -8007
print(json.dumps(out))
"""

ASCEND_PROFILES = ["ascend-910b-hccs-8", "mixed-a100-910b"]


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    build()


@pytest.fixture(scope="module", params=ASCEND_PROFILES)
def inventory(request: pytest.FixtureRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    return load_profile(request.param), run_child(INVENTORY, request.param)


def test_cards_identity_and_memory(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    profile, out = inventory
    want = vendor_devices(profile, "ascend")
    assert out["count"] == len(want) == 4 or out["count"] == len(want) == 8
    assert out["too_small"] == -8001
    assert out["driver"] == profile["driver_version"]
    for i, (d, got) in enumerate(zip(want, out["devices"], strict=True)):
        assert (got["card"], got["n"], got["logic"], got["cid"], got["did"]) == (i, 1, i, i, 0)
        assert got["phy"] == d["minor"]
        assert got["chip_type"] == "Ascend" and got["chip_name"] == got["npu_name"] == d["model"] == "910B3"
        assert got["aicore"] == 20
        assert got["product"] == "Atlas 800T A2"
        assert got["die"] == d["uuid"]
        dom, bus, rest = d["pci_bus_id"].split(":")
        dev, fn = rest.split(".")
        assert (got["vendor"], got["domain"], got["bus"], got["dev"], got["fn"]) == (
            0x19E5, int(dom, 16), int(bus, 16), int(dev, 16), int(fn, 16))
        assert got["mem_mb"] == got["avail_mb"] == got["hbm_mb"] == d["memory_mib"]
        assert got["hbm_used"] == 0
        assert got["ecc"] == [1, 0]
        assert got["cpus"] == f"{d['numa_node'] * 48}-{d['numa_node'] * 48 + 47}"
        assert got["cpus_len"] == len(got["cpus"])
        assert (got["health"], got["errors"]) == (0, 0)
        assert got["temp"] == d["temperature_c"]
        assert got["power"] > 0
    assert out["bad_card"] == -8007 and out["bad_device"] == -8007


def test_hccs_full_mesh_topology_and_bandwidth(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    profile, out = inventory
    want = vendor_devices(profile, "ascend")
    for i, (d, got) in enumerate(zip(want, out["devices"], strict=True)):
        peers = {link["peer"] for link in d["links"]}
        for j, t in enumerate(got["topo"]):
            assert t == (0 if i == j else 3 if j in peers else 2 if want[j]["numa_node"] == d["numa_node"] else 1)
        assert got["hccs"] == 0
        assert got["hccs_links"] == [56.0] * len(d["links"])
        assert got["hccs_total"] == 56.0 * len(d["links"])


def test_without_ascend_devices_the_card_list_is_empty() -> None:
    out = run_child(INVENTORY, "a100-80g-nvlink-8")
    assert out["count"] == 0 and out["devices"] == []


def test_calls_before_init_and_without_profile() -> None:
    code = r"""
from ctypes import byref, c_int, c_uint
d = lib("ascend")
num = c_int(); cards = (c_int * 8)(); h = c_uint()
before = d.dcmi_get_card_list(byref(num), cards, 8)
print(json.dumps({"before": before, "init": d.dcmi_init()}))
"""
    res = run_child(code, None)
    assert res["before"] == -8012  # not ready
    assert res["init"] == -8008  # no driver/device
