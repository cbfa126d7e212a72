"""`hcs inspect` through the real simulated C libraries, one fresh process per profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "driver" / "profiles"
LIBDIR = ROOT / "driver" / "build" / "lib"
GIB = 2**30

pytestmark = pytest.mark.skipif(not (LIBDIR / "libnvidia-ml.so.1").exists(),
                                reason="simulated drivers not built (run `make dev`)")


def inspect(profile: str | Path, *args: str, faults: Path | None = None, check: bool = True,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HCS_SIM_PROFILE=str(profile if isinstance(profile, Path) else PROFILES / profile))
    env.pop("HCS_DRIVER_PATH", None)
    if faults is not None:
        env["HCS_SIM_FAULTS"] = str(faults)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "hcs.cli", "inspect", *args], env=env, capture_output=True,
                          text=True, check=check, timeout=60)


def inspect_json(profile: str | Path, **kwargs: object) -> dict:
    return json.loads(inspect(profile, "--output", "json", **kwargs).stdout)  # type: ignore[arg-type]


# profile, {vendor: count}, per-device VRAM GiB, island sizes (sorted), fabric
EXPECTED = [
    ("a100-80g-nvlink-8.json", {"nvidia": 8}, 80, [8], "nvlink"),
    ("h100-nvlink-8.json", {"nvidia": 8}, 80, [8], "nvlink"),
    ("ascend-910b-hccs-8.json", {"ascend": 8}, 64, [8], "hccs"),
    ("hygon-k100ai-xgmi-8.json", {"hygon": 8}, 64, [8], "xgmi"),
    ("mlu370-x8-mlulink-8.json", {"cambricon": 8}, 48, [8], "mlulink"),
    ("t4-pcie-4.json", {"nvidia": 4}, 16, [1, 1, 1, 1], "pcie"),
    ("a100-40g-nvlink-2x4.json", {"nvidia": 8}, 40, [4, 4], "nvlink"),
]


@pytest.mark.parametrize(("profile", "counts", "vram_gib", "islands", "fabric"), EXPECTED)
def test_inventory_matches_profile(profile, counts, vram_gib, islands, fabric):
    out = inspect_json(profile)
    devices = out["devices"]
    profile_data = json.loads((PROFILES / profile).read_text())
    memory = {d["uuid"]: d["memory_mib"] << 20 for d in profile_data["devices"]}
    found: dict[str, int] = {}
    for d in devices:
        found[d["vendor"]] = found.get(d["vendor"], 0) + 1
        assert d["vram_total_bytes"] == memory[d["uuid"]], d
        assert abs(d["vram_total_bytes"] - vram_gib * GIB) <= 0.07 * vram_gib * GIB  # the marketing size
        assert d["health"] == {"score": 100, "reasons": []}, d
        assert d["uuid"] and d["island"] and d["model"] and not d["model"].startswith("unknown")
        assert d["pci_bus_id"].count(":") == 2
    assert found == counts
    assert sorted(len(i["members"]) for i in out["islands"]) == islands
    assert {i["link_type"] for i in out["islands"]} == {fabric}
    assert sorted(d["uuid"] for d in devices) == sorted(d["uuid"] for d in profile_data["devices"])
    assert sorted(d["pci_bus_id"] for d in devices) == sorted(d["pci_bus_id"].lower() for d in profile_data["devices"])


def test_mixed_node_reports_both_vendors_and_their_islands():
    out = inspect_json("mixed-a100-910b.json")
    assert {d["vendor"] for d in out["devices"]} == {"nvidia", "ascend"}
    by_type = {i["link_type"]: i for i in out["islands"]}
    assert set(by_type) == {"nvlink", "hccs"}
    assert all(m.startswith("nvidia-") for m in by_type["nvlink"]["members"])
    assert all(m.startswith("ascend-") for m in by_type["hccs"]["members"])


def test_exchange_rates_and_config_override(tmp_path):
    out = inspect_json("a100-80g-nvlink-8.json")
    assert out["devices"][0]["compute"]["rate"] == 1.0
    assert out["devices"][0]["compute"]["a100_equiv_tflops"] == 312.0
    cfg = tmp_path / "hcs.yaml"
    cfg.write_text("exchangeRates: {a100: 1.25}\n")
    out = json.loads(inspect("a100-80g-nvlink-8.json", "--output", "json", "--config", str(cfg)).stdout)
    assert out["devices"][0]["compute"]["a100_equiv_tflops"] == 390.0
    cfg.write_text("exchangeRates: {b200: 2}\n")
    bad = inspect("a100-80g-nvlink-8.json", "--config", str(cfg), check=False)
    assert bad.returncode == 1 and "exchangeRates.b200: unknown model" in bad.stderr


@pytest.mark.parametrize(
    ("profile", "vendor", "line", "reason"),
    [
        ("a100-80g-nvlink-8.json", "nvidia", "nvidia 3 ecc double", "ECC"),
        ("a100-80g-nvlink-8.json", "nvidia", "nvidia 3 health lost", "NVML query failed"),
        ("ascend-910b-hccs-8.json", "ascend", "ascend 3 health critical", "critical alarm"),
        ("hygon-k100ai-xgmi-8.json", "hygon", "hygon 3 ecc double", "uncorrectable ECC"),
        ("mlu370-x8-mlulink-8.json", "cambricon", "cambricon 3 health critical", "IN_PROBLEM"),
    ],
)
def test_fault_injection_makes_device_unhealthy_with_reason(tmp_path, profile, vendor, line, reason):
    faults = tmp_path / "node.faults"
    faults.write_text(line + "\n")
    out = inspect_json(profile, faults=faults)
    sick = next(d for d in out["devices"] if d["key"] == f"{vendor}-3")
    assert sick["health"]["score"] < 50
    assert any(reason in r for r in sick["health"]["reasons"]), sick["health"]
    others = [d for d in out["devices"] if d["key"] != f"{vendor}-3"]
    assert all(d["health"]["score"] == 100 for d in others)


def test_warning_degrades_but_keeps_device_usable(tmp_path):
    faults = tmp_path / "node.faults"
    faults.write_text("ascend 1 health warning\n")
    out = inspect_json("ascend-910b-hccs-8.json", faults=faults)
    dev = next(d for d in out["devices"] if d["key"] == "ascend-1")
    assert 50 <= dev["health"]["score"] < 100


def test_no_library_reports_what_it_looked_for(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HCS_SIM_PROFILE", "HCS_DRIVER_PATH")}
    env["HCS_DRIVER_PATH"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-m", "hcs.cli", "inspect"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0
    assert "No accelerators found" in res.stdout and "libnvidia-ml.so.1" in res.stdout and "libcndev.so" in res.stdout


def test_bad_profile_is_a_user_error_naming_the_field(tmp_path):
    data = json.loads((PROFILES / "a100-80g-nvlink-8.json").read_text())
    data["devices"][2]["pci_bus_id"] = data["devices"][0]["pci_bus_id"]
    bad = tmp_path / "dup.json"
    bad.write_text(json.dumps(data))
    res = inspect(bad, check=False)
    assert res.returncode == 1
    assert "devices[2].pci_bus_id: duplicate of devices[0]" in res.stderr


def test_library_missing_a_symbol_is_reported_and_skipped(tmp_path):
    # a library that has the right soname but none of the DCMI ABI
    src = tmp_path / "empty.c"
    src.write_text("int not_dcmi(void) { return 0; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "libdcmi.so"), str(src)], check=True)
    out = inspect_json("mixed-a100-910b.json", extra_env={"HCS_DRIVER_PATH": str(tmp_path)})
    ascend = next(s for s in out["libraries"] if s["vendor"] == "ascend")
    assert not ascend["loaded"] and "lacks symbol" in ascend["error"] and "dcmi_init" in ascend["error"]
    assert {d["vendor"] for d in out["devices"]} == {"nvidia"}


def test_table_output_is_readable():
    res = inspect("mixed-a100-910b.json")
    assert "DEVICE" in res.stdout and "ISLANDS" in res.stdout and "nvidia-0" in res.stdout
