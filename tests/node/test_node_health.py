"""Health from the simulated vendor drivers (fault injection) to ListAndWatch, through HealthMonitor."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from node_helpers import RESOURCE, node_env  # noqa: E402

from hcs.devices.model import Vendor  # noqa: E402
from hcs.node.agent import NodeAgent  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "driver" / "profiles" / "a100-80g-nvlink-8.json"
NVML = REPO / "driver" / "build" / "lib" / "libnvidia-ml.so.1"


@pytest.fixture
def sim_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    if not NVML.exists():
        pytest.skip("simulated NVML not built (make -C driver)")
    profile = tmp_path / "node.json"
    shutil.copy(PROFILE, profile)
    faults = tmp_path / "node.faults"
    faults.write_text("")
    monkeypatch.setenv("HCS_SIM_PROFILE", str(profile))
    monkeypatch.setenv("HCS_SIM_FAULTS", str(faults))
    from hcs.devices.health import HealthMonitor
    from hcs.devices.inventory import discover

    inv = discover(vendors=(Vendor.NVIDIA,))
    assert len(inv.devices) == 8
    return inv, HealthMonitor(inv, clear_s=1.0), faults  # short hysteresis: recovery within the wait


def _inject(faults: Path, line: str) -> None:
    with faults.open("a") as f:
        f.write(line + "\n")


def test_unhealthy_and_recovery_reach_listandwatch(sim_node) -> None:  # type: ignore[no-untyped-def]
    inv, monitor, faults = sim_node
    with node_env(slotsPerDevice=2) as env:
        agent = NodeAgent(env.config, inv.devices, health=monitor, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            slots = {s.device_key: [] for s in agent.core.slots}
            for s in agent.core.slots:
                slots[s.device_key].append(s.id)
            assert set(env.sim.devices(RESOURCE).values()) == {"Healthy"}
            _inject(faults, "nvidia 1 health critical")
            for sid in slots["nvidia-1"]:
                env.sim.wait_health(RESOURCE, sid, "Unhealthy", timeout_s=10)
            assert env.sim.devices(RESOURCE)[slots["nvidia-0"][0]] == "Healthy"
            _inject(faults, "nvidia 1 clear")
            for sid in slots["nvidia-1"]:
                env.sim.wait_health(RESOURCE, sid, "Healthy", timeout_s=10)
            # application Xid 13 is ignored; hardware Xid 79 (fallen off the bus) is not
            _inject(faults, "nvidia 3 xid 13")
            _inject(faults, "nvidia 5 xid 79")
            env.sim.wait_health(RESOURCE, slots["nvidia-5"][0], "Unhealthy", timeout_s=10)
            assert env.sim.devices(RESOURCE)[slots["nvidia-3"][0]] == "Healthy"
            assert not agent.view.get("nvidia-5").health.healthy  # type: ignore[union-attr]
            assert agent.view.get("nvidia-3").health.healthy  # type: ignore[union-attr]
        finally:
            agent.stop()
