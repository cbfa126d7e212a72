"""libhcs_interceptor.so: quota enforcement, queries and entry-point coverage, per vendor.

Every case runs a real C program (interceptor/tests/) with the interceptor preloaded in front of the
simulated vendor runtime, once plainly and once under ASan/UBSan.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from interceptor_harness import MIB, PHYS_NVIDIA, PHYS_OTHER, Harness


def ok(res: object, case: str) -> None:
    from interceptor_harness import Result

    assert isinstance(res, Result)
    assert res.rc == 0, f"{case}: rc={res.rc}\nstdout:\n{res.out}\nstderr:\n{res.err}"
    assert f"ok {case}" in res.out


Q = 16 * MIB


def test_boundary_exact_for_every_cuda_allocation_api(h: Harness) -> None:
    ok(h.run("t_cuda", "boundary", HCS_VRAM_QUOTA="16Mi", HCS_TEST_QUOTA=str(Q)), "boundary")


def test_quota_file_wins_over_env_and_is_per_device(h: Harness, tmp_path: Path) -> None:
    qf = tmp_path / "quota"
    qf.write_text("# written by the HCS node agent\n0 1Mi\n1 2097152   # device 1\n")
    # the env value would allow far more: the file must win
    res = h.run("t_cuda", "multidev", HCS_QUOTA_FILE=str(qf), HCS_VRAM_QUOTA="512Mi", HCS_TEST_QUOTA=str(MIB))
    ok(res, "multidev")


@pytest.mark.parametrize("line", ["* 16777216", "* 16Mi", "0 0.015625Gi", "0 16777216 # trailing comment"])
def test_quota_file_forms(h: Harness, tmp_path: Path, line: str) -> None:
    qf = tmp_path / "quota"
    qf.write_text(line + "\n")
    ok(h.run("t_cuda", "boundary", HCS_QUOTA_FILE=str(qf), HCS_TEST_QUOTA=str(Q)), "boundary")


def test_env_quota_per_device_form(h: Harness) -> None:
    ok(h.run("t_cuda", "multidev", HCS_VRAM_QUOTA="0:1Mi,1:2Mi", HCS_TEST_QUOTA=str(MIB)), "multidev")


def test_free_gives_quota_back_sync_async_and_vmm(h: Harness) -> None:
    ok(h.run("t_cuda", "free_returns", HCS_VRAM_QUOTA="16Mi", HCS_TEST_QUOTA=str(Q)), "free_returns")


def test_cugetprocaddress_and_dlsym_hand_out_limited_functions(h: Harness) -> None:
    ok(h.run("t_cuda", "getproc", HCS_VRAM_QUOTA="16Mi", HCS_TEST_QUOTA=str(Q)), "getproc")


def test_cugetprocaddress_internal_entry_points_matched_by_name(h: Harness) -> None:
    """A driver may return non-exported internal functions from cuGetProcAddress (no pointer match):
    the request is then matched by name and version and the hook is handed out all the same."""
    res = h.run("t_cuda", "getproc", HCS_VRAM_QUOTA="16Mi", HCS_TEST_QUOTA=str(Q),
                HCS_SIM_CUDA_INTERNAL_ENTRY_POINTS="1")
    ok(res, "getproc")


@pytest.mark.parametrize(
    "quota,quota_bytes",
    [("16Mi", Q), ("300Mi", 300 * MIB), ("1", 1), ("4Gi", 4096 * MIB)],
    ids=["16Mi", "small-300Mi", "one-byte", "above-physical"],
)
def test_memory_queries_report_quota_never_more_than_the_card(h: Harness, quota: str, quota_bytes: int) -> None:
    res = h.run("t_cuda", "meminfo", HCS_VRAM_QUOTA=quota, HCS_TEST_QUOTA=str(quota_bytes))
    ok(res, "meminfo")
    assert "nvml checked" in res.out, "the simulated libnvidia-ml.so.1 (make -C driver) should be there"
    assert quota_bytes < PHYS_NVIDIA or quota == "4Gi"


@pytest.mark.parametrize("quota", [10240, 10239], ids=["fits", "one-short"])
def test_pitch_allocation_charged_at_driver_pitch(h: Harness, quota: int) -> None:
    ok(h.run("t_cuda", "pitch", HCS_VRAM_QUOTA=str(quota), HCS_TEST_QUOTA=str(quota)), "pitch")


def test_vmm_device_memory_counts_host_memory_does_not(h: Harness) -> None:
    ok(h.run("t_cuda", "vmm", HCS_VRAM_QUOTA="16Mi", HCS_TEST_QUOTA=str(Q)), "vmm")


def test_forked_child_gets_own_slot_and_its_share_is_reclaimed(h: Harness) -> None:
    ok(h.run("t_cuda", "fork", HCS_VRAM_QUOTA="16Mi", HCS_TEST_QUOTA=str(Q)), "fork")


@pytest.mark.parametrize("vendor", ["acl", "hip", "cnrt"])
def test_other_vendors_boundary_oom_code_and_queries(h: Harness, vendor: str) -> None:
    res = h.run("t_vendors", vendor, "boundary", HCS_VRAM_QUOTA="1Mi", HCS_TEST_QUOTA=str(MIB))
    ok(res, f"{vendor} boundary")


@pytest.mark.parametrize("vendor", ["acl", "hip", "cnrt"])
def test_simulated_runtimes_enforce_card_capacity(h: Harness, vendor: str) -> None:
    res = h.run("t_vendors", vendor, "physical", preload=False, HCS_TEST_PHYS=str(PHYS_OTHER))
    ok(res, f"{vendor} physical")


def test_simulated_libcuda_enforces_card_capacity(h: Harness) -> None:
    assert h.run("t_cuda", "alloc", str(PHYS_NVIDIA + 1), preload=False).json()["rc"] == 2
    assert h.run("t_cuda", "alloc", str(PHYS_NVIDIA), preload=False).json()["rc"] == 0


def test_no_quota_configured_is_pass_through(h: Harness) -> None:
    res = h.run("t_cuda", "alloc", str(PHYS_NVIDIA))
    assert res.json() == {"rc": 0, "free": 0, "total": PHYS_NVIDIA}
    assert not list(h.shm_dir.iterdir()), "pass-through must not create the accounting region"


def test_malformed_quota_file_fails_closed_naming_file_and_line(h: Harness, tmp_path: Path) -> None:
    qf = tmp_path / "quota"
    qf.write_text("0 16Gi\n1 lots\n")
    res = h.run("t_cuda", "alloc", "1", HCS_QUOTA_FILE=str(qf))
    assert res.json()["rc"] == 2
    assert f"{qf}:2: bad byte count 'lots'" in res.err


def test_missing_quota_file_fails_closed(h: Harness, tmp_path: Path) -> None:
    res = h.run("t_cuda", "alloc", "1", HCS_QUOTA_FILE=str(tmp_path / "absent"))
    assert res.json()["rc"] == 2
    assert "cannot open" in res.err and "absent" in res.err


def test_bad_env_quota_fails_closed(h: Harness) -> None:
    res = h.run("t_cuda", "alloc", "1", HCS_VRAM_QUOTA="16 gigs")
    assert res.json()["rc"] == 2
    assert "HCS_VRAM_QUOTA='16 gigs'" in res.err


def test_unusable_shared_dir_fails_closed(h: Harness, tmp_path: Path) -> None:
    res = h.run("t_cuda", "alloc", "1", HCS_VRAM_QUOTA="16Mi", HCS_SHM_DIR=str(tmp_path / "no" / "such"))
    assert res.json()["rc"] == 2
    assert "cannot open the container's VRAM ledger" in res.err


def test_processes_share_one_quota_and_sigkill_returns_the_share(h: Harness) -> None:
    h.base_env["HCS_VRAM_QUOTA"] = "16Mi"
    holder = h.popen("t_cuda", "hold", str(10 * MIB))
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("ready"), line + (holder.stderr.read() if holder.stderr else "")
        other = h.run("t_cuda", "alloc", str(6 * MIB + 1)).json()
        assert other["rc"] == 2 and other["free"] == 6 * MIB and other["total"] == Q
        assert h.run("t_cuda", "alloc", str(6 * MIB)).json()["rc"] == 0
        holder.kill()  # SIGKILL: no exit handler runs
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    after = h.run("t_cuda", "alloc", str(Q)).json()
    assert after == {"rc": 0, "free": 0, "total": Q}


def test_sigkill_inside_the_critical_section_neither_leaks_nor_deadlocks(h: Harness, tmp_path: Path) -> None:
    stall = tmp_path / "stalled"
    h.base_env["HCS_VRAM_QUOTA"] = "16Mi"
    victim = h.popen("t_cuda", "hold", str(10 * MIB), fault_injection=True, HCS_TEST_STALL_IN_LOCK=str(stall))
    try:
        deadline = time.monotonic() + 60
        while not stall.exists():
            assert victim.poll() is None, victim.stderr.read() if victim.stderr else ""
            assert time.monotonic() < deadline, "the victim never reached the critical section"
            time.sleep(0.01)
        victim.kill()  # dies holding the robust mutex, with its reservation made
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    # the next process gets EOWNERDEAD, reclaims the dead share, and the whole quota is free again
    res = h.run("t_cuda", "alloc", str(Q), timeout=60)
    assert res.json() == {"rc": 0, "free": 0, "total": Q}, res.err


def test_waiting_process_takes_over_the_lock_of_a_killed_holder(h: Harness, tmp_path: Path) -> None:
    """The holder dies inside the critical section while another process is already attached (so
    no fresh slot claim clears the lock): the waiter must detect the dead holder and go on."""
    stall, go = tmp_path / "stalled", tmp_path / "go"
    h.base_env["HCS_VRAM_QUOTA"] = "16Mi"
    waiter = h.popen("t_cuda", "attach_wait", str(Q), HCS_TEST_GO=str(go))
    victim = None
    try:
        assert waiter.stdout is not None
        assert waiter.stdout.readline().startswith("attached")
        victim = h.popen("t_cuda", "hold", str(10 * MIB), fault_injection=True,
                         HCS_TEST_STALL_IN_LOCK=str(stall))
        deadline = time.monotonic() + 60
        while not stall.exists():
            assert victim.poll() is None, victim.stderr.read() if victim.stderr else ""
            assert time.monotonic() < deadline, "the victim never reached the critical section"
            time.sleep(0.01)
        go.touch()  # the waiter now spins on the lock the victim holds
        time.sleep(0.2)
        victim.kill()
        victim.wait(timeout=30)
        out, err = waiter.communicate(timeout=60)
    finally:
        for p in (waiter, victim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    line = [x for x in out.splitlines() if x.startswith("{")][0]
    assert json.loads(line) == {"rc": 0, "free": 0, "total": Q}, err


def _can_unshare_pid() -> bool:
    try:
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--pid", "--fork", "true"],
                               capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_liveness_works_across_pid_namespaces(h: Harness) -> None:
    """A holder in another PID namespace (it is PID 1 there, and its number means nothing here):
    its share counts for everybody while it lives and comes back when it is killed — no kill(pid, 0)."""
    if not _can_unshare_pid():
        pytest.skip("unshare --user --pid is not permitted here")
    h.base_env["HCS_VRAM_QUOTA"] = "16Mi"
    env = h.env(True, False, {})
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child",
         h.program("t_cuda"), "hold", str(10 * MIB)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("ready"), line + (holder.stderr.read() if holder.stderr else "")
        other = h.run("t_cuda", "alloc", str(6 * MIB + 1)).json()
        assert other["rc"] == 2 and other["free"] == 6 * MIB
        holder.kill()  # unshare dies; --kill-child SIGKILLs the namespace's PID 1
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    deadline = time.monotonic() + 30
    while True:  # the child's death is asynchronous to unshare's
        res = h.run("t_cuda", "alloc", str(Q)).json()
        if res["rc"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert res == {"rc": 0, "free": 0, "total": Q}


def test_many_processes_holding_leases_are_all_counted(h: Harness) -> None:
    """70 live processes each hold a lease: another process's room is computed from all of them
    (the kernel answers one lock per query; the ledger walk must find every one, exactly)."""
    h.base_env["HCS_VRAM_QUOTA"] = "16Mi"
    n, each = 70, 100 * 1024
    holders = [h.popen("t_cuda", "hold", str(each)) for _ in range(n)]
    try:
        for p in holders:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.startswith("ready"), line + (p.stderr.read() if p.stderr else "")
        room = Q - n * each
        over = h.run("t_cuda", "alloc", str(room + 1)).json()
        assert over["rc"] == 2 and over["free"] == room, over
        assert h.run("t_cuda", "alloc", str(room)).json() == {"rc": 0, "free": 0, "total": Q}
    finally:
        for p in holders:
            p.kill()
        for p in holders:
            p.wait()
    assert h.run("t_cuda", "alloc", str(Q)).json() == {"rc": 0, "free": 0, "total": Q}
