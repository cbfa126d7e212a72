"""Checkpoint recovery on the checkpoint cluster (marker `checkpoint`; `make e2e-checkpoint`).

Every scenario runs e2e/checkpoint/vram_counter.c: a counter holding simulated VRAM (host memory filled
with a pattern it re-verifies each step). "Continues" means: the restored pod's own new lines start right
after a step the old pod printed (no restart at step 1), all lines say ok=1 (the memory came through
intact), and the device line shows the new assignment.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ckpt_helpers import counter_pod, create_pod, kubectl, pods_named, read_steps, wait_for  # noqa: E402

pytestmark = pytest.mark.checkpoint

DEV0 = "GPU-d0dffa75-8856-6462-e586-ce5419d53a90"


def new_lines(migrator: Any, new: str, old_last: int) -> list[tuple[int, float, int, str]]:
    """Lines the restored process printed itself (after the restored log's copy of the old lines)."""
    steps = read_steps(migrator, new)
    return [s for s in steps if s[0] > old_last] if steps else []


def assert_continued(migrator: Any, new: str, ckpt_floor: int, old_last: int, device: str, hops: int = 1) -> None:
    """The restored pod resumed from a checkpointed step in [ckpt_floor, old_last], memory intact."""
    steps = wait_for(lambda: [s for s in read_steps(migrator, new)], 60, f"log lines of {new}")
    wait_for(lambda: len(read_steps(migrator, new)) > len(steps) + 5, 60, f"{new} to keep counting")
    steps = read_steps(migrator, new)
    nums = [s[0] for s in steps]
    # the restored log = the checkpointed container's log, copied just after the dump while that container
    # still ran (steps 1..k+j), then the restored process (k+1, ...): per move at most one step back, never to 1
    drops = [i for i in range(1, len(nums)) if nums[i] != nums[i - 1] + 1]
    assert len(drops) <= hops, f"{new}: steps jump back more often than it moved: {nums}"
    for i in drops:
        assert 1 < nums[i] <= nums[i - 1], f"{new}: restarted or skipped at line {i}: {nums[max(0, i - 3):i + 3]}"
    assert sorted(set(nums)) == list(range(1, max(nums) + 1)), f"{new}: steps missing"
    # the restored process's own lines: the trailing run reporting the new device (old lines show the old one)
    start = len(steps)
    while start > 0 and steps[start - 1][3] == device:
        start -= 1
    assert start < len(steps), f"{new}: the restored process does not report its new device {device}"
    assert start > 0, f"{new}: no lines of the checkpointed process before the restored ones (not a restore?)"
    assert nums[start:] == list(range(nums[start], nums[start] + len(nums) - start)), f"{new}: not consecutive"
    first_new = nums[start]
    assert ckpt_floor <= first_new - 1 <= old_last + 1, (
        f"{new} resumed after step {first_new - 1}, outside the checkpointed range [{ckpt_floor}, {old_last}]")
    assert all(s[2] == 1 for s in steps), f"{new}: simulated VRAM corrupted (ok=0 lines)"


def test_hcs_migrate_continues_on_another_node_and_device(clean: Any) -> None:
    m = clean
    create_pod(m, counter_pod("ck-mig", "hcsck-a", DEV0, memory_limit="256Mi"))
    before = read_steps(m, "ck-mig")[-1][0]
    res = m.migrate("default", "ck-mig", reason="test hcs migrate")
    assert res.node == "hcsck-b" and res.new_pod == "ck-mig-m1"
    old_last = before + int(res.pause_s * 10) + 20  # steps it could have made until deleted
    assert_continued(m, res.new_pod, before, old_last, res.device)
    pods = pods_named(m, "ck-mig")
    assert [p["metadata"]["name"] for p in pods] == ["ck-mig-m1"], "old pod not gone or a duplicate exists"
    new = pods[0]
    assert new["spec"]["nodeName"] == "hcsck-b"
    assert new["metadata"]["annotations"]["hcs.io/device"] == res.device
    assert new["metadata"]["annotations"]["hcs.io/migrations"] == "1"
    # the new pod's limits apply to the restored process (runc restores into the new pod's cgroup)
    assert new["spec"]["containers"][0]["resources"]["limits"]["memory"] == "256Mi"


def test_migrate_refuses_pods_that_did_not_opt_in(clean: Any) -> None:
    from hcs.checkpoint.migrate import CheckpointError

    m = clean
    create_pod(m, counter_pod("ck-never", "hcsck-a", DEV0, mode=""), min_step=3)
    with pytest.raises(CheckpointError, match="hcs.io/checkpoint"):
        m.migrate("default", "ck-never")
    assert [p["metadata"]["name"] for p in pods_named(m, "ck-never")] == ["ck-never"]


def test_migrate_to_named_node_and_back(clean: Any) -> None:
    m = clean
    create_pod(m, counter_pod("ck-back", "hcsck-a", DEV0))
    r1 = m.migrate("default", "ck-back", to_node="hcsck-b")
    last1 = wait_for(lambda: max([s[0] for s in read_steps(m, r1.new_pod)], default=0), 60, "restored counter")
    r2 = m.migrate("default", r1.new_pod, to_node="hcsck-a")
    assert (r1.node, r2.node, r2.new_pod) == ("hcsck-b", "hcsck-a", "ck-back-m2")
    assert_continued(m, r2.new_pod, last1, last1 + int(r2.pause_s * 10) + 40, r2.device, hops=2)


def _controller(m: Any) -> tuple[Any, threading.Thread]:
    from hcs.checkpoint.controller import Controller

    ctl = Controller(m, period_s=0.5, namespace="default")
    t = threading.Thread(target=ctl.run, daemon=True)
    t.start()
    return ctl, t


def test_failing_device_verdict_moves_auto_pod_and_warns_never_pod(clean: Any) -> None:
    from hcs.checkpoint.controller import inject_verdict

    m = clean
    create_pod(m, counter_pod("ck-fail", "hcsck-a", DEV0))
    dev1 = "GPU-d0db5c96-6f0f-055e-aee1-0cbb81d09798"
    create_pod(m, counter_pod("ck-bystander", "hcsck-a", dev1, mode="never"), min_step=3)
    ctl, t = _controller(m)
    try:
        before = read_steps(m, "ck-fail")[-1][0]
        inject_verdict(m.c.kube, "hcsck-a", DEV0, "failing")
        moved = wait_for(lambda: [p for p in pods_named(m, "ck-fail") if p["metadata"]["name"] == "ck-fail-m1"],
                         180, "the controller to move ck-fail")
        assert moved[0]["spec"].get("nodeName", "hcsck-b") != "hcsck-a" or \
            moved[0]["metadata"]["annotations"]["hcs.io/device"] != DEV0
        res = wait_for(lambda: ctl.moves, 60, "the controller's record of the move")[-1]
        assert "failing" in res["trigger"]
        assert_continued(m, "ck-fail-m1", before, before + int(res["pause_s"] * 10) + 30, res["device"])
        # the pod on the healthy device, not opted in, stays and gets nothing but its own verdict-free life
        assert [p["metadata"]["name"] for p in pods_named(m, "ck-bystander")] == ["ck-bystander"]
    finally:
        ctl.stop_event.set()
        t.join(10)
    assert not ctl.errors, ctl.errors


def test_never_pod_on_failing_device_gets_a_warning_event(clean: Any) -> None:
    from hcs.checkpoint.controller import inject_verdict

    m = clean
    create_pod(m, counter_pod("ck-nev", "hcsck-a", DEV0, mode=""), min_step=3)
    ctl, t = _controller(m)
    try:
        inject_verdict(m.c.kube, "hcsck-a", DEV0, "failing")

        def warned() -> bool:
            evs = m.c.kube.request("GET", "/api/v1/namespaces/default/events",
                                   query={"fieldSelector": "involvedObject.name=ck-nev"}).get("items", [])
            return any(e.get("reason") == "NotCheckpointed" for e in evs)

        wait_for(warned, 30, "a NotCheckpointed event")
        assert [p["metadata"]["name"] for p in pods_named(m, "ck-nev")] == ["ck-nev"]
    finally:
        ctl.stop_event.set()
        t.join(10)


def test_kubectl_drain_moves_auto_pod_before_eviction(clean: Any, ckpt_env: dict[str, Any]) -> None:
    m = clean
    create_pod(m, counter_pod("ck-drain", "hcsck-a", DEV0))
    ctl, t = _controller(m)
    try:
        wait_for(lambda: m.c.kube.request("GET", "/apis/policy/v1/namespaces/default/poddisruptionbudgets")
                 .get("items"), 30, "the drain guard PDB")
        before = read_steps(m, "ck-drain")[-1][0]
        out = kubectl(ckpt_env, "drain", "hcsck-a", "--ignore-daemonsets", "--force", "--timeout=240s", timeout=300)
        assert "drained" in out
        pods = pods_named(m, "ck-drain")
        assert [(p["metadata"]["name"], p["spec"].get("nodeName")) for p in pods] == [("ck-drain-m1", "hcsck-b")]
        res = wait_for(lambda: ctl.moves, 60, "the controller's record of the move")[-1]
        assert "cordoned" in res["trigger"]
        assert_continued(m, "ck-drain-m1", before, before + int(res["pause_s"] * 10) + 40, res["device"])
    finally:
        ctl.stop_event.set()
        t.join(10)
        kubectl(ckpt_env, "uncordon", "hcsck-a", check=False)


def test_periodic_checkpoint_bounds_lost_work_on_sudden_loss(clean: Any, ckpt_env: dict[str, Any]) -> None:
    from hcs.checkpoint.controller import inject_verdict

    m = clean
    create_pod(m, counter_pod("ck-per", "hcsck-a", DEV0, interval="4s", restart_policy="Never"), min_step=3)
    ctl, t = _controller(m)
    try:
        wait_for(lambda: m.store.latest("default", "ck-per"), 60, "a periodic checkpoint")
        # sudden device loss: the process dies (no chance to checkpoint), then the verdict arrives
        node = ckpt_env["nodes"]["hcsck-a"]
        cid = m.pod("default", "ck-per")["status"]["containerStatuses"][0]["containerID"].split("//")[-1]
        crictl = [*node["nsenter"], str(Path(ckpt_env["bin_dir"]) / "crictl"), "--runtime-endpoint",
                  f"unix://{node['containerd_socket']}"]
        import subprocess
        last_alive = read_steps(m, "ck-per")[-1][0]
        subprocess.run([*crictl, "stop", "--timeout", "0", cid], check=True, capture_output=True, timeout=60)
        t_loss = time.time()
        wait_for(lambda: m.pod("default", "ck-per")["status"].get("phase") == "Failed", 60, "the pod to fail")
        last_old = read_steps(m, "ck-per")[-1][0] if read_steps(m, "ck-per") else last_alive
        inject_verdict(m.c.kube, "hcsck-a", DEV0, "failed")
        wait_for(lambda: [p for p in pods_named(m, "ck-per") if p["metadata"]["name"] == "ck-per-m1"], 180,
                 "restore from the periodic checkpoint")
        res = wait_for(lambda: ctl.moves, 60, "the controller's record of the move")[-1]
        assert res["from_periodic"] is True
        resumed = wait_for(lambda: [s for s in read_steps(m, "ck-per-m1") if s[3] == res["device"]], 60,
                           "the restored counter")
        lost_steps = last_old - (resumed[0][0] - 1)
        assert 0 <= lost_steps <= 4 * 10 + 10, f"lost {lost_steps} steps (> one 4 s interval)"
        assert all(s[2] == 1 for s in read_steps(m, "ck-per-m1"))
        assert time.time() - t_loss < 180
    finally:
        ctl.stop_event.set()
        t.join(10)


def test_defrag_dry_run_then_apply_frees_a_whole_node(clean: Any) -> None:
    from hcs.checkpoint import defrag

    m = clean
    dev_b = m.c.nodes["hcsck-b"].devices()[0]
    create_pod(m, counter_pod("ck-dfa", "hcsck-a", DEV0, mode="manual"), min_step=3)
    create_pod(m, counter_pod("ck-dfb", "hcsck-b", dev_b, mode="manual"), min_step=3)
    moves = defrag.plan(defrag.read_state(m))
    assert len(moves) == 1 and moves[0].fragmentation_after < moves[0].fragmentation_before
    # dry run changed nothing
    assert sorted(p["metadata"]["name"] for p in m.c.kube.request("GET", "/api/v1/namespaces/default/pods",
                  query={"labelSelector": "app=hcs-ckpt-test"})["items"]) == ["ck-dfa", "ck-dfb"]
    done = defrag.apply(m, moves)
    assert "skipped" not in done[0], done
    nodes = {p["spec"].get("nodeName") for p in m.c.kube.request(
        "GET", "/api/v1/namespaces/default/pods", query={"labelSelector": "app=hcs-ckpt-test"})["items"]
        if not p["metadata"].get("deletionTimestamp")}
    assert len(nodes) == 1, f"both pods should share one node now, got {nodes}"
    assert defrag.plan(defrag.read_state(m)) == [], "a second pass finds nothing left to gain"
