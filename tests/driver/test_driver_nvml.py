"""The simulated NVML (libnvidia-ml.so.1) through pynvml (nvidia-ml-py), one child process per profile."""

from __future__ import annotations

from typing import Any

import pytest
from drv_sim import build, load_profile, run_child, vendor_devices

NVIDIA_PROFILES = ["a100-80g-nvlink-8", "a100-40g-nvlink-2x4", "h100-nvlink-8", "t4-pcie-4", "mixed-a100-910b"]

# Child: load the fake NVML by absolute path (soname match makes pynvml's CDLL reuse it), then
# dump everything HCS reads through pynvml.
INVENTORY = r"""
import ctypes
lib("nvidia")
import pynvml as n
n.nvmlInit()
out = {"driver": n.nvmlSystemGetDriverVersion(), "cuda": n.nvmlSystemGetCudaDriverVersion(),
       "cuda_v2": n.nvmlSystemGetCudaDriverVersion_v2(), "count": n.nvmlDeviceGetCount(), "devices": []}
handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(out["count"])]
addrs = [ctypes.cast(h, ctypes.c_void_p).value for h in handles]
addr = lambda h: ctypes.cast(h, ctypes.c_void_p).value
for i, h in enumerate(handles):
    pci = n.nvmlDeviceGetPciInfo(h)
    mem = n.nvmlDeviceGetMemoryInfo(h)
    mem2 = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    links = []
    for k in range(n.NVML_NVLINK_MAX_LINKS):
        try:
            state = n.nvmlDeviceGetNvLinkState(h, k)
        except n.NVMLError_NotSupported:
            continue
        links.append({"state": state, "remote": n.nvmlDeviceGetNvLinkRemotePciInfo(h, k).busId,
                      "version": n.nvmlDeviceGetNvLinkVersion(h, k)})
    out["devices"].append({
        "name": n.nvmlDeviceGetName(h), "uuid": n.nvmlDeviceGetUUID(h), "serial": n.nvmlDeviceGetSerial(h),
        "bus_id": pci.busId, "bus_id_legacy": pci.busIdLegacy, "domain": pci.domain, "bus": pci.bus,
        "device": pci.device, "pci_device_id": pci.pciDeviceId,
        "total": mem.total, "free": mem.free, "used": mem.used,
        "v2_total": mem2.total, "v2_reserved": mem2.reserved, "v2_free": mem2.free,
        "numa": n.nvmlDeviceGetNumaNodeId(h), "minor": n.nvmlDeviceGetMinorNumber(h),
        "cc": list(n.nvmlDeviceGetCudaComputeCapability(h)),
        "temp": n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
        "tempv": n.nvmlDeviceGetTemperatureV(h, n.NVML_TEMPERATURE_GPU),
        "util": n.nvmlDeviceGetUtilizationRates(h).gpu,
        "ecc": [n.nvmlDeviceGetTotalEccErrors(h, t, c) for t in (0, 1) for c in (0, 1)],
        "events": n.nvmlDeviceGetSupportedEventTypes(h),
        "topo": [n.nvmlDeviceGetTopologyCommonAncestor(h, h2) for h2 in handles],
        "by_uuid": addrs.index(addr(n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(h)))),
        "by_pci": addrs.index(addr(n.nvmlDeviceGetHandleByPciBusId(pci.busId))),
        "links": links,
    })
n.nvmlShutdown()
print(json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    build()


@pytest.fixture(scope="module", params=NVIDIA_PROFILES)
def inventory(request: pytest.FixtureRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    return load_profile(request.param), run_child(INVENTORY, request.param)


def test_identity_memory_pci_numa(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    profile, out = inventory
    want = vendor_devices(profile, "nvidia")
    assert out["count"] == len(want)
    assert out["driver"] == profile["driver_version"]
    assert out["cuda"] == out["cuda_v2"] and out["cuda"] >= 12000
    for i, (d, got) in enumerate(zip(want, out["devices"], strict=True)):
        assert got["name"] == d["model"]
        assert got["uuid"] == d["uuid"] and got["uuid"].startswith("GPU-")
        assert got["serial"] == d["serial"]
        dom, bus, rest = d["pci_bus_id"].split(":")
        assert got["bus_id"] == f"{int(dom, 16):08X}:{bus.upper()}:{rest.upper()}"
        assert got["bus_id_legacy"] == f"{int(dom, 16):04X}:{bus.upper()}:{rest.upper()}"
        assert (got["domain"], got["bus"]) == (int(dom, 16), int(bus, 16))
        assert got["pci_device_id"] & 0xFFFF == 0x10DE
        assert got["total"] == d["memory_mib"] << 20
        assert got["used"] == 0 and got["free"] == got["total"]
        assert got["v2_total"] == got["total"] and got["v2_reserved"] > 0
        assert got["v2_free"] == got["total"] - got["v2_reserved"]
        assert got["numa"] == d["numa_node"]
        assert got["minor"] == d["minor"]
        assert got["temp"] == got["tempv"] == d["temperature_c"]
        assert got["util"] == d["utilization_pct"]
        assert got["ecc"] == [0, 0, 0, 0]
        assert got["events"] == 0x1 | 0x2 | 0x8
        assert got["by_uuid"] == i and got["by_pci"] == i


def test_compute_capability_matches_model(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, out = inventory
    expected = {"A100": [8, 0], "H100": [9, 0], "T4": [7, 5]}
    for got in out["devices"]:
        key = next(k for k in expected if k in got["name"])
        assert got["cc"] == expected[key]


def test_nvlinks_are_the_profile_links(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    profile, out = inventory
    want = vendor_devices(profile, "nvidia")
    bus_of = [d["pci_bus_id"].split(":")[1].upper() for d in want]
    for d, got in zip(want, out["devices"], strict=True):
        assert len(got["links"]) == len(d.get("links", []))
        for link, spec in zip(got["links"], d.get("links", []), strict=True):
            assert link["state"] == 1
            if "switch" in spec:  # HGX boards: the far end of every NVLink is an NVSwitch
                switch_bus = profile["nvswitches"][spec["switch"]]["pci_bus_id"].split(":")[1].upper()
                assert link["remote"].split(":")[1] == switch_bus
            else:
                assert link["remote"].split(":")[1] == bus_of[spec["peer"]]
            assert link["version"] == spec.get("version") or {600: 3, 900: 4}[spec["gbps"]]


def test_topology_levels_follow_numa(inventory: tuple[dict[str, Any], dict[str, Any]]) -> None:
    profile, out = inventory
    want = vendor_devices(profile, "nvidia")
    for i, got in enumerate(out["devices"]):
        for j, level in enumerate(got["topo"]):
            if i == j:
                assert level == 0  # INTERNAL
            elif want[i]["numa_node"] == want[j]["numa_node"]:
                assert level == 40  # NODE
            else:
                assert level == 50  # SYSTEM


def test_two_islands_profile_has_no_cross_island_links() -> None:
    out = run_child(INVENTORY, "a100-40g-nvlink-2x4")
    buses = [d["bus_id"] for d in out["devices"]]
    for i, got in enumerate(out["devices"]):
        peers = {buses.index(link["remote"]) for link in got["links"]}
        island = set(range(4)) if i < 4 else set(range(4, 8))
        assert peers == island - {i}


def test_t4_has_no_nvlink_and_errors_are_real_codes() -> None:
    code = r"""
lib("nvidia")
import pynvml as n
n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)
res = {}
def code_of(fn, *a):
    try:
        fn(*a)
        return 0
    except n.NVMLError as e:
        return e.value
res["nvlink"] = code_of(n.nvmlDeviceGetNvLinkState, h, 0)
res["nvlink_past_max"] = code_of(n.nvmlDeviceGetNvLinkState, h, 36)
res["bad_index"] = code_of(n.nvmlDeviceGetHandleByIndex, 4)
res["bad_uuid"] = code_of(n.nvmlDeviceGetHandleByUUID, "GPU-00000000-0000-0000-0000-000000000000")
res["bad_pci"] = code_of(n.nvmlDeviceGetHandleByPciBusId, "0000:ff:00.0")
res["string"] = str(n.NVMLError(15))
n.nvmlShutdown()
res["after_shutdown"] = code_of(lambda: n.nvmlDeviceGetCount())
print(json.dumps(res))
"""
    res = run_child(code, "t4-pcie-4")
    assert res["nvlink"] == 3  # NOT_SUPPORTED
    assert res["nvlink_past_max"] == 2  # INVALID_ARGUMENT
    assert res["bad_index"] == 2
    assert res["bad_uuid"] == 6 and res["bad_pci"] == 6  # NOT_FOUND
    assert res["string"] == "GPU is lost"
    assert res["after_shutdown"] == 1  # UNINITIALIZED


def test_without_profile_init_reports_driver_not_loaded() -> None:
    code = r"""
lib("nvidia")
import pynvml as n
try:
    n.nvmlInit()
    print(json.dumps({"code": 0}))
except n.NVMLError as e:
    print(json.dumps({"code": e.value}))
"""
    res = run_child(code, None)
    assert res["code"] == 9  # DRIVER_NOT_LOADED
    assert "HCS_SIM_PROFILE is not set" in res["_stderr"]


def test_mixed_profile_shows_only_nvidia_devices() -> None:
    out = run_child(INVENTORY, "mixed-a100-910b")
    assert out["count"] == 4
    assert {d["name"] for d in out["devices"]} == {"NVIDIA A100-SXM4-80GB"}
