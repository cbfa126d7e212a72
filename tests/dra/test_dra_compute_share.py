"""Compute limits on the DRA path (issue 19): a claim's consumed ``tflopsFP16`` becomes the same share
file, quota-file record and node-wide compute-ledger mount as a device-plugin container's
``ai.compute/tflops-fp16`` (tests/node/test_node_compute.py), and the real interceptor reads it.

The first tests drive the plugin over its real sockets with the DRA-kubelet simulator (claims from
memory); the last runs a pod on the local cluster's real kubelet with the real scheduler allocating
the claim, and the pod's ``hcs.io/compute-policy`` read from the API server."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "interceptor"))
from dra_helpers import (  # noqa: E402
    GiB,
    PluginEnv,
    create_claim_template,
    real_kubelet_plugin,
    registered_with_a_device_class,
    run_to_completion,
)
from interceptor_harness import build as build_interceptor  # noqa: E402

from hcs.devices.injection import CONTAINER_COMPUTE_DIR  # noqa: E402
from hcs.kube import RESOURCE_API, KubeError, KubeRest  # noqa: E402
from hcs.testing.cluster import busybox_pod  # noqa: E402
from hcs.testing.kube_objects import delete_namespace, ensure_namespace  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DRIVER = "ai.compute"


@pytest.fixture
def env(tmp_path: Path):
    compute = tmp_path / "compute"
    e = PluginEnv(tmp_path, compute_dir=str(compute), compute_policy="hard")
    yield e
    e.close()


def _prepared(env: PluginEnv, ref: tuple[str, str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Prepare the claim ``ref`` (it must succeed); return its CDI container edits and their env."""
    out = env.sim.prepare(DRIVER, [ref])[ref[1]]
    assert out.error == ""
    (spec,) = env.cdi_files()
    edits: dict[str, Any] = json.loads(spec.read_text())["devices"][0]["containerEdits"]
    return edits, dict(e.split("=", 1) for e in edits["env"])


def _mount(edits: dict[str, Any], container_path: str) -> dict[str, Any]:
    return next(m for m in edits["mounts"] if m["containerPath"] == container_path)


def test_consumed_tflops_write_the_share_file_record_and_mount_the_compute_ledger(env: PluginEnv) -> None:
    env.start()
    # 78 of the device's 312 A100-equivalent TFLOPS = 25 %
    ref = env.add_claim([{"request": "gpu", "device": "nvidia-1",
                          "consumedCapacity": {"memory": "16Gi", "tflopsFP16": "78"}}])
    edits, envs = _prepared(env, ref)
    ledger = Path(_mount(edits, envs["HCS_SHM_DIR"])["hostPath"])
    text = (ledger / "compute").read_text()
    assert "policy hard\n" in text and f"group claim-{ref[1]}-gpu\n" in text, text
    assert f"0 0.250000 78.0000 312.0000 {env.devices[1].uuid}\n" in text, text
    assert not (ledger / "compute").stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    quota = Path(_mount(edits, envs["HCS_QUOTA_FILE"])["hostPath"]).read_text()
    assert quota == f"0 {16 * GiB}\n# hcs-compute 0 0.250000\n"
    compute = _mount(edits, CONTAINER_COMPUTE_DIR)
    assert compute["hostPath"] == env.cfg.compute_dir and "rw" in compute["options"]
    assert stat.S_IMODE(os.stat(env.cfg.compute_dir).st_mode) == 0o1777
    assert env.sim.unprepare(DRIVER, [ref])[ref[1]].error == ""
    assert not ledger.exists()


def test_claim_without_tflops_is_not_limited_but_still_mounts_the_compute_dir(env: PluginEnv) -> None:
    """As a device-plugin container without ai.compute/tflops-fp16: no share file, no record; the
    node-wide dir is mounted all the same (the interceptor's synchronise timing lives there)."""
    env.start()
    ref = env.add_claim([{"request": "gpu", "device": "nvidia-0",
                          "consumedCapacity": {"memory": "8Gi", "tflopsFP16": "0"}}])
    edits, envs = _prepared(env, ref)
    assert not (Path(_mount(edits, envs["HCS_SHM_DIR"])["hostPath"]) / "compute").exists()
    assert Path(_mount(edits, envs["HCS_QUOTA_FILE"])["hostPath"]).read_text() == f"0 {8 * GiB}\n"
    assert _mount(edits, CONTAINER_COMPUTE_DIR)["hostPath"] == env.cfg.compute_dir


def test_garbage_tflops_fail_the_prepare_with_a_clear_error(env: PluginEnv) -> None:
    env.start()
    ref = env.add_claim([{"request": "gpu", "device": "nvidia-0",
                          "consumedCapacity": {"memory": "8Gi", "tflopsFP16": "lots"}}])
    err = env.sim.prepare(DRIVER, [ref])[ref[1]].error
    assert "tflopsFP16" in err and ref[2] in err, err
    assert env.cdi_files() == []


def test_the_interceptor_applies_the_share_file_the_dra_path_wrote(env: PluginEnv, tmp_path: Path) -> None:
    """The agent's text, parsed by the real libhcs_interceptor.so (development path HCS_COMPUTE_FILE
    to the prepared file): one line of log naming the share, no error."""
    lib = REPO / "interceptor" / "build" / "libhcs_interceptor.so"
    tool = REPO / "interceptor" / "build" / "tests" / "t_compute"
    if not lib.exists() or not tool.exists():  # `make dev` builds the library; the test programs are built here
        build_interceptor()
    env.start()
    ref = env.add_claim([{"request": "gpu", "device": "nvidia-2",
                          "consumedCapacity": {"memory": "8Gi", "tflopsFP16": "156"}}])
    edits, envs = _prepared(env, ref)
    share = Path(_mount(edits, envs["HCS_SHM_DIR"])["hostPath"]) / "compute"
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"name": "t", "devices": [
        {"vendor": "nvidia", "model": "H100", "uuid": "GPU-dra-compute-0", "pci_bus_id": "0000:10:00.0",
         "memory_mib": 4096, "numa_node": 0, "tflops_fp16": 989, "timeslice_us": 2000}]}))
    (tmp_path / "dev").mkdir()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD"))}
    run_env.update(LD_PRELOAD=str(lib), HCS_COMPUTE_FILE=str(share), HCS_INTERCEPTOR_LOG="2",
                   HCS_SIM_PROFILE=str(profile), HCS_SIM_DEVICE_DIR=str(tmp_path / "dev"),
                   HCS_COMPUTE_DIR=str(env.cfg.compute_dir))
    p = subprocess.run([str(tool), "cuda", "0", "0.3", "1000000", "8"], env=run_env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert f"compute limits: policy hard, group claim-{ref[1]}-gpu" in p.stderr, p.stderr
    assert "applying" not in p.stderr, p.stderr  # no fallback: the file parsed


# ---------------------------------------------------------------- the real kubelet


CLASS = "compute-test.ai.compute"
KDRIVER = "compute-test.ai.compute"


@pytest.fixture
def real_node_plugin(kube_cluster: Any, api_client: Any):
    compute = Path("/tmp") / f"hcs-dra-compute-{os.getpid()}"
    with real_kubelet_plugin(kube_cluster, api_client, KDRIVER, compute_dir=str(compute),
                             compute_policy="hard") as plugin_cfg_devices:
        yield plugin_cfg_devices
    with contextlib.suppress(OSError):
        compute.rmdir()


@pytest.mark.cluster
@pytest.mark.slow
def test_real_kubelet_pod_with_a_tflops_claim_sees_its_share_and_policy(kube_cluster, api_client, real_node_plugin):
    """A pod annotated hcs.io/compute-policy: burst with a claim of 16Gi + 78 TFLOPS: the real scheduler
    allocates it, the real kubelet prepares it through our socket, containerd applies the CDI edits, and
    the container reads its share file (policy burst, 25 %), its quota record and the compute dir."""
    plugin, cfg, devices = real_node_plugin
    rest = KubeRest(api_client)
    registered_with_a_device_class(plugin, rest, CLASS, KDRIVER)
    ns = f"hcs-dra-compute-{os.getpid()}"
    ensure_namespace(rest, ns)
    try:
        create_claim_template(rest, ns, "share", CLASS, {"memory": "16Gi", "tflopsFP16": "78"})
        script = ("echo SHARE=$(tr '\\n' ';' < $HCS_SHM_DIR/compute); echo QUOTA=$(tr '\\n' ';' < $HCS_QUOTA_FILE); "
                  f"test -d {CONTAINER_COMPUTE_DIR} && echo COMPUTE_DIR=yes")
        pod = busybox_pod("drashare", ["sh", "-c", script], image=kube_cluster.busybox_image, namespace=ns,
                          node_name=kube_cluster.node_name,
                          extra_spec={"resourceClaims": [{"name": "acc", "resourceClaimTemplateName": "share"}]})
        pod["metadata"].setdefault("annotations", {})["hcs.io/compute-policy"] = "burst"
        pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": "acc"}]}
        values = run_to_completion(rest, ns, pod)
        share = values["SHARE"].split(";")
        assert "policy burst" in share, share
        assert any(line.startswith("0 0.250000 78.0000 312.0000 ") for line in share), share
        assert values["QUOTA"] == f"0 {16 * GiB};# hcs-compute 0 0.250000;", values
        assert values["COMPUTE_DIR"] == "yes"
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/drashare", query={"gracePeriodSeconds": "0"})
        delete_namespace(rest, ns)
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"{RESOURCE_API}/deviceclasses/{CLASS}")
