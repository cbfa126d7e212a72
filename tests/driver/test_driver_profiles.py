"""Node profiles: the shipped set, malformed profiles failing every library's init with a clear message,
and property-based checks of the C profile parser (driver/build/bin/sim-profile-check)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from drv_sim import DRIVER, PROFILES, SHIPPED, build, load_profile, run_child
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CHECK = DRIVER / "build" / "bin" / "sim-profile-check"
VENDOR_LINK = {"nvidia": "nvlink", "ascend": "hccs", "hygon": "xgmi", "cambricon": "mlulink"}
UUID_STYLE = {
    "nvidia": r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "ascend": r"[0-9A-F]{8}(-[0-9A-F]{8}){4}",
    "hygon": r"0x[0-9a-f]{16}",
    "cambricon": r"MLU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
}


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    build()


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECK), str(path)], capture_output=True, text=True, timeout=30)


# ---- shipped profiles ------------------------------------------------------------------------------

def test_shipped_profiles_are_exactly_the_documented_set() -> None:
    assert sorted(p.stem for p in PROFILES.glob("*.json")) == sorted(SHIPPED)


def test_shipped_profiles_match_their_generator(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(DRIVER / "tools" / "make_profiles.py"), str(tmp_path)], check=True)
    for name in SHIPPED:
        assert (tmp_path / f"{name}.json").read_text() == (PROFILES / f"{name}.json").read_text(), name


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_is_valid_and_realistic(name: str) -> None:
    proc = check(PROFILES / f"{name}.json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    profile = load_profile(name)
    assert summary["name"] == name == profile["name"]
    devices = profile["devices"]
    assert len({d["pci_bus_id"] for d in devices}) == len(devices)
    assert len({d["uuid"] for d in devices}) == len(devices)
    assert {d["numa_node"] for d in devices} == {0, 1}
    for d in devices:
        assert re.fullmatch(UUID_STYLE[d["vendor"]], d["uuid"]), d["uuid"]
        peers = [x for x in devices if x["vendor"] == d["vendor"]]
        me = peers.index(d)
        for link in d.get("links", []):
            assert link["type"] == VENDOR_LINK[d["vendor"]]
            if "switch" in link:
                assert 0 <= link["switch"] < len(profile["nvswitches"])
                continue
            # Each side lists its own links; the shipped profiles are symmetric.
            assert any(back.get("peer") == me for back in peers[link["peer"]]["links"])


EXPECTED = {
    # NVIDIA profiles list every NVLink (50 GB/s each): 12 per A100, 18 per H100/H200.
    "a100-80g-nvlink-8": ({"nvidia": 8}, "NVIDIA A100-SXM4-80GB", 81920, {50}),
    "a100-40g-nvlink-2x4": ({"nvidia": 8}, "NVIDIA A100-SXM4-40GB", 40960, {50}),
    "h100-nvlink-8": ({"nvidia": 8}, "NVIDIA H100 80GB HBM3", 81559, {50}),
    "hgx-a100-nvswitch-8": ({"nvidia": 8}, "NVIDIA A100-SXM4-80GB", 81920, {50}),
    "hgx-h100-nvswitch-8": ({"nvidia": 8}, "NVIDIA H100 80GB HBM3", 81559, {50}),
    "hgx-h200-nvswitch-8": ({"nvidia": 8}, "NVIDIA H200", 143771, {50}),
    "h100-nvl-bridge-4": ({"nvidia": 4}, "NVIDIA H100 NVL", 95830, {50}),
    "a100-pcie-bridge-4": ({"nvidia": 4}, "NVIDIA A100 80GB PCIe", 81920, {50}),
    "atlas800-910a-8": ({"ascend": 8}, "910A", 32768, {30}),
    "atlas800t-a2-910b-8": ({"ascend": 8}, "910B3", 65536, {56}),
    "mlu370-x8-bridge-2x4": ({"cambricon": 8}, "MLU370-X8", 49152, {66.7}),
    "t4-pcie-4": ({"nvidia": 4}, "Tesla T4", 15360, set()),
    "ascend-910b-hccs-8": ({"ascend": 8}, "910B3", 65536, {56}),
    "hygon-k100ai-xgmi-8": ({"hygon": 8}, "K100_AI", 65536, {100}),
    "mlu370-x8-mlulink-8": ({"cambricon": 8}, "MLU370-X8", 49152, {28.5}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_single_vendor_profiles(name: str) -> None:
    vendors, model, mib, gbps = EXPECTED[name]
    summary = json.loads(check(PROFILES / f"{name}.json").stdout)
    assert summary["vendors"] == vendors
    devices = load_profile(name)["devices"]
    assert {d["model"] for d in devices} == {model}
    assert {d["memory_mib"] for d in devices} == {mib}
    assert {link["gbps"] for d in devices for link in d.get("links", [])} == gbps


def test_mixed_and_island_profiles() -> None:
    mixed = json.loads(check(PROFILES / "mixed-a100-910b.json").stdout)
    assert mixed["vendors"] == {"nvidia": 4, "ascend": 4}
    islands = load_profile("a100-40g-nvlink-2x4")["devices"]
    for i, d in enumerate(islands):
        assert {link["peer"] for link in d["links"]} == (set(range(4)) if i < 4 else set(range(4, 8))) - {i}


# ---- malformed profiles fail every library's init -------------------------------------------------

INIT_ALL = r"""
import ctypes
codes = {}
codes["nvidia"] = lib("nvidia").nvmlInitWithFlags(0)
codes["ascend"] = lib("ascend").dcmi_init()
codes["hygon"] = rsmi(lib("hygon")).rsmi_init(0)
codes["cambricon"] = lib("cambricon").cndevInit(0)
print(json.dumps(codes))
"""
# Vendor error codes returned by init for a profile that is present but invalid.
BAD_PROFILE_CODES = {"nvidia": 999, "ascend": -8005, "hygon": 8, "cambricon": 7}


def _good() -> dict[str, Any]:
    return copy.deepcopy(load_profile("mixed-a100-910b"))


def _missing_field(p: dict[str, Any]) -> None:
    del p["devices"][2]["memory_mib"]


def _unknown_vendor(p: dict[str, Any]) -> None:
    p["devices"][5]["vendor"] = "intel"


def _duplicate_pci(p: dict[str, Any]) -> None:
    p["devices"][3]["pci_bus_id"] = p["devices"][1]["pci_bus_id"]


def _bad_peer(p: dict[str, Any]) -> None:
    p["devices"][6]["links"][0]["peer"] = 4  # only 4 ascend devices: 0..3


def _self_peer(p: dict[str, Any]) -> None:
    p["devices"][0]["links"][0]["peer"] = 0


MALFORMED = {
    "missing field": (_missing_field, "devices[2].memory_mib: missing (required integer)"),
    "unknown vendor": (_unknown_vendor, 'devices[5].vendor: unknown vendor "intel"'),
    "duplicate pci": (_duplicate_pci, "devices[3].pci_bus_id: duplicate of devices[1] (0000:0f:00.0)"),
    "nonexistent peer": (_bad_peer, "devices[6].links[0].peer: 4 names no ascend device"),
    "self peer": (_self_peer, "devices[0].links[0].peer: 0 is the device itself"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_profile_fails_init_naming_file_and_field(case: str, tmp_path: Path) -> None:
    mutate, message = MALFORMED[case]
    profile = _good()
    mutate(profile)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(profile, indent=2))
    res = run_child(INIT_ALL, path)
    assert {v: res[v] for v in BAD_PROFILE_CODES} == BAD_PROFILE_CODES
    lines = [ln for ln in res["_stderr"].splitlines() if ln.startswith("hcs-sim: ")]
    assert lines and all(ln == f"hcs-sim: {path}: {message}" or ln.startswith(f"hcs-sim: {path}: {message}")
                         for ln in lines), res["_stderr"]
    assert len(lines) == 4  # one line per library init


def test_bad_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "devices": [\n    {"vendor": "nvidia",}\n  ]\n}\n')
    res = run_child(INIT_ALL, path)
    assert res["nvidia"] == 999
    assert f"hcs-sim: {path}: invalid JSON: line 3, column 25: expected a string key in object" in res["_stderr"]


def test_missing_profile_file(tmp_path: Path) -> None:
    res = run_child(INIT_ALL, tmp_path / "nope.json")
    assert res == {**BAD_PROFILE_CODES, "_stderr": res["_stderr"]}
    assert f"hcs-sim: {tmp_path / 'nope.json'}: cannot open: No such file or directory" in res["_stderr"]


def test_no_profile_set_means_no_driver() -> None:
    res = run_child(INIT_ALL, None)
    assert (res["nvidia"], res["ascend"], res["hygon"], res["cambricon"]) == (9, -8008, 3, 1)


# ---- property-based: the C parser against generated profiles -------------------------------------

hexbyte = st.integers(min_value=0, max_value=255)
vendors = st.sampled_from(sorted(VENDOR_LINK))


@st.composite
def profiles(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(min_value=0, max_value=12))
    buses = draw(st.lists(hexbyte, min_size=n, max_size=n, unique=True))
    devs: list[dict[str, Any]] = []
    for i in range(n):
        d: dict[str, Any] = {
            "vendor": draw(vendors),
            "model": draw(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_characters="\x7f"),
                                  min_size=1, max_size=40)),
            "uuid": f"id-{i}-{draw(st.integers(0, 10**9))}",
            "pci_bus_id": f"{draw(st.integers(0, 0xFFFF)):04x}:{buses[i]:02x}:{draw(st.integers(0, 31)):02x}."
                          f"{draw(st.integers(0, 7))}",
            "memory_mib": draw(st.integers(1, 1 << 22)),
            "numa_node": draw(st.integers(-1, 7)),
        }
        if draw(st.booleans()):
            d["memory_used_mib"] = draw(st.integers(0, d["memory_mib"]))
        if draw(st.booleans()):
            d["health"] = draw(st.sampled_from(["ok", "warning", "critical", "lost"]))
        if draw(st.booleans()):
            d["temperature_c"] = draw(st.integers(-60, 200))
        devs.append(d)
    counts: dict[str, int] = {}
    local = []
    for d in devs:
        local.append(counts.get(d["vendor"], 0))
        counts[d["vendor"]] = local[-1] + 1
    for d, me in zip(devs, local, strict=True):
        others = [k for k in range(counts[d["vendor"]]) if k != me]
        if others and draw(st.booleans()):
            peers = draw(st.lists(st.sampled_from(others), max_size=6))
            d["links"] = [{"peer": p, "type": draw(st.sampled_from([VENDOR_LINK[d["vendor"]], "pcie"])),
                           "gbps": draw(st.floats(0.5, 2000, allow_nan=False))} for p in peers]
    # NUL cannot appear in C strings: the parser rejects \u0000 (tested in the C self-test); a lone
    # surrogate cannot be written as UTF-8, so no valid profile holds one.
    name = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20)
    return {"name": draw(name), "devices": devs}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(profile=profiles())
def test_generated_valid_profiles_are_accepted(profile: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(profile, ensure_ascii=bool(len(profile["devices"]) % 2)))
    proc = check(path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["devices"] == len(profile["devices"])
    counts: dict[str, int] = {}
    for d in profile["devices"]:
        counts[d["vendor"]] = counts.get(d["vendor"], 0) + 1
    assert summary["vendors"] == counts
    assert summary["links"] == sum(len(d.get("links", [])) for d in profile["devices"])


DEFECTS = ["drop_required", "wrong_type", "duplicate_uuid", "bad_peer", "bad_link_type", "negative_memory"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(profile=profiles(), defect=st.sampled_from(DEFECTS), data=st.data())
def test_generated_defects_are_rejected_naming_the_field(profile: dict[str, Any], defect: str, data: st.DataObject,
                                                         tmp_path: Path) -> None:
    devs = profile["devices"]
    if not devs:
        profile["devices"] = "none"
        expect = "devices: expected an array, got string"
    else:
        i = data.draw(st.integers(0, len(devs) - 1))
        d = devs[i]
        if defect == "drop_required":
            key = data.draw(st.sampled_from(["vendor", "model", "uuid", "pci_bus_id", "memory_mib", "numa_node"]))
            del d[key]
            expect = f"devices[{i}].{key}: missing"
        elif defect == "wrong_type":
            d["memory_mib"] = str(d["memory_mib"])
            expect = f"devices[{i}].memory_mib: expected an integer, got string"
        elif defect == "duplicate_uuid" and i > 0:
            d["uuid"] = devs[0]["uuid"]
            expect = f"devices[{i}].uuid: duplicate of devices[0]"
        elif defect == "bad_peer":
            n = sum(1 for x in devs if x["vendor"] == d["vendor"])
            d["links"] = [{"peer": n, "type": VENDOR_LINK[d["vendor"]], "gbps": 1}]
            expect = f"devices[{i}].links[0].peer: {n} names no {d['vendor']} device"
        elif defect == "bad_link_type":
            other = next(t for v, t in VENDOR_LINK.items() if v != d["vendor"])
            d["links"] = [{"peer": 0, "type": other, "gbps": 1}]
            # Peer 0 may be the device itself or out of range; both are reported on the link.
            expect = f"devices[{i}].links[0]."
        else:
            d["memory_mib"] = -data.draw(st.integers(0, 10))
            expect = f"devices[{i}].memory_mib: "
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(profile))
    proc = check(path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"hcs-sim: {path}: {expect}"), proc.stderr
