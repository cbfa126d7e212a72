"""Re-attaching the VRAM accounting after a restore into a new container (checkpoint recovery, issue 21).

A process restored by CRIU gets its files re-opened by path: its ledger descriptor then names the NEW
container's ledger (another file), while its memory still holds the old quota. These tests do to a live
process what the restore does - a new ledger file and quota at the same paths, the ledger path re-opened
onto the same descriptor number - and check what the interceptor must do then: read the new quota, move the
process's live allocations into the new ledger (other processes see them there), keep the boundary exact
against the new quota, and let go of the old ledger. The real CRIU restore of a pod with the interceptor
runs in the checkpoint e2e (tests/checkpoint, ``make e2e-checkpoint``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from interceptor_harness import MIB, Harness

from hcs.testing.ledger_locks import leased_bytes


def quota_file(h: Harness, tmp_path: Path, text: str) -> Path:
    """A quota file with ``text``, the one the harness's processes read (HCS_QUOTA_FILE)."""
    quota = tmp_path / "quota"
    quota.write_text(text)
    h.base_env["HCS_QUOTA_FILE"] = str(quota)
    return quota


@contextlib.contextmanager
def restored_process(h: Harness, first: int) -> Iterator[subprocess.Popen[str]]:
    """``t_cuda moved``: allocates ``first`` bytes and says "ready 0", then waits for "moved" on its stdin
    (the restore done to it) to report what it sees then; killed at the end."""
    proc = subprocess.Popen([h.program("t_cuda"), "moved", str(first)], env=h.env(True, False, {}),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if line.strip() != "ready 0":
            proc.kill()
            pytest.fail(line + (proc.stderr.read() if proc.stderr else ""))
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_restore_into_a_new_ledger_reattaches_with_the_new_quota(h: Harness, tmp_path: Path) -> None:
    quota = quota_file(h, tmp_path, "* 64Mi\n")
    ledger = h.shm_dir / "hcs-vram.ledger"
    with restored_process(h, 10 * MIB) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert leased_bytes(ledger) == 10 * MIB  # counted in the old container's ledger
        # the "new container": another ledger file and a smaller quota at the same paths
        old = h.shm_dir / "old.ledger"
        ledger.rename(old)  # the old inode (and the process's locks on it) stays
        ledger.touch(mode=0o666)
        quota.write_text("* 48Mi\n")
        proc.stdin.write("moved\n")
        proc.stdin.flush()
        res = json.loads(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "ready"
        # the new quota, with the restored 10 MiB counted against it, boundary exact
        assert res == {"first": 0, "info": 0, "free": 38 * MIB, "total": 48 * MIB, "over": 2, "fit": 0}, res
        # the live allocation is registered in the new ledger; the old ledger is let go
        assert leased_bytes(ledger) == 10 * MIB
        assert leased_bytes(old) == 0
        # another process of the new container sees it too: 38 MiB left, not 48
        other = h.run("t_cuda", "alloc", str(38 * MIB + 1)).json()
        assert other["rc"] == 2 and other["total"] == 48 * MIB and other["free"] == 38 * MIB
        assert h.run("t_cuda", "alloc", str(38 * MIB)).json()["rc"] == 0
    assert leased_bytes(ledger) == 0  # and it is returned when the process dies


def test_restore_over_the_new_quota_keeps_memory_but_refuses_more(h: Harness, tmp_path: Path) -> None:
    quota = quota_file(h, tmp_path, "* 64Mi\n")
    ledger = h.shm_dir / "hcs-vram.ledger"
    with restored_process(h, 40 * MIB) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        ledger.rename(h.shm_dir / "old.ledger")
        ledger.touch(mode=0o666)
        quota.write_text("* 32Mi\n")  # the new container's quota is below what the process holds
        proc.stdin.write("moved\n")
        proc.stdin.flush()
        res = json.loads(proc.stdout.readline())
        # nothing more fits (not even one byte); the 40 MiB it holds stay counted in the new ledger
        assert res["free"] == 0 and res["total"] == 32 * MIB and res["over"] == 2, res
        assert leased_bytes(ledger) == 40 * MIB
        assert h.run("t_cuda", "alloc", "1").json()["rc"] == 2


def test_descriptor_swapped_for_another_file_is_not_a_restore(h: Harness, tmp_path: Path) -> None:
    """An application that puts some other file at the ledger's descriptor number gains nothing: the
    region is broken and every further allocation refused (the kept-closed-fds guarantee)."""
    h.base_env["HCS_VRAM_QUOTA"] = "64Mi"
    with restored_process(h, 10 * MIB) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        ledger = h.shm_dir / "hcs-vram.ledger"
        ledger.rename(h.shm_dir / "old.ledger")
        (h.shm_dir / "decoy").touch(mode=0o666)
        ledger.symlink_to(h.shm_dir / "decoy")  # the descriptor is re-opened onto the decoy
        proc.stdin.write("moved\n")
        proc.stdin.flush()
        res = json.loads(proc.stdout.readline())
        assert res["free"] == 0 and res["over"] == 2, res  # not even one byte more
        assert leased_bytes(h.shm_dir / "old.ledger") == 10 * MIB  # still counted where it was
