"""e2e/kind: the simulated-node setup creates what the backends and the vendor injection will use.

kind itself cannot run here (no Docker engine); these tests check its inputs: the kind config, the
script syntax, and that e2e/kind/sim_devices.py creates every device node, driver directory and tool
the device backends report (``hcs inspect`` on each shipped profile, through the simulated C
libraries) and the vendor injection mounts into containers.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KIND = REPO / "e2e" / "kind"
PROFILES = sorted((REPO / "driver" / "profiles").glob("*.json"))
SIM_LIBS = REPO / "driver" / "build" / "lib"

sys.path.insert(0, str(KIND))
import sim_devices  # noqa: E402


def _inspect(profile: Path) -> list[dict[str, object]]:
    if not (SIM_LIBS / "libnvidia-ml.so.1").exists():
        pytest.skip("simulated driver libraries not built (make dev)")
    out = subprocess.run([sys.executable, "-m", "hcs.cli", "inspect", "--profile", str(profile), "--output", "json"],
                         capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert out.returncode == 0, out.stderr
    devices: list[dict[str, object]] = json.loads(out.stdout)["devices"]
    return devices


def test_kind_config_enables_dra_gates_cdi_and_two_accelerator_workers() -> None:
    cfg = yaml.safe_load((KIND / "kind-config.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert {"DRAConsumableCapacity", "DRAPartitionableDevices"} <= {k for k, v in cfg["featureGates"].items() if v}
    patch = "\n".join(cfg["containerdConfigPatches"])
    assert "enable_cdi = true" in patch and "/var/run/cdi" in patch
    workers = [n for n in cfg["nodes"] if n["role"] == "worker"]
    assert len(workers) >= 2 and all(n["labels"]["hcs.io/accelerator"] == "true" for n in workers)


def test_run_script_is_valid_bash() -> None:
    out = subprocess.run(["bash", "-n", str(KIND / "run.sh")], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert os.access(KIND / "run.sh", os.X_OK)


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_sim_devices_cover_backend_device_nodes_and_injection(profile: Path) -> None:
    from hcs.devices.injection import InjectionOptions, container_edits
    from hcs.devices.model import Compute, Device, Vendor

    devices = _inspect(profile)
    nodes, dirs, tools = sim_devices.plan(sim_devices.load_profile(profile))
    reported = {n for d in devices for n in d["device_nodes"]}  # type: ignore[attr-defined]
    assert reported and reported <= set(nodes), sorted(reported - set(nodes))
    # Everything the injection passes into a container exists on the simulated node.
    created = set(nodes) | set(dirs) | set(tools)
    raw = json.loads(profile.read_text())["devices"]
    for vendor in {str(d["vendor"]) for d in raw}:
        fake = [Device(vendor=Vendor(vendor), model="x", name="x", uuid=f"u{i}", index=i, pci_bus_id=f"0000:0{i}:00.0",
                       numa_node=0, vram_total_bytes=1 << 30, vram_used_bytes=0, compute=Compute(1, 1, 1, 1),
                       device_nodes=tuple(str(n) for n in devices[i]["device_nodes"]))  # type: ignore[index]
                for i, d in enumerate(devices) if d["vendor"] == vendor][:2]
        edits = container_edits(fake, [1 << 30] * len(fake), None, InjectionOptions(interceptor_host_dir=""))
        for dn in edits.device_nodes:
            assert dn.source in created, f"{profile.name}: injection passes {dn.source}, not created"
        for m in edits.mounts:
            assert any(m.host_path == c or c.startswith(m.host_path + "/") for c in created), (
                f"{profile.name}: injection mounts {m.host_path}, not created")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_sim_devices_script_runs_and_creates_char_devices(tmp_path: Path) -> None:
    if not (SIM_LIBS / "libdcmi.so").exists():
        pytest.skip("simulated driver libraries not built (make dev)")
    profile = REPO / "driver" / "profiles" / "mixed-a100-910b.json"
    text = sim_devices.script(sim_devices.load_profile(profile), root=str(tmp_path), lib_dir=str(SIM_LIBS),
                              sim_dir="/opt/hcs/sim")
    out = subprocess.run(["sh", "-c", text], capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    nodes, dirs, tools = sim_devices.plan(sim_devices.load_profile(profile), str(tmp_path))
    for n in nodes:
        assert stat.S_ISCHR(os.stat(n).st_mode), n
    for d, libs in dirs.items():
        for lib in libs:
            assert (Path(d) / lib).read_bytes() == (SIM_LIBS / lib).read_bytes()
    for t in tools:
        assert os.access(t, os.X_OK)
    assert (tmp_path / "opt/hcs/sim/profile.json.faults").exists()
    again = subprocess.run(["sh", "-c", text], capture_output=True, text=True, check=False, timeout=60)
    assert again.returncode == 0, "the script is not idempotent: " + again.stderr


def test_sim_devices_rejects_a_bad_profile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"devices": [{"vendor": "intel"}]}))
    out = subprocess.run([sys.executable, str(KIND / "sim_devices.py"), str(bad)], capture_output=True, text=True,
                         check=False)
    assert out.returncode != 0 and "devices[0].vendor" in out.stderr
