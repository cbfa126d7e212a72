"""Pure parts of the node agent: config validation, the local policy, pod parsing, slots, CDI, state."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from node_helpers import GiB, demand, device  # noqa: E402

from hcs.devices.injection import ContainerEdits, DeviceNode, Mount  # noqa: E402
from hcs.devices.model import Health, Vendor  # noqa: E402
from hcs.errors import ConfigError  # noqa: E402
from hcs.node import cdi  # noqa: E402
from hcs.node.assignments import (  # noqa: E402
    ASSIGNMENT_ANNOTATION,
    LocalAssignmentSource,
    StaticPodLister,
    assignment_from_annotation,
    demand_from_pod,
    dumps,
)
from hcs.node.computenode import build_spec, build_status  # noqa: E402
from hcs.node.config import node_config  # noqa: E402
from hcs.node.slots import build_slots  # noqa: E402
from hcs.node.state import Allocation, AllocationStore  # noqa: E402


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"slotsPerDevice": 0}, "node.slotsPerDevice"),
        ({"slotsPerDevice": "many"}, "node.slotsPerDevice"),
        ({"resourceName": "slot"}, "node.resourceName"),
        ({"socketName": "a/b.sock"}, "node.socketName"),
        ({"assignmentSource": "magic"}, "node.assignmentSource"),
        ({"cdiEnabled": "perhaps"}, "node.cdiEnabled"),
        ({"reportIntervall": 3}, "node.reportIntervall"),
        ({"devicePluginDir": "/" + "x" * 120}, "node.devicePluginDir"),
    ],
)
def test_config_errors_name_the_field(section: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        node_config(section, source="hcs.yaml")
    assert "hcs.yaml" in str(err.value)


def test_config_defaults_and_overrides() -> None:
    cfg = node_config({"slotsPerDevice": "4", "cdiEnabled": "false"}, metricsPort=0, nodeName="n1")
    assert cfg.slotsPerDevice == 4 and cfg.cdiEnabled is False and cfg.metricsPort == 0
    assert cfg.plugin_socket == "/var/lib/kubelet/device-plugins/hcs-slot.sock"
    assert cfg.kubelet_socket == "/var/lib/kubelet/device-plugins/kubelet.sock"


def test_local_policy_best_fit_skips_unhealthy_and_full_devices() -> None:
    devs = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 40), device(Vendor.NVIDIA, 2, 24)]
    devs[2] = devs[2].__class__(**{**devs[2].__dict__, "health": Health(10, ("lost",))})
    pods = StaticPodLister()
    src = LocalAssignmentSource(lambda: devs, pods)
    pods.add(demand("a", 20, 1))
    pods.add(demand("b", 30, 2))
    pods.add(demand("c", 100, 3))
    got = {a.pod.name: a.containers[0].devices[0].key for a in src.assignments()}
    # a: 20 GiB best fit is the 40 GiB device (the 24 GiB one is unhealthy); b: 40-20=20 left < 30 → 80 GiB
    assert got == {"a": "nvidia-1", "b": "nvidia-0"}  # c fits nowhere
    pods.remove("uid-a")
    assert {a.pod.name for a in src.assignments()} == {"b"}  # unconfirmed assignments leave with the pod
    src.confirm("uid-b")
    pods.remove("uid-b")
    assert {a.pod.name for a in src.assignments()} == {"b"}  # confirmed ones stay until release
    src.release("uid-b")
    assert src.assignments() == []


def test_demand_from_pod_and_annotation_round_trip() -> None:
    pod = {
        "metadata": {"uid": "u1", "namespace": "ns", "name": "p", "creationTimestamp": "2026-11-28T10:00:00Z"},
        "spec": {"containers": [
            {"name": "a", "resources": {"limits": {"ai.compute/vram": "16Gi"}}},
            {"name": "b", "resources": {"requests": {"ai.compute/vram": "lots"}}},
            {"name": "c"},
        ]},
        "status": {"phase": "Pending"},
    }
    d = demand_from_pod(pod)
    assert d is not None and d.containers == (("a", 16 * GiB),) and d.pod.created_ms == 1795860000000
    assert demand_from_pod({**pod, "status": {"phase": "Succeeded"}}) is None
    src = LocalAssignmentSource(lambda: [device(Vendor.ASCEND, 3, 64)], StaticPodLister([d]))
    [a] = src.assignments()
    text = dumps(a, node="n1")
    assert json.loads(text)["containers"][0]["devices"][0]["vramBytes"] == str(16 * GiB)
    back = assignment_from_annotation(text)
    assert back == a
    pod["metadata"]["annotations"] = {ASSIGNMENT_ANNOTATION: text}
    d2 = demand_from_pod(pod)
    assert d2 is not None and d2.assigned == a
    pod["metadata"]["annotations"] = {ASSIGNMENT_ANNOTATION: "{not json"}
    d3 = demand_from_pod(pod)
    assert d3 is not None and d3.assigned is None
    with pytest.raises(ValueError, match="unknown vendor"):
        assignment_from_annotation('{"pod": {"uid": "x"}, "containers": [{"devices": [{"vendor": "intel"}]}]}')


def test_local_policy_uses_annotated_assignments_first() -> None:
    devs = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 40)]
    src0 = LocalAssignmentSource(lambda: devs, StaticPodLister([demand("x", 30, 1)]))
    [ax] = src0.assignments()
    assert ax.containers[0].devices[0].key == "nvidia-1"
    from dataclasses import replace

    ax0 = replace(ax, containers=(replace(ax.containers[0], devices=(
        replace(ax.containers[0].devices[0], index=0, uuid=devs[0].uuid),)),))
    x = replace(demand("x", 30, 1), assigned=ax0)  # the allocator chose nvidia-0 for x
    src = LocalAssignmentSource(lambda: devs, StaticPodLister([demand("y", 30, 2), x]))
    got = {a.pod.name: a.containers[0].devices[0].key for a in src.assignments()}
    assert got == {"x": "nvidia-0", "y": "nvidia-1"}


def test_slots_are_small_and_stable() -> None:
    slots = build_slots([device(Vendor.NVIDIA, 1, 80, numa=1), device(Vendor.NVIDIA, 0, 80)], 3)
    assert [(s.id, s.device_key, s.numa_node) for s in slots][:4] == [
        ("s000", "nvidia-0", 0), ("s001", "nvidia-0", 0), ("s002", "nvidia-0", 0), ("s003", "nvidia-1", 1)]
    many = build_slots([device(Vendor.NVIDIA, i, 80) for i in range(16)], 128)
    assert len(many) == 2048 and many[-1].id == "s2047" and max(len(s.id) for s in many) <= 63


def test_cdi_spec_shape(tmp_path: Path) -> None:
    edits = ContainerEdits(env=(("A", "1"),), device_nodes=(DeviceNode("/dev/nvidia0"),),
                           mounts=(Mount("/h/q", "/var/run/hcs/quota"), Mount("/h/s", "/s", read_only=False)))
    path = cdi.write_slot_spec(tmp_path, "ai.compute/slot", "s007", edits, {})
    spec = json.loads(path.read_text())
    assert path.name == "ai.compute-slot-s007.json"
    # one spec builder for both paths (issue 24): the minimum version; hostPath only when it differs
    assert spec["cdiVersion"] == "0.4.0" and spec["kind"] == "ai.compute/slot"
    dev = spec["devices"][0]
    assert dev["name"] == "s007" and dev["containerEdits"]["env"] == ["A=1"]
    assert dev["containerEdits"]["deviceNodes"] == [{"path": "/dev/nvidia0", "permissions": "rw"}]
    assert dev["containerEdits"]["mounts"][0]["options"][0] == "ro"
    assert dev["containerEdits"]["mounts"][1]["options"][0] == "rw"
    assert cdi.spec_for("ai.compute/slot", "s1", edits, {"k": "v"})["cdiVersion"] == "0.6.0"
    cdi.remove_spec(tmp_path, "ai.compute/slot", "s007")
    assert not path.exists()


def test_state_store_round_trip_and_corruption(tmp_path: Path) -> None:
    store = AllocationStore(tmp_path)
    src = LocalAssignmentSource(lambda: [device(Vendor.HYGON, 2, 64)], StaticPodLister([demand("p", 8, 1)]))
    [a] = src.assignments()
    alloc = Allocation(a.pod, "main", ("s001",), a.containers[0].devices)
    store.put(alloc)
    (tmp_path / "broken.json").write_text("{")
    good, bad = store.load()
    assert good == [alloc] and [p.name for p in bad] == ["broken.json"]
    assert (tmp_path / "broken.corrupt").exists()
    store.remove(alloc)
    assert store.load() == ([], [])


def test_computenode_spec_and_status() -> None:
    devs = [device(Vendor.CAMBRICON, i, 48) for i in range(2)]
    spec = build_spec("n1", devs, [])
    assert spec["vendor"] == "cambricon" and spec["devices"][1]["name"] == "cambricon-1"
    assert build_spec("n1", [*devs, device(Vendor.NVIDIA, 0, 80)], [])["vendor"] == "mixed"
    assert build_spec("n1", [], [])["vendor"] == "none"
    st = build_status(devs, {"cambricon-0": (8 * GiB, 2)}, now="2026-01-01T00:00:00Z")
    assert st["phase"] == "Ready" and st["vram"] == "88Gi/96Gi" and st["devices"][0]["allocations"] == 2
    sick = [devs[0].__class__(**{**devs[0].__dict__, "health": Health(0, ("critical",))}), devs[1]]
    st = build_status(sick, {}, now="2026-01-01T00:00:00Z")
    assert st["phase"] == "Degraded" and st["vramAllocatableBytes"] == 48 * GiB
    assert build_status([], {})["phase"] == "NotReady"


def test_allocation_changes_coalesce_into_few_computenode_reports() -> None:
    """A burst of allocation changes (one per admitted pod) makes one report at once and one after the gap,
    never one per change, and the last change is never lost."""
    import threading

    from hcs.node.agent import Coalesced

    calls: list[int] = []
    slow = Coalesced(lambda: calls.append(1), 3600)
    for _ in range(50):
        slow()
    assert calls == [1]  # the first change reported at once, the other 49 folded into one pending call
    assert slow._timer is not None and slow._timer.is_alive()
    slow._timer.cancel()

    done = threading.Event()
    fast = Coalesced(done.set, 0.2)
    fast()
    assert done.is_set()
    done.clear()
    fast()  # inside the gap: not now, but once the gap is over
    assert done.wait(30)
