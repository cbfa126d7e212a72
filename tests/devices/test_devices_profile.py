import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcs.devices.profile import load_profile, validate_profile
from hcs.errors import ConfigError


def device(i, vendor="nvidia", model="NVIDIA A100-SXM4-80GB", **extra):
    d = {"vendor": vendor, "model": model, "uuid": f"GPU-{i:04d}", "pci_bus_id": f"0000:{16 + i:02x}:00.0",
         "memory_mib": 81920, "numa_node": i // 4}
    d.update(extra)
    return d


def good_profile():
    return {"name": "t", "devices": [device(0, links=[{"peer": 1, "type": "nvlink", "gbps": 600}]),
                                     device(1, links=[{"peer": 0, "type": "nvlink", "gbps": 600}])]}


def test_good_profile_passes():
    validate_profile(good_profile())


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda p: p["devices"][1].pop("uuid"), "devices[1].uuid", "required"),
        (lambda p: p["devices"][0].update(vendor="intel"), "devices[0].vendor", "unknown vendor"),
        (lambda p: p["devices"][1].update(pci_bus_id="0000:10:00.0"), "devices[1].pci_bus_id", "duplicate"),
        (lambda p: p["devices"][0]["links"][0].update(peer=7), "devices[0].links[0].peer", "names no nvidia device"),
        (lambda p: p["devices"][0]["links"][0].update(peer=0), "devices[0].links[0].peer", "itself"),
        (lambda p: p["devices"][0].update(model="Voodoo 5"), "devices[0].model", "not a known nvidia model"),
        (lambda p: p["devices"][0].update(memory_mib="80Gi"), "devices[0].memory_mib", "must be int"),
        (lambda p: p["devices"][0].update(health="sad"), "devices[0].health", "must be one of"),
        (lambda p: p.update(devices=[]), "devices", "non-empty"),
    ],
)
def test_bad_profiles_name_the_field(mutate, field, message):
    profile = good_profile()
    mutate(profile)
    with pytest.raises(ConfigError) as info:
        validate_profile(profile, source="x.json")
    assert f"x.json: {field}:" in str(info.value)
    assert message in str(info.value)


def test_load_profile_reports_json_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"devices": [\n  {"vendor": }\n]}')
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON at line 2"):
        load_profile(path)


def test_load_missing_profile_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="HCS_SIM_PROFILE"):
        load_profile(tmp_path / "nope.json")


def test_shipped_profiles_are_valid():
    from pathlib import Path

    profiles = sorted((Path(__file__).parents[2] / "driver" / "profiles").glob("*.json"))
    assert len(profiles) >= 7
    for p in profiles:
        load_profile(p)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["vendor", "model", "uuid", "pci_bus_id", "memory_mib", "numa_node",
                                        "links", "health", "minor"]), _json, max_size=9))
def test_arbitrary_device_objects_give_config_errors_not_crashes(dev):
    try:
        validate_profile({"devices": [dev]})
    except ConfigError as exc:
        assert "devices" in str(exc)


@settings(deadline=None)
@given(st.integers(0, 7), st.sampled_from(["uuid", "pci_bus_id", "vendor", "memory_mib", "numa_node", "model"]))
def test_removing_any_required_field_is_reported(i, field):
    profile = {"devices": [device(k) for k in range(8)]}
    broken = copy.deepcopy(profile)
    del broken["devices"][i][field]
    with pytest.raises(ConfigError, match=rf"devices\[{i}\]\.{field}: is required"):
        validate_profile(broken)
    json.dumps(profile)  # the unbroken one stays valid JSON
    validate_profile(profile)
