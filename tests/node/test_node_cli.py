"""`hcs node` as a process: simulated node, kubelet simulator, clean stop; config errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hcs.kubeletsim.deviceplugin import KubeletSim

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "driver" / "profiles" / "a100-80g-nvlink-8.json"


def test_hcs_node_process_registers_and_stops_cleanly() -> None:
    if not (REPO / "driver" / "build" / "lib" / "libnvidia-ml.so.1").exists():
        pytest.skip("simulated NVML not built (make -C driver)")
    root = Path(tempfile.mkdtemp(prefix="hcsc", dir="/tmp"))
    sim = KubeletSim(root / "dp", root / "pr.sock").start()
    cfg = root / "hcs.yaml"
    cfg.write_text(json.dumps({"node": {"stateDir": str(root / "st"), "quotaDir": str(root / "q"),
                                        "shmDir": str(root / "shm"), "cdiDir": str(root / "cdi"),
                                        "metricsPort": 0, "slotsPerDevice": 2}}))
    env = dict(os.environ, HCS_SIM_PROFILE=str(PROFILE), HCS_SIM_FAULTS=str(root / "faults"), NODE_NAME="cli-node")
    proc = subprocess.Popen([sys.executable, "-m", "hcs.cli", "node", "--config", str(cfg), "--no-api-server",
                             "--device-plugin-dir", str(root / "dp"), "--pod-resources-socket",
                             str(root / "pr.sock"), "--cpu-affinity", "auto"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        conn = sim.wait_registered("ai.compute/slot", timeout_s=60)
        assert len(conn.devices) == 16
        # --cpu-affinity auto: every thread (gRPC's included) on the highest CPU the agent may use
        tasks = list(Path(f"/proc/{proc.pid}/task").iterdir())
        assert len(tasks) > 3
        assert {os.sched_getaffinity(int(t.name)) == {max(os.sched_getaffinity(0))} for t in tasks} == {True}
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        assert not (root / "dp" / "hcs-slot.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sim.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_hcs_node_rejects_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("node:\n  slotsPerDevice: -3\n")
    res = subprocess.run([sys.executable, "-m", "hcs.cli", "node", "--config", str(cfg), "--no-api-server"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "node.slotsPerDevice" in res.stderr and str(cfg) in res.stderr


def test_cpu_affinity_values() -> None:
    from hcs.errors import ConfigError
    from hcs.node.affinity import parse_cpus

    allowed = {0, 1, 2, 3, 6}
    assert parse_cpus("", allowed) == set()
    assert parse_cpus("auto", allowed) == {6}
    assert parse_cpus(" 0-2, 6 ", allowed) == {0, 1, 2, 6}
    for bad, why in (("two", "not a CPU number"), ("3-1", "bad range"), ("4-6", r"CPUs \[4, 5\] are not available "
                     r"to the agent \(it may use 0-3,6\)")):
        with pytest.raises(ConfigError, match=why):
            parse_cpus(bad, allowed)


def test_hcs_node_refuses_cpus_it_cannot_use(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "hcs.cli", "node", "--no-api-server", "--cpu-affinity", "4096",
                          "--state-dir", str(tmp_path / "st")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "node.cpuAffinity: CPUs [4096] are not available to the agent" in res.stderr
