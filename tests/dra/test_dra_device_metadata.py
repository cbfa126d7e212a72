"""KEP-5304 device metadata: a DeviceMetadata file per claim request, bind-mounted by the CDI spec.

Real unix sockets and gRPC through the DRA-kubelet simulator; claims from an in-memory store.
"""

from __future__ import annotations

import json
import stat
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dra_helpers import PluginEnv, claim_object  # noqa: E402

from hcs.errors import ConfigError  # noqa: E402
from hcs.node import cdi  # noqa: E402
from hcs.node.dra import checkpoint as ckpt  # noqa: E402
from hcs.node.dra.claims import trim  # noqa: E402
from hcs.node.dra.config import DraConfig  # noqa: E402
from hcs.node.dra.metadata import POD_CLAIM_ANNOTATION  # noqa: E402
from hcs.node.dra.slices import device_attributes  # noqa: E402

NODE = "node-a"
DRIVER = "ai.compute"
ROOT = "/var/run/kubernetes.io/dra-device-attributes"


class Env(PluginEnv):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, device_metadata=True)

    def claim(self, results: list[dict[str, Any]], *, pod_claim: str = "") -> tuple[str, str, str]:
        annotations = {POD_CLAIM_ANNOTATION: pod_claim, "other": "x"} if pod_claim else None
        return self.add_claim(results, annotations=annotations)

    def spec(self, uid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.tmp / "cdi" / f"ai.compute-device_{uid}.json").read_text())
        return data

    def claim_dir(self, uid: str) -> Path:
        return self.cfg.data_dir / "claims" / uid


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def _metadata_mounts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """CDI device name -> its metadata mount."""
    out = {}
    for dev in spec["devices"]:
        for m in dev["containerEdits"].get("mounts", []):
            if m["containerPath"].startswith(ROOT + "/"):
                out[dev["name"]] = m
    return out


def test_prepare_writes_metadata_and_mounts_it_read_only(env):
    env.start()
    ref = env.claim([{"request": "gpu", "device": "nvidia-1", "consumedCapacity": {"memory": "16Gi"}}])
    _, uid, name = ref
    assert env.sim.prepare(DRIVER, [ref])[uid].error == ""
    host = env.claim_dir(uid) / "metadata-gpu.json"
    data = json.loads(host.read_text())
    assert data == {
        "apiVersion": "metadata.resource.k8s.io/v1alpha1",
        "kind": "DeviceMetadata",
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 1},
        "requests": [{"name": "gpu", "devices": [
            {"driver": DRIVER, "pool": NODE, "name": "nvidia-1", "attributes": device_attributes(env.devices[1])},
        ]}],
    }
    assert data["requests"][0]["devices"][0]["attributes"]["uuid"] == {"string": env.devices[1].uuid}
    assert stat.S_IMODE(host.stat().st_mode) == 0o444
    assert not list(env.claim_dir(uid).glob(".*.tmp")), "written through a temp file + rename"
    spec = env.spec(uid)
    assert cdi.validate_spec(spec) == []
    mount = _metadata_mounts(spec)[f"{uid}-gpu"]
    assert mount["hostPath"] == str(host)
    assert mount["containerPath"] == f"{ROOT}/resourceclaims/{name}/gpu/{DRIVER}-metadata.json"
    assert "ro" in mount["options"] and "bind" in mount["options"]

    assert env.sim.unprepare(DRIVER, [ref])[uid].error == ""
    assert not host.exists() and not env.claim_dir(uid).exists() and env.cdi_files() == []


def test_template_claims_subrequests_and_several_requests(env):
    env.start()
    ref = env.claim([
        {"request": "train/big", "device": "nvidia-0"},
        {"request": "train/big", "device": "nvidia-1"},
        {"request": "infer", "device": "nvidia-2", "consumedCapacity": {"memory": "8Gi"}},
    ], pod_claim="gpus")
    _, uid, name = ref
    assert env.sim.prepare(DRIVER, [ref])[uid].error == ""
    train = json.loads((env.claim_dir(uid) / "metadata-train.json").read_text())
    assert train["podClaimName"] == "gpus"
    assert train["requests"][0]["name"] == "train/big", "the allocated alternative is recorded"
    assert [d["name"] for d in train["requests"][0]["devices"]] == ["nvidia-0", "nvidia-1"]
    infer = json.loads((env.claim_dir(uid) / "metadata-infer.json").read_text())
    assert [d["name"] for d in infer["requests"][0]["devices"]] == ["nvidia-2"]
    mounts = _metadata_mounts(env.spec(uid))
    assert mounts[f"{uid}-train"]["containerPath"] == f"{ROOT}/resourceclaimtemplates/gpus/train/{DRIVER}-metadata.json"
    assert mounts[f"{uid}-infer"]["containerPath"] == f"{ROOT}/resourceclaimtemplates/gpus/infer/{DRIVER}-metadata.json"
    assert name not in mounts[f"{uid}-train"]["containerPath"]


def test_attributes_are_the_published_ones(env):
    env.cfg = replace(env.cfg, mode="partitioned", partition_bytes=(20 << 30,))
    env.start(driver_versions={"nvidia": "550.54.15"})
    ref = env.claim([{"request": "gpu", "device": "nvidia-3-20gi-1"}])
    assert env.sim.prepare(DRIVER, [ref])[ref[1]].error == ""
    data = json.loads((env.claim_dir(ref[1]) / "metadata-gpu.json").read_text())
    (dev,) = data["requests"][0]["devices"]
    assert dev["name"] == "nvidia-3-20gi-1"
    assert dev["attributes"] == {**device_attributes(env.devices[3], "550.54.15"), "partition": {"bool": True}}
    assert env.plugin is not None
    published = {d["name"]: d["attributes"] for s in env.plugin._desired_slices() for d in s.spec.get("devices", [])}
    assert dev["attributes"] == published["nvidia-3-20gi-1"]


def test_restart_between_prepare_and_unprepare_loses_nothing(env):
    env.start()
    ref = env.claim([{"request": "gpu", "device": "nvidia-0"}])
    uid = ref[1]
    out = env.sim.prepare(DRIVER, [ref])[uid]
    host = env.claim_dir(uid) / "metadata-gpu.json"
    before = host.read_text()
    env.stop()
    env.sim.close()
    plugin = env.start()
    assert plugin.recovery_notes == [] and host.read_text() == before
    assert env.sim.prepare(DRIVER, [ref])[uid] == out, "answered from the checkpoint"
    assert _metadata_mounts(env.spec(uid))[f"{uid}-gpu"]["hostPath"] == str(host)
    assert env.sim.unprepare(DRIVER, [ref])[uid].error == ""
    assert not env.claim_dir(uid).exists() and env.cdi_files() == []


def test_crash_before_the_checkpoint_leaks_no_metadata(env):
    env.start()
    ref = env.claim([{"request": "gpu", "device": "nvidia-0"}])
    assert env.sim.prepare(DRIVER, [ref])[ref[1]].error == ""
    env.stop()
    env.sim.close()
    # the files were written but the process died before recording the claim
    ckpt.save(env.cfg.data_dir / "checkpoint.json", {})
    plugin = env.start()
    assert any("leaked claim dir" in n for n in plugin.recovery_notes)
    assert not env.claim_dir(ref[1]).exists() and env.cdi_files() == []


def test_corrupt_checkpoint_is_rebuilt_and_unprepare_removes_metadata(env):
    env.start()
    ref = env.claim([{"request": "gpu", "device": "nvidia-0"}])
    assert env.sim.prepare(DRIVER, [ref])[ref[1]].error == ""
    env.stop()
    env.sim.close()
    (env.cfg.data_dir / "checkpoint.json").write_text("{garbage")
    env.start()
    assert (env.claim_dir(ref[1]) / "metadata-gpu.json").exists()
    assert env.sim.unprepare(DRIVER, [ref])[ref[1]].error == ""
    assert not env.claim_dir(ref[1]).exists()


def test_off_by_default(env):
    env.cfg = replace(env.cfg, device_metadata=False)
    env.start()
    ref = env.claim([{"request": "gpu", "device": "nvidia-0"}])
    assert env.sim.prepare(DRIVER, [ref])[ref[1]].error == ""
    assert not list(env.claim_dir(ref[1]).glob("metadata-*")) and _metadata_mounts(env.spec(ref[1])) == {}
    assert DraConfig(node_name=NODE).device_metadata is False


def test_config_and_claim_cache_keep_what_metadata_needs():
    assert DraConfig.from_mapping({"deviceMetadata": True}, node_name=NODE, environ={}).device_metadata
    with pytest.raises(ConfigError, match=r"deviceMetadata: expected true or false"):
        DraConfig.from_mapping({"deviceMetadata": "on"}, node_name=NODE, environ={})
    claim = claim_object("ns", "c", "u1", NODE, [{"request": "gpu", "device": "nvidia-0"}])
    claim["metadata"]["annotations"] = {POD_CLAIM_ANNOTATION: "gpus", "big": "x" * 1000}
    assert trim(claim)["metadata"]["annotations"] == {POD_CLAIM_ANNOTATION: "gpus"}
    del claim["metadata"]["annotations"]
    assert "annotations" not in trim(claim)["metadata"]
