"""The hcs.allocator.v1 gRPC API over a real unix socket, and the annotation wire form."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hcs.allocator.service import (
    AllocatorService,
    annotation_json,
    reservation_from_annotation,
    serve,
)
from hcs.allocator.state import AllocatorState
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30


def devices(n: int, island: str = "nvl0") -> tuple[DeviceInfo, ...]:
    return tuple(DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, 312_000, island)
                 for i in range(n))


@pytest.fixture()
def stub(tmp_path: Path) -> Iterator[tuple[pbg.AllocatorStub, AllocatorState]]:
    state = AllocatorState()
    state.set_node(NodeInventory("n1", devices(4)))
    state.set_node(NodeInventory("n2", devices(2)))
    sock = tmp_path / "alloc.sock"
    server = serve(AllocatorService(state), f"unix://{sock}")
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield pbg.AllocatorStub(channel), state
    finally:
        channel.close()
        server.stop(None)


def request(uid: str, vram_gib: int, **cons: str) -> pb.PodRequest:
    return pb.PodRequest(pod=pb.PodRef(uid=uid, namespace="ns", name=f"pod-{uid}", creation_time_unix_ms=1000),
                         containers=[pb.ContainerRequest(container="main", vram_bytes=vram_gib * GI)],
                         constraints=pb.Constraints(**cons))


def test_reserve_get_confirm_release_roundtrip(stub: tuple[pbg.AllocatorStub, AllocatorState]) -> None:
    s, state = stub
    a = s.Reserve(pb.ReserveRequest(request=request("u1", 16), node="n2")).assignment
    assert a.node == "n2" and a.state == pb.ASSIGNMENT_STATE_PENDING
    dev = a.containers[0].devices[0]
    assert (dev.vendor, dev.model, dev.vram_bytes) == ("nvidia", "a100-80g", 16 * GI) and dev.uuid.startswith("GPU-")
    got = s.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="n2")).assignments
    assert [x.pod.uid for x in got] == ["u1"] and got[0].pod.name == "pod-u1"
    assert got[0].pod.creation_time_unix_ms == 1000
    assert s.Confirm(pb.ConfirmRequest(pod_uid="u1", node="n2")).assignment.state == pb.ASSIGNMENT_STATE_CONFIRMED
    assert s.Release(pb.ReleaseRequest(pod_uid="u1")).released
    assert not s.Release(pb.ReleaseRequest(pod_uid="u1")).released
    assert state.usage("n2") == {}


def test_errors_map_to_status_codes(stub: tuple[pbg.AllocatorStub, AllocatorState]) -> None:
    s, _ = stub
    with pytest.raises(grpc.RpcError) as err:
        s.Reserve(pb.ReserveRequest(request=request("big", 4096)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "fits no node" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        s.Reserve(pb.ReserveRequest(request=request("x", 8, vendors=["nvdia"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown value 'nvdia'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        s.Confirm(pb.ConfirmRequest(pod_uid="nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_explain_lists_every_node_with_reasons(stub: tuple[pbg.AllocatorStub, AllocatorState]) -> None:
    s, _ = stub
    out = s.Explain(pb.ExplainRequest(request=request("e", 240, topology_preference="high-bandwidth")))
    by = {v.node: v for v in out.verdicts}
    assert by["n1"].fits and len(by["n1"].proposal[0].devices) == 3
    assert not by["n2"].fits and "node too small: needs 3 whole a100-80g devices" in by["n2"].reason
    assert out.summary.startswith("1 of 2 nodes fit")


def test_concurrent_reserves_never_double_allocate(stub: tuple[pbg.AllocatorStub, AllocatorState]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    s, state = stub

    def one(i: int) -> bool:
        try:
            s.Reserve(pb.ReserveRequest(request=request(f"c{i}", 80)))
            return True
        except grpc.RpcError:
            return False

    with ThreadPoolExecutor(8) as ex:
        ok = list(ex.map(one, range(12)))
    assert sum(ok) == 6  # six whole 80Gi devices in the cluster
    state.check_invariants()


def test_annotation_is_the_json_the_node_agent_reads(stub: tuple[pbg.AllocatorStub, AllocatorState]) -> None:
    from hcs.node import assignments as agent

    s, state = stub
    s.Reserve(pb.ReserveRequest(request=request("u9", 40)))
    res = state.reservation("u9")
    assert res is not None
    text = annotation_json(res)
    back = reservation_from_annotation(text)
    assert back == res
    if hasattr(agent, "assignment_from_annotation"):
        agent_view = agent.assignment_from_annotation(text)
    else:
        agent_view = agent.assignment_from_json(json.loads(text))
    assert agent_view.pod.uid == "u9" and agent_view.containers[0].devices[0].vram_bytes == 40 * GI
    with pytest.raises(ValueError, match="hcs.io/assignment"):
        reservation_from_annotation("{not json", "pod ns/x")


def test_alloc_explain_cli_through_grpc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hcs.allocator.placement import Constraints, ContainerDemand, PodDemand, PodRef
    from hcs.cli import main

    state = AllocatorState()
    state.set_node(NodeInventory("n1", devices(2)))
    state.set_node(NodeInventory("n2", devices(1)))
    want = PodDemand(PodRef("u-x", "team", "train"), (ContainerDemand("main", 100 * GI, 0),),
                     Constraints(high_bandwidth=True))

    def resolve(uid: str, ns: str, name: str) -> PodDemand | None:
        return want if (ns, name) == ("team", "train") else None

    sock = tmp_path / "a.sock"
    server = serve(AllocatorService(state, resolve_pod=resolve), f"unix://{sock}")
    try:
        assert main(["alloc", "explain", "team/train", "--allocator", f"unix://{sock}"]) == 0
        out = capsys.readouterr().out
        assert "1 of 2 nodes fit" in out
        assert "nvidia-0 80Gi, nvidia-1 80Gi" in out  # whole devices
        assert "node too small: needs 2 whole a100-80g devices (80.0Gi each) for 100.0Gi VRAM, the node has 1" in out
        assert main(["alloc", "explain", "nope", "-n", "team", "--allocator", f"unix://{sock}"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
    finally:
        server.stop(None)


# --------------------------------------------------------------------------- GetCapacity


@pytest.fixture()
def capacity_server(tmp_path: Path) -> Iterator[tuple[pbg.AllocatorStub, AllocatorState, list[bool]]]:
    """An allocator with an empty inventory on a real socket; ``leader[0]`` flips leadership."""
    state = AllocatorState()
    leader = [True]
    sock = tmp_path / "cap.sock"
    server = serve(AllocatorService(state, is_leader=lambda: leader[0]), f"unix://{sock}")
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield pbg.AllocatorStub(channel), state, leader
    finally:
        channel.close()
        server.stop(None)


def test_a_standby_does_not_answer_node_assignments(
        capacity_server: tuple[pbg.AllocatorStub, AllocatorState, list[bool]]) -> None:
    """A standby's reservations lag the leader's binds; a node agent must not take its (empty) answer."""
    s, _, leader = capacity_server
    assert list(s.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="n1"), timeout=5).assignments) == []
    leader[0] = False
    with pytest.raises(grpc.RpcError) as err:
        s.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="n1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def dev(name: str, vendor: str, gib: int, island: str = "", health: int = 100) -> DeviceInfo:
    index = int(name.rsplit("-", 1)[1])
    return DeviceInfo(name, vendor, "m", f"{name}-uuid", index, gib * GI, 1000, island, health)


def test_capacity_of_an_empty_inventory_has_no_largest_island(
        capacity_server: tuple[pbg.AllocatorStub, AllocatorState, list[bool]]) -> None:
    s, state, _ = capacity_server
    out = s.GetCapacity(pb.GetCapacityRequest(), timeout=5)
    assert not out.HasField("largest") and not out.largest_by_vendor
    assert (out.nodes, out.devices, out.healthy_devices) == (0, 0, 0)
    state.set_node(NodeInventory("empty", ()))  # a ComputeNode with no devices is still no capacity
    out = s.GetCapacity(pb.GetCapacityRequest(), timeout=5)
    assert not out.HasField("largest") and out.nodes == 1


def test_capacity_sums_islands_per_node_and_vendor(
        capacity_server: tuple[pbg.AllocatorStub, AllocatorState, list[bool]]) -> None:
    s, state, _ = capacity_server
    # a: two NVLink islands of 2×80 and a lone 141Gi device; b: the same island id on another node
    # must not add up with a's; c: four Ascend devices in one HCCS ring (4×64 = 256 > 160).
    state.set_node(NodeInventory("a", (dev("nvidia-0", "nvidia", 80, "nv0"), dev("nvidia-1", "nvidia", 80, "nv0"),
                                       dev("nvidia-2", "nvidia", 80, "nv1"), dev("nvidia-3", "nvidia", 80, "nv1"),
                                       dev("nvidia-4", "nvidia", 141))))
    state.set_node(NodeInventory("b", (dev("nvidia-0", "nvidia", 80, "nv0"),)))
    state.set_node(NodeInventory("c", tuple(dev(f"ascend-{i}", "ascend", 64, "hccs-0") for i in range(4))))
    out = s.GetCapacity(pb.GetCapacityRequest(), timeout=5)
    assert (out.largest.node, out.largest.island, out.largest.vendor) == ("c", "hccs-0", "ascend")
    assert out.largest.vram_bytes == 256 * GI and list(out.largest.devices) == [f"ascend-{i}" for i in range(4)]
    by = {i.vendor: i for i in out.largest_by_vendor}
    assert [i.vendor for i in out.largest_by_vendor] == ["ascend", "nvidia"]
    # the first of the equal 160Gi islands in name order, bigger than the 141Gi singleton
    assert (by["nvidia"].node, by["nvidia"].island, by["nvidia"].vram_bytes) == ("a", "nv0", 160 * GI)
    assert (out.nodes, out.devices, out.healthy_devices) == (3, 10, 10)


def test_capacity_of_a_device_outside_any_island_is_its_own(
        capacity_server: tuple[pbg.AllocatorStub, AllocatorState, list[bool]]) -> None:
    s, state, _ = capacity_server
    state.set_node(NodeInventory("pcie", tuple(dev(f"hygon-{i}", "hygon", 64) for i in range(3))))
    out = s.GetCapacity(pb.GetCapacityRequest(), timeout=5)
    assert out.largest.vram_bytes == 64 * GI and out.largest.island == ""
    assert list(out.largest.devices) == ["hygon-0"]


def test_capacity_excludes_unhealthy_devices(
        capacity_server: tuple[pbg.AllocatorStub, AllocatorState, list[bool]]) -> None:
    s, state, _ = capacity_server
    state.set_node(NodeInventory("a", (dev("nvidia-0", "nvidia", 80, "nv0"), dev("nvidia-1", "nvidia", 80, "nv0"),
                                       dev("nvidia-2", "nvidia", 80, "nv0", health=10),
                                       dev("nvidia-3", "nvidia", 80, "nv0", health=60))))  # degraded still counts
    out = s.GetCapacity(pb.GetCapacityRequest(), timeout=5)
    assert out.largest.vram_bytes == 240 * GI
    assert list(out.largest.devices) == ["nvidia-0", "nvidia-1", "nvidia-3"]
    assert (out.devices, out.healthy_devices) == (4, 3)
    state.set_node(NodeInventory("a", (dev("nvidia-0", "nvidia", 80, "nv0", health=0),)))
    out = s.GetCapacity(pb.GetCapacityRequest(), timeout=5)
    assert not out.HasField("largest") and (out.devices, out.healthy_devices) == (1, 0)


def test_capacity_ignores_reservations(
        capacity_server: tuple[pbg.AllocatorStub, AllocatorState, list[bool]]) -> None:
    """The webhook asks "can this ever fit", so devices in use still count."""
    s, state, _ = capacity_server
    state.set_node(NodeInventory("n1", devices(2)))
    s.Reserve(pb.ReserveRequest(request=request("busy", 160)))
    assert s.GetCapacity(pb.GetCapacityRequest(), timeout=5).largest.vram_bytes == 160 * GI


def test_capacity_from_a_standby_replica_is_unavailable(
        capacity_server: tuple[pbg.AllocatorStub, AllocatorState, list[bool]]) -> None:
    s, state, leader = capacity_server
    state.set_node(NodeInventory("n1", devices(2)))
    leader[0] = False
    with pytest.raises(grpc.RpcError) as err:
        s.GetCapacity(pb.GetCapacityRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "not the leader" in err.value.details()
