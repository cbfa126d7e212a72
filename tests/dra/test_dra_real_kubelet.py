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
from dra_helpers import (  # noqa: E402
    GiB,
    create_claim_template,
    real_kubelet_plugin,
    registered_with_a_device_class,
    run_to_completion,
)

from hcs.kube import KubeError, KubeRest  # noqa: E402
from hcs.testing.cluster import busybox_pod  # noqa: E402
from hcs.testing.kube_objects import delete_namespace, ensure_namespace, wait_for  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
#: its own driver name: other suites on the shared cluster run ai.compute plugins for the same node
DRIVER = "kubelet-test.ai.compute"
CLASS = "kubelet-test.ai.compute"


@pytest.fixture
def real_node_plugin(kube_cluster: Any, api_client: Any):
    with real_kubelet_plugin(kube_cluster, api_client, DRIVER) as plugin_cfg_devices:
        yield plugin_cfg_devices


def test_real_kubelet_runs_pod_with_16gi_claim(kube_cluster, api_client, real_node_plugin):
    plugin, cfg, devices = real_node_plugin
    rest = KubeRest(api_client)
    registered_with_a_device_class(plugin, rest, CLASS, DRIVER)
    ns = f"hcs-dra-kubelet-{os.getpid()}"
    ensure_namespace(rest, ns)
    try:
        create_claim_template(rest, ns, "vram-16gi", CLASS, {"memory": "16Gi"})
        script = "echo CUDA=$CUDA_VISIBLE_DEVICES; echo QUOTA=$(cat $HCS_QUOTA_FILE); echo CLAIM=$HCS_CLAIM"
        pod = busybox_pod("dra16", ["sh", "-c", script], image=kube_cluster.busybox_image, namespace=ns,
                          node_name=kube_cluster.node_name,
                          extra_spec={"resourceClaims": [{"name": "acc", "resourceClaimTemplateName": "vram-16gi"}]})
        pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": "acc"}]}
        values = run_to_completion(rest, ns, pod)
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
