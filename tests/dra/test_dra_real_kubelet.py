"""The DRA plugin registered with the local cluster's REAL kubelet: a pod with a 16Gi claim runs.

The kubelet's plugin watcher finds our registration socket, the real kube-scheduler allocates the
claim from our ResourceSlices, the kubelet calls NodePrepareResources on our socket, containerd
applies our CDI spec (env, quota file mount, interceptor mount) and the container prints them.
When the pod completes the kubelet calls NodeUnprepareResources, which removes the spec.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dra_helpers import GiB, make_device  # noqa: E402

from hcs.devices.model import Vendor  # noqa: E402
from hcs.kube import RESOURCE_API, KubeError, KubeRest  # noqa: E402
from hcs.node.dra.config import DraConfig  # noqa: E402
from hcs.node.dra.plugin import DraPlugin  # noqa: E402
from hcs.testing.cluster import busybox_pod  # noqa: E402
from hcs.testing.kube_objects import delete_namespace, ensure_namespace, wait_for  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
#: its own driver name: other suites on the shared cluster run ai.compute plugins for the same node
DRIVER = "kubelet-test.ai.compute"
CLASS = "kubelet-test.ai.compute"


@pytest.fixture
def real_node_plugin(kube_cluster: Any, api_client: Any, tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("the real kubelet's directories need root")
    lib = REPO / "interceptor" / "build"
    cfg = DraConfig(
        node_name=kube_cluster.node_name,
        driver_name=DRIVER,
        plugins_registry=str(kube_cluster.kubelet_dir / "plugins_registry"),
        plugin_dir=str(kube_cluster.kubelet_dir / "plugins" / DRIVER),
        cdi_dir="/var/run/cdi",
        interceptor_host_dir=str(lib) if (lib / "libhcs_interceptor.so").exists() else "",
        device_isolation=False,
    )
    devices = [make_device(Vendor.NVIDIA, i, vram_gib=80) for i in range(2)]
    plugin = DraPlugin(cfg, devices, api_client)
    plugin.start()
    yield plugin, cfg, devices
    plugin.stop()
    if plugin.slices is not None:
        plugin.slices.delete_all()


def test_real_kubelet_runs_pod_with_16gi_claim(kube_cluster, api_client, real_node_plugin):
    plugin, cfg, devices = real_node_plugin
    rest = KubeRest(api_client)
    assert plugin.registered.wait(30), f"the kubelet did not register the plugin: {plugin.registration_error}"
    assert plugin.slices is not None and plugin.slices.wait_synced(30), plugin.slices.last_error
    try:
        rest.request("POST", f"{RESOURCE_API}/deviceclasses", body={
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": CLASS},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]}})
    except KubeError as exc:
        assert exc.status == 409, exc
    ns = f"hcs-dra-kubelet-{os.getpid()}"
    ensure_namespace(rest, ns)
    try:
        rest.request("POST", f"{RESOURCE_API}/namespaces/{ns}/resourceclaimtemplates", body={
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": "vram-16gi"},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": CLASS, "capacity": {"requests": {"memory": "16Gi"}}}}]}}},
        })
        script = "echo CUDA=$CUDA_VISIBLE_DEVICES; echo QUOTA=$(cat $HCS_QUOTA_FILE); echo CLAIM=$HCS_CLAIM"
        pod = busybox_pod("dra16", ["sh", "-c", script], image=kube_cluster.busybox_image, namespace=ns,
                          node_name=kube_cluster.node_name,
                          extra_spec={"resourceClaims": [{"name": "acc", "resourceClaimTemplateName": "vram-16gi"}]})
        pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": "acc"}]}
        rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)

        def phase() -> str | None:
            p = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/dra16")
            ph = p.get("status", {}).get("phase")
            return ph if ph in ("Succeeded", "Failed") else None

        final = wait_for(phase, 120, interval_s=0.5)
        events = rest.request("GET", f"/api/v1/namespaces/{ns}/events").get("items") or []
        assert final == "Succeeded", [e.get("message") for e in events][-8:]
        log = rest._send("GET", f"/api/v1/namespaces/{ns}/pods/dra16/log").read().decode()
        values = dict(line.split("=", 1) for line in log.splitlines() if "=" in line)
        assert values["CUDA"] in {d.uuid for d in devices}
        assert values["QUOTA"] == f"0 {16 * GiB}"
        assert values["CLAIM"].startswith(f"{ns}/dra16-acc-")
        # the container saw our CDI edits; once it completed, the kubelet unprepares the claim
        assert wait_for(lambda: not list(Path(cfg.cdi_dir).glob(f"{DRIVER}-device_*.json")), 60), \
            "the kubelet did not unprepare the claim after the pod completed"
        assert plugin.state.claims == {}
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/dra16", query={"gracePeriodSeconds": "0"})
        delete_namespace(rest, ns)
