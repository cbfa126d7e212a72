"""HealthMonitor against the simulated libraries: events and polled health, fault then recovery."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "driver" / "profiles"

pytestmark = pytest.mark.skipif(not (ROOT / "driver/build/lib/libnvidia-ml.so.1").exists(),
                                reason="simulated drivers not built (run `make dev`)")

WATCHER = """
import json, sys
from hcs.devices.inventory import discover
from hcs.devices.health import HealthMonitor
inv = discover()
with HealthMonitor(inv, clear_s=1.0) as mon:  # short hysteresis: recovery within the test's wait
    print(json.dumps({"ready": len(inv.devices)}), flush=True)
    while True:
        for c in mon.wait(0.2):
            print(json.dumps({"key": c.device_key, "score": c.new.score, "reasons": list(c.new.reasons)}), flush=True)
"""


class Watcher:
    def __init__(self, profile: str, faults: Path) -> None:
        env = dict(os.environ, HCS_SIM_PROFILE=str(PROFILES / profile), HCS_SIM_FAULTS=str(faults))
        self.proc = subprocess.Popen([sys.executable, "-c", WATCHER], env=env, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        assert self.next(30)["ready"] > 0

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, timeout: float = 5.0) -> dict:
        return self.lines.get(timeout=timeout)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def faults(tmp_path: Path) -> Path:
    path = tmp_path / "node.faults"
    path.write_text("")
    return path


def append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


def test_nvidia_xid_event_marks_device_unhealthy_and_application_xids_are_ignored(faults):
    w = Watcher("a100-80g-nvlink-8.json", faults)
    try:
        append(faults, "nvidia 2 xid 13")  # application error: ignored
        append(faults, "nvidia 5 xid 79")  # fell off the bus
        change = w.next()
        assert change["key"] == "nvidia-5" and change["score"] == 0
        assert any("Xid 79" in r for r in change["reasons"])
        with pytest.raises(queue.Empty):
            w.next(1.0)  # nothing about nvidia-2
    finally:
        w.close()


def test_nvidia_lost_device_and_its_recovery_are_both_reported(faults):
    w = Watcher("a100-80g-nvlink-8.json", faults)
    try:
        append(faults, "nvidia 1 health lost")
        bad = w.next()
        assert bad["key"] == "nvidia-1" and bad["score"] == 0
        assert any("NVML query failed" in r for r in bad["reasons"])
        append(faults, "nvidia 1 health ok")
        assert w.next() == {"key": "nvidia-1", "score": 100, "reasons": []}
    finally:
        w.close()


@pytest.mark.parametrize(("profile", "vendor"), [("ascend-910b-hccs-8.json", "ascend"),
                                                 ("hygon-k100ai-xgmi-8.json", "hygon"),
                                                 ("mlu370-x8-mlulink-8.json", "cambricon")])
def test_polled_vendors_report_fault_then_recovery(faults, profile, vendor):
    w = Watcher(profile, faults)
    try:
        append(faults, f"{vendor} 4 health critical")
        bad = w.next()
        assert bad["key"] == f"{vendor}-4" and bad["score"] < 50 and bad["reasons"]
        append(faults, f"{vendor} 4 clear")
        good = w.next()
        assert good == {"key": f"{vendor}-4", "score": 100, "reasons": []}
    finally:
        w.close()
