"""A real CRIU dump and restore of a process running under the VRAM interceptor, without Kubernetes.

(marker `checkpoint`: needs root and the CRIU of e2e/checkpoint/criu-setup; no cluster.)

e2e/checkpoint/quota_counter.c runs with libhcs_interceptor.so (development mode: HCS_SHM_DIR /
HCS_QUOTA_FILE) on the simulated libcuda (HCS_SIM_VISIBLE_DEVICES_FILE names its device). CRIU dumps it
with ``--file-locks`` (the ledger leases are OFD locks), then - as a restore into a new container does -
the same paths get another ledger file, a smaller quota, another node profile and another device, and CRIU
restores it. The restored process must: continue its counter with its memory intact, run on the new device
(simulated runtime re-map), enforce the NEW quota at the exact boundary with its 64 MiB counted, have its
usage in the NEW ledger and none left in the old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ckpt_helpers import wait_for  # noqa: E402

from hcs.testing.ledger_locks import leased_bytes  # noqa: E402

pytestmark = pytest.mark.checkpoint

REPO = Path(__file__).resolve().parents[2]
CRIU = Path(os.environ.get("HCS_CRIU_CACHE") or Path.home() / ".cache" / "hcs" / "criu") / "bin" / "criu"
MIB = 1 << 20
LINE_RE = re.compile(r"^step=(\d+) t=\S+ vram_mib=\d+ ok=(\d) device=\S+ total=(\d+) free=(\d+) exact=(\d) "
                     r"cuda_uuid=(\S+)$")


def lines(log: Path) -> list[tuple[int, int, int, int, int, str]]:
    out = []
    for raw in log.read_text(errors="replace").splitlines():
        m = LINE_RE.match(raw.strip())
        if m:
            out.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)),
                        m.group(6)))
    return out


def uuid_of(profile: Path, i: int) -> str:
    return str(json.loads(profile.read_text())["devices"][i]["uuid"])


@pytest.fixture
def criu() -> Path:
    if os.geteuid() != 0:
        pytest.skip("CRIU needs root")
    if not CRIU.exists():
        r = subprocess.run([str(REPO / "e2e/checkpoint/criu-setup")], capture_output=True, text=True)
        assert r.returncode == 0, f"e2e/checkpoint/criu-setup failed:\n{r.stderr[-2000:]}"
    for target in ("interceptor", "driver"):
        r = subprocess.run(["make", "-s", "-C", str(REPO / target)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    return CRIU


def test_criu_restore_reattaches_interceptor_and_remaps_device(criu: Path, tmp_path: Path) -> None:
    lib = REPO / "driver" / "build" / "lib"
    qc = tmp_path / "quota_counter"
    r = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(qc),
                        str(REPO / "e2e/checkpoint/quota_counter.c"), f"-L{lib}", "-lcuda"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shm, img = tmp_path / "shm", tmp_path / "img"
    shm.mkdir()
    img.mkdir()
    profile, dev, quota, log = tmp_path / "profile.json", tmp_path / "uuid", tmp_path / "quota", tmp_path / "log"
    shutil.copy(REPO / "driver/profiles/a100-80g-nvlink-8.json", profile)
    dev_a = uuid_of(profile, 0)
    dev.write_text(dev_a + "\n")
    quota.write_text("* 256Mi\n")
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(lib),
           "LD_PRELOAD": str(REPO / "interceptor/build/libhcs_interceptor.so"),
           "HCS_SHM_DIR": str(shm), "HCS_QUOTA_FILE": str(quota), "HCS_SIM_PROFILE": str(profile),
           "HCS_SIM_VISIBLE_DEVICES_FILE": str(dev), "HCS_DEVICE_FILE": str(dev), "HCS_INTERCEPTOR_LOG": "2"}
    with log.open("ab") as out, (tmp_path / "err").open("ab") as err:
        proc = subprocess.Popen([str(qc), "64"], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, cwd=tmp_path)
    pid = proc.pid
    ledger = shm / "hcs-vram.ledger"
    try:
        wait_for(lambda: len(lines(log)) >= 5, 60, "the counter to run")
        before = lines(log)
        assert all(ln[1:5] == (1, 256 * MIB, 192 * MIB, 1) for ln in before), before[-1]
        wait_for(lambda: leased_bytes(ledger) == 64 * MIB, 20, "64 MiB in the ledger")
        d = subprocess.run([str(criu), "dump", "-t", str(pid), "-D", str(img), "--file-locks", "-o", "dump.log"],
                           capture_output=True, text=True, timeout=300)
        assert d.returncode == 0, (img / "dump.log").read_text()[-3000:]
        proc.wait(timeout=30)  # CRIU's dump ends the process
        last = lines(log)[-1][0]
        # the "new container": another ledger file, a smaller quota, another node's profile and device
        old = shm / "old.ledger"
        ledger.rename(old)
        ledger.touch()
        ledger.chmod(0o666)  # CRIU checks size and mode of files it re-opens: as the library created the old one
        quota.write_text("* 192Mi\n")
        shutil.copy(REPO / "driver/profiles/h100-nvlink-8.json", profile)
        dev_b = uuid_of(profile, 1)
        dev.write_text(dev_b + "\n")
        rs = subprocess.run([str(criu), "restore", "-D", str(img), "--file-locks", "-d", "-o", "restore.log"],
                            capture_output=True, text=True, timeout=300)
        assert rs.returncode == 0, (img / "restore.log").read_text()[-3000:]
        wait_for(lambda: sum(1 for ln in lines(log) if ln[5] == dev_b) >= 5, 60, "the restored counter")
        after = lines(log)
        nums = [ln[0] for ln in after]
        assert nums == list(range(1, len(nums) + 1)), "the counter restarted or skipped"
        mine = [ln for ln in after if ln[0] > last]
        assert mine and all(ln[5] == dev_b for ln in mine), "the restored process is not on the new device"
        # memory intact; the new quota with the restored 64 MiB counted, exact at the boundary
        assert all(ln[1:5] == (1, 192 * MIB, 128 * MIB, 1) for ln in mine), mine[:3]
        wait_for(lambda: leased_bytes(ledger) == 64 * MIB, 20, "64 MiB in the new ledger")
        assert leased_bytes(old) == 0, "the old ledger still holds the restored process's leases"
        assert "re-attached to the VRAM ledger" in (tmp_path / "err").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while leased_bytes(ledger) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leased_bytes(ledger) == 0
