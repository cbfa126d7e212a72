"""Compute limits, node agent side (issue 19): the share file the agent writes next to the VRAM quota,
its record in the quota file, the node-wide compute ledger mount, the pod's hcs.io/compute-policy,
and the agent's text parsed by the real interceptor."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from node_helpers import GiB, device, node_env  # noqa: E402

from hcs.devices.injection import CONTAINER_COMPUTE_DIR, compute_share, compute_share_text  # noqa: E402
from hcs.devices.model import Vendor  # noqa: E402
from hcs.errors import ConfigError  # noqa: E402
from hcs.kubeletsim.deviceplugin import SimPod  # noqa: E402
from hcs.node.agent import NodeAgent  # noqa: E402
from hcs.node.assignments import PodDemand, PodRef, demand_from_pod  # noqa: E402
from hcs.node.config import node_config  # noqa: E402

RESOURCE = "ai.compute/slot"


def test_allocate_writes_the_share_file_its_record_and_mounts_the_compute_ledger() -> None:
    with node_env() as env:
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80)], pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            p = PodDemand(PodRef("uid-c", "default", "c", 1, compute_policy="burst"), (("main", 16 * GiB),),
                          None, (("main", 78_000),))
            env.pods.add(p)
            [resp] = env.sim.admit(SimPod("default", "c", "uid-c", (("main", 1),)), RESOURCE)
            env.sim.start_container("default", "c", "main")
            mounts = {m.container_path: m for m in resp.mounts}
            ledger = Path(mounts[resp.envs["HCS_SHM_DIR"]].host_path)
            text = (ledger / "compute").read_text()
            # 78 of the device's 312 A100-equivalent TFLOPS (rate 1.0) = 25 %
            assert "policy burst\n" in text and "group uid-c_main\n" in text
            assert "0 0.250000 78.0000 312.0000 NVIDIA-UUID-0000\n" in text
            assert not (ledger / "compute").stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
            quota = Path(mounts[resp.envs["HCS_QUOTA_FILE"]].host_path).read_text()
            assert quota == f"0 {16 * GiB}\n# hcs-compute 0 0.250000\n"
            assert mounts[resp.envs["HCS_SHM_DIR"]].read_only
            compute = mounts[CONTAINER_COMPUTE_DIR]
            assert not compute.read_only and compute.host_path == env.config.computeDir
            assert stat.S_IMODE(os.stat(env.config.computeDir).st_mode) == 0o1777
        finally:
            agent.stop()


def test_no_tflops_no_share_file_and_the_node_default_policy() -> None:
    with node_env(computePolicy="burst") as env:
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80)], pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            env.pods.add(PodDemand(PodRef("uid-v", "default", "v", 1), (("main", 8 * GiB),)))
            [rv] = env.sim.admit(SimPod("default", "v", "uid-v", (("main", 1),)), RESOURCE)
            env.sim.start_container("default", "v", "main")
            env.pods.add(PodDemand(PodRef("uid-t", "default", "t", 2), (("main", 8 * GiB),), None, (("main", 31_200),)))
            [rt] = env.sim.admit(SimPod("default", "t", "uid-t", (("main", 1),)), RESOURCE)
            env.sim.start_container("default", "t", "main")
            shm_v = Path({m.container_path: m for m in rv.mounts}[rv.envs["HCS_SHM_DIR"]].host_path)
            shm_t = Path({m.container_path: m for m in rt.mounts}[rt.envs["HCS_SHM_DIR"]].host_path)
            assert not (shm_v / "compute").exists()  # no grant: the device is not limited
            assert "policy burst\n" in (shm_t / "compute").read_text()  # the node's default
            assert "0 0.100000 31.2000 312.0000" in (shm_t / "compute").read_text()
        finally:
            agent.stop()


def test_pod_annotation_and_tflops_request_are_read_from_the_pod() -> None:
    pod = {"metadata": {"uid": "u1", "namespace": "ns", "name": "p",
                        "annotations": {"hcs.io/compute-policy": " Burst "}},
           "spec": {"containers": [{"name": "main", "resources": {"requests": {
               "ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "100"}}}]}}
    d = demand_from_pod(pod)
    assert d is not None and d.pod.compute_policy == "burst" and d.tflops_milli == (("main", 100_000),)
    pod["metadata"]["annotations"] = {"hcs.io/compute-policy": "unlimited"}  # type: ignore[index]
    d = demand_from_pod(pod)
    assert d is not None and d.pod.compute_policy == ""  # not a looser mode: the node's default


def test_compute_policy_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="computePolicy"):
        node_config({"computePolicy": "soft"})


def test_share_of_an_h100_at_rate_1_5() -> None:
    """The issue's example: 100 TFLOPS-fp16 on an H100 (rate 1.5 -> 468 offered) is 21.4 %."""
    s = compute_share(100.0, 1.5 * 312, "GPU-h100")
    assert s is not None and round(s.share, 4) == 0.2137
    assert compute_share(0, 468.0, "x") is None  # no grant: not limited
    big = compute_share(900.0, 468.0, "x")
    assert big is not None and big.share == 1.0  # never more than the device
    assert "0 0.213675 100.0000 468.0000 GPU-h100\n" in compute_share_text([s], "hard", "g")
