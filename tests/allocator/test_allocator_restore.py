"""Restore precedence (no cluster): a bound pod's grant is a fact; an unbound pod's record never takes its
devices, whatever the pods' ages; a bind in flight (the caller's ``first``) counts as bound; the result does
not depend on the order records arrive in."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hcs.allocator.placement import Grant, PodRef
from hcs.allocator.state import AllocatorState, Reservation, RestoreConflict
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30
A100 = 312_000


def _inv(node: str = "n1") -> NodeInventory:
    devs = tuple(DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, A100, "nvl0", 100)
                 for i in range(2))
    return NodeInventory(node, devs, 64_000, 512 * GI)


def _res(uid: str, created_ms: int, gib: int, *, bound: bool = False, device: int = 0) -> Reservation:
    g = Grant(f"nvidia-{device}", f"GPU-{device}", device, "nvidia", "a100-80g", "nvl0", gib * GI, 0)
    return Reservation(PodRef(uid, "team-a", f"pod-{uid}", created_ms), "n1", (("main", (g,)),), "pending",
                       created_ms, 1000, 2 * GI, bound=bound)


def test_a_bound_pod_keeps_its_devices_against_an_earlier_unbound_record_in_any_order() -> None:
    records = [_res("early-unbound", 1000, 60), _res("late-bound", 2000, 60, bound=True),
               _res("other", 500, 10, device=1)]
    for order in itertools.permutations(records):
        s = AllocatorState()
        s.set_node(_inv())
        lost: list[RestoreConflict] = []
        s.restore(list(order), on_conflict=lost.append)
        assert [c.loser.pod.uid for c in lost] == ["early-unbound"], order
        assert [w.pod.uid for w in lost[0].winners] == ["late-bound"]
        assert s.reservation("late-bound") is not None and s.reservation("early-unbound") is None
        s.check_invariants()


def test_a_held_bound_reservation_is_not_evicted_by_an_earlier_unbound_record() -> None:
    """The split brain of test_sec_records_assignments, with the later pod bound: now it wins."""
    s = AllocatorState()
    s.set_node(_inv())
    assert s.restore([_res("late", 2000, 60)]) == []
    s.mark_bound("late")
    lost: list[RestoreConflict] = []
    s.restore([_res("early", 1000, 60)], on_conflict=lost.append)
    assert [c.loser.pod.uid for c in lost] == ["early"]
    assert s.reservation("late") is not None and s.reservation("late").bound  # type: ignore[union-attr]
    s.check_invariants()
    # control: unbound, the earlier record still wins (age decides between equals)
    s2 = AllocatorState()
    s2.set_node(_inv())
    s2.restore([_res("late", 2000, 60)])
    s2.restore([_res("early", 1000, 60)])
    assert s2.reservation("early") is not None and s2.reservation("late") is None


def test_a_bind_in_flight_counts_as_bound_in_a_conflict() -> None:
    s = AllocatorState()
    s.set_node(_inv())
    s.restore([_res("inflight", 2000, 60)])
    lost: list[RestoreConflict] = []
    s.restore([_res("early", 1000, 60)], on_conflict=lost.append, first=lambda r: r.pod.uid == "inflight")
    assert [c.loser.pod.uid for c in lost] == ["early"] and s.reservation("inflight") is not None
    # between two bound pods age decides, deterministically
    s3 = AllocatorState()
    s3.set_node(_inv())
    s3.restore([replace(_res("b2", 2000, 60), bound=True), replace(_res("b1", 1000, 60), bound=True)])
    assert s3.reservation("b1") is not None and s3.reservation("b2") is None
