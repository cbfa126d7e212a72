"""ResourceSlice building: capacity, exchange rates, API limits, partitioned mode, config validation."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dra_helpers import GiB, make_device, make_devices  # noqa: E402

from hcs.devices.model import Health, Vendor  # noqa: E402
from hcs.errors import ConfigError  # noqa: E402
from hcs.node.dra.config import DraConfig  # noqa: E402
from hcs.node.dra.slices import build_slices, published_devices, quantity  # noqa: E402

CFG = DraConfig(node_name="node-a")


def _devices(slices):  # all devices across slices
    return [d for s in slices for d in s.spec.get("devices", [])]


@pytest.mark.parametrize(
    ("model", "rate", "expected"),
    [("a100-80g", 1.0, "312"), ("a800-80g", 0.95, "296400m"), ("h100-80g", 1.5, "468"),
     ("910b", 0.85, "265200m"), ("hygon-dcu", 0.6, "187200m")],
)
def test_tflops_capacity_uses_exchange_rate(model, rate, expected):
    (s,) = build_slices([make_device(model=model, rate=rate)], CFG)
    cap = s.spec["devices"][0]["capacity"]
    assert cap["tflopsFP16"]["value"] == expected
    assert cap["tflopsFP16"]["requestPolicy"] == {"default": "0", "validRange": {"min": "0"}}


def test_memory_capacity_and_request_policy():
    (s,) = build_slices([make_device(vram_gib=64)], replace(CFG, memory_step_bytes=2 * GiB))
    dev = s.spec["devices"][0]
    assert dev["allowMultipleAllocations"] is True
    assert dev["capacity"]["memory"] == {"value": "64Gi", "requestPolicy": {
        "default": "63Gi", "validRange": {"min": "1Gi", "step": "2Gi"}}}  # default: whole device, on a step
    (s,) = build_slices([make_device(vram_gib=80)], CFG)
    assert s.spec["devices"][0]["capacity"]["memory"]["requestPolicy"]["default"] == "80Gi"
    assert s.spec["driver"] == "ai.compute" and s.spec["nodeName"] == "node-a"
    assert "pool" not in s.spec  # the controller owns generation and count


def test_attributes_and_islands():
    d0 = make_device(index=0, island="nvlink-0")
    d1 = make_device(index=1)
    (s,) = build_slices([d0, d1], CFG, {"nvidia": "550.54.15"})
    a0, a1 = (d["attributes"] for d in s.spec["devices"])
    assert a0["island"] == {"string": "nvlink-0"} and a0["interconnect"] == {"string": "nvlink"}
    assert a1["island"]["string"] != a0["island"]["string"] and a1["interconnect"] == {"string": "pcie"}
    assert a0["uuid"] == {"string": d0.uuid} and a0["pciBusID"] == {"string": d0.pci_bus_id}
    assert a0["numaNode"] == {"int": 0} and a0["index"] == {"int": 0}
    assert a0["driverVersion"] == {"version": "550.54.15"}
    for name in [*a0, *s.spec["devices"][0]["capacity"]]:
        assert name.isidentifier() and len(name) <= 32  # C identifiers, as the API requires


def test_at_most_128_devices_per_slice():
    slices = build_slices(make_devices(200, vram_gib=16), CFG)
    assert [len(s.spec["devices"]) for s in slices] == [128, 72]
    assert [s.name for s in slices] == ["node-a-ai.compute-0", "node-a-ai.compute-1"]
    assert len({d["name"] for d in _devices(slices)}) == 200


def test_unhealthy_device_gets_noschedule_taint_and_64_limit():
    devs = make_devices(100, vram_gib=16)
    devs[3] = replace(devs[3], health=Health(score=10, reasons=("xid 79",)))
    slices = build_slices(devs, CFG)
    assert [len(s.spec["devices"]) for s in slices] == [64, 36]
    tainted = [d for d in _devices(slices) if d.get("taints")]
    assert [d["name"] for d in tainted] == ["nvidia-3"]
    assert tainted[0]["taints"] == [{"key": "ai.compute/unhealthy", "value": "true", "effect": "NoSchedule"}]


def test_deterministic_hash_changes_with_content():
    a = build_slices(make_devices(4), CFG)
    b = build_slices(list(reversed(make_devices(4))), CFG)
    assert [s.spec_hash for s in a] == [s.spec_hash for s in b]
    c = build_slices(make_devices(3), CFG)
    assert a[0].spec_hash != c[0].spec_hash


def test_no_devices_still_one_empty_slice():
    (s,) = build_slices([], CFG)
    assert s.spec["devices"] == []


def test_partitioned_mode_counters_in_own_slice():
    cfg = replace(CFG, mode="partitioned", partition_bytes=(20 * GiB,))
    devs = make_devices(10, vram_gib=80)
    slices = build_slices(devs, cfg)
    counter_slices = [s for s in slices if "sharedCounters" in s.spec]
    device_slices = [s for s in slices if "devices" in s.spec]
    assert all("devices" not in s.spec for s in counter_slices)
    assert [len(s.spec["sharedCounters"]) for s in counter_slices] == [8, 2]
    assert all(len(s.spec["devices"]) <= 64 for s in device_slices)
    devices = _devices(slices)
    assert len(devices) == 10 * (1 + 4)
    whole = next(d for d in devices if d["name"] == "nvidia-0")
    part = next(d for d in devices if d["name"] == "nvidia-0-20gi-3")
    assert whole["consumesCounters"][0]["counters"]["memory"]["value"] == "80Gi"
    assert part["consumesCounters"] == [{"counterSet": "nvidia-0-counters",
                                         "counters": {"memory": {"value": "20Gi"}}}]
    assert part["capacity"]["tflopsFP16"]["value"] == "78"
    assert "allowMultipleAllocations" not in part
    pub = published_devices(devs, cfg)
    assert pub["nvidia-0-20gi-3"].memory_bytes == 20 * GiB and pub["nvidia-0-20gi-3"].device.key == "nvidia-0"


def test_mixed_vendors_sorted_and_named_by_key():
    devs = [make_device(Vendor.HYGON, 0, vram_gib=16, model="hygon-dcu", rate=0.6),
            make_device(Vendor.ASCEND, 1, vram_gib=64, model="910b", rate=0.85)]
    (s,) = build_slices(devs, CFG)
    assert [d["name"] for d in s.spec["devices"]] == ["ascend-1", "hygon-0"]


def test_quantity_formatting():
    assert quantity(312) == "312" and quantity(296.4) == "296400m" and quantity(0.0) == "0"


def test_config_from_mapping_and_errors():
    cfg = DraConfig.from_mapping({"cdiDir": "/tmp/cdi", "memoryStep": "512Mi", "mode": "partitioned",
                                  "partitionSizes": ["20Gi", "10Gi"]}, node_name="n")
    assert cfg.cdi_dir == "/tmp/cdi" and cfg.memory_step_bytes == 512 << 20
    assert cfg.partition_bytes == (10 * GiB, 20 * GiB)
    assert str(cfg.dra_socket) == "/var/lib/kubelet/plugins/ai.compute/dra.sock"
    assert str(cfg.registration_socket) == "/var/lib/kubelet/plugins_registry/ai.compute-reg.sock"
    with pytest.raises(ConfigError, match=r"node.dra.mode: 'slices' is not one of"):
        DraConfig.from_mapping({"mode": "slices"}, node_name="n")
    with pytest.raises(ConfigError, match=r"memoryStep"):
        DraConfig.from_mapping({"memoryStep": "lots"}, node_name="n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) cdidir"):
        DraConfig.from_mapping({"cdidir": "/x"}, node_name="n")
    with pytest.raises(ConfigError, match=r"driverName"):
        DraConfig.from_mapping({"driverName": "AI_Compute"}, node_name="n")
    with pytest.raises(ConfigError, match=r"node name is empty"):
        DraConfig.from_mapping({}, node_name="")
