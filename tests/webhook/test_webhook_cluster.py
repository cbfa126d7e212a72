"""The real kube-apiserver calls the webhook (Mutating/ValidatingWebhookConfiguration with caBundle).

The webhook runs in this process on 127.0.0.1 (the API server runs on this host). The configurations
only select namespaces carrying this test run's label, so other tests on the shared cluster never
reach this webhook.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hcs.cluster_inventory import capacity_of
from hcs.retarget import retarget_pod
from hcs.webhook.capacity import CachedCapacity, ComputeNodeCapacity, StaticCapacity, inventory_of, islands_of
from hcs.webhook.certs import CertPaths, generate_certs
from hcs.webhook.claims import ClaimTemplateController
from hcs.webhook.config import WebhookConfig
from hcs.webhook.kube import ClusterView
from hcs.webhook.manifests import webhook_configurations
from hcs.webhook.review import Admission
from hcs.webhook.server import WebhookServer

pytestmark = pytest.mark.cluster

GI = 2**30
RUN = uuid.uuid4().hex[:6]
SELECT_LABEL = "hcs-webhook-test"
IMAGE = "hcs.local/busybox:1.35"
CUDA_IMAGE = "hcs.local/busybox:cuda-example"


def _apis(api_client: Any) -> tuple[Any, Any, Any]:
    from kubernetes import client

    return client.CoreV1Api(api_client), client.AdmissionregistrationV1Api(api_client), client.AppsV1Api(api_client)


def _json(call: Callable[..., Any], *args: Any) -> Any:
    return json.loads(call(*args, _preload_content=False).data)


def _wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except Exception:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def wh_certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate_certs(tmp_path_factory.mktemp("wh-cluster-certs"))


@pytest.fixture(scope="module")
def namespaces(api_client: Any) -> Iterator[dict[str, str]]:
    core, _, _ = _apis(api_client)
    names = {"dp": f"hcs-wh-dp-{RUN}", "dra": f"hcs-wh-dra-{RUN}"}
    for mode, ns in names.items():
        labels = {SELECT_LABEL: RUN}
        if mode == "dra":
            labels["hcs.io/mode"] = "dra"
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
        _wait(f"default ServiceAccount in {ns}", lambda ns=ns: _json(core.read_namespaced_service_account,
                                                                     "default", ns))
    images = {CUDA_IMAGE: {"ascend": "hcs.local/busybox:ascend-example"}}
    core.create_namespaced_config_map(names["dp"], {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hcs-image-map"},
        "data": {"images.yaml": json.dumps(images)}})
    yield names
    for ns in names.values():
        core.delete_namespace(ns)


@pytest.fixture(scope="module")
def webhook(api_client: Any, wh_certs: CertPaths, namespaces: dict[str, str]) -> Iterator[WebhookServer]:
    cfg = WebhookConfig(image_map=f"{namespaces['dp']}/hcs-image-map", cache_ttl_s=1.0)
    admission = Admission(cfg, StaticCapacity(80 * GI), ClusterView(cfg, api_client))
    server = WebhookServer("127.0.0.1", 0, str(wh_certs.cert), str(wh_certs.key), admission)
    server.start()
    claims = ClaimTemplateController(cfg, api_client).start()  # DRA templates, from the admitted pods
    _, admreg, _ = _apis(api_client)
    mutating, validating = webhook_configurations(
        url=f"https://127.0.0.1:{server.port}", ca_bundle=base64.b64encode(wh_certs.ca.read_bytes()).decode(),
        name_suffix=f"-test-{RUN}", namespace_selector={"matchLabels": {SELECT_LABEL: RUN}},
    )
    admreg.create_mutating_webhook_configuration(mutating)
    admreg.create_validating_webhook_configuration(validating)
    core, _, _ = _apis(api_client)
    probe = _pod("probe", {"ai.compute/vram": "1Gi"})

    def active() -> bool:  # the API server picks up new webhook configurations asynchronously
        for ns in namespaces.values():
            out = json.loads(core.create_namespaced_pod(ns, probe, dry_run="All", _preload_content=False).data)
            if "hcs.io/original-request" not in out["metadata"].get("annotations", {}):
                return False
        return True

    _wait("the API server to call the webhook", active)
    yield server
    admreg.delete_mutating_webhook_configuration(mutating["metadata"]["name"])
    admreg.delete_validating_webhook_configuration(validating["metadata"]["name"])
    claims.stop()
    server.stop()


HIGH_BANDWIDTH = {"hcs.io/topology-preference": "high-bandwidth"}  # the island check applies to these only


def _pod(name: str, requests: dict[str, str], *, annotations: dict[str, str] | None = None,
         image: str = IMAGE) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                 "command": ["true"], "resources": {"requests": requests}}]},
    }


def _create_pod(api_client: Any, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    core, _, _ = _apis(api_client)
    return dict(json.loads(core.create_namespaced_pod(ns, body, _preload_content=False).data))


def _denied(api_client: Any, ns: str, create: Callable[[], Any]) -> str:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        create()
    assert info.value.status == 403, info.value.body
    return str(json.loads(info.value.body)["message"])


def test_device_plugin_pod_is_mutated_by_the_real_api_server(api_client: Any, webhook: WebhookServer,
                                                             namespaces: dict[str, str]) -> None:
    ns = namespaces["dp"]
    # a fractional tflops-fp16 would fail the API server's validation (extended resources are whole
    # numbers, requests = limits); the mutation runs first and makes the pod valid
    pod = _create_pod(api_client, ns, _pod("dp-16g", {"ai.compute/vram": "16384Mi", "ai.compute/tflops-fp16": "99.5"}))
    assert pod["spec"]["schedulerName"] == "hcs-scheduler"
    res = pod["spec"]["containers"][0]["resources"]
    want = {"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "100", "ai.compute/slot": "1"}
    assert res["requests"] == want and res["limits"] == want
    # the API server hands admission canonical quantities (16384Mi arrives as 16Gi, 99.5 as 99500m)
    assert json.loads(pod["metadata"]["annotations"]["hcs.io/original-request"]) == {
        "main": {"requests": {"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "99500m"}}}


def test_invalid_pods_and_workloads_are_denied(api_client: Any, webhook: WebhookServer,
                                               namespaces: dict[str, str]) -> None:
    core, _, apps = _apis(api_client)
    ns = namespaces["dp"]
    msg = _denied(api_client, ns, lambda: core.create_namespaced_pod(ns, _pod("too-big", {"ai.compute/vram": "200Gi"},
                                                                   annotations=HIGH_BANDWIDTH)))
    assert "larger than the largest interconnect island in the cluster (80Gi)" in msg
    assert "spec.containers[0] (container 'main')" in msg
    template = _pod("x", {"ai.compute/vram": "8Gi"}, annotations={"hcs.io/vendor": "amd"})
    template["spec"]["restartPolicy"] = "Always"
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad-vendor"},
                  "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}},
                           "template": {"metadata": {"labels": {"app": "x"}, **template["metadata"]},
                                        "spec": template["spec"]}}}
    msg = _denied(api_client, ns, lambda: apps.create_namespaced_deployment(ns, deployment))
    assert "unknown vendor 'amd'" in msg and "spec.template.metadata.annotations[hcs.io/vendor]" in msg
    priv = _pod("priv", {"ai.compute/vram": "8Gi"})
    priv["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    assert "bypass the in-container quota" in _denied(api_client, ns,
                                                      lambda: core.create_namespaced_pod(ns, priv))


def test_dra_mode_pod_is_translated_and_accepted(api_client: Any, webhook: WebhookServer,
                                                 namespaces: dict[str, str]) -> None:
    from kubernetes import client

    ns = namespaces["dra"]
    body = _pod("dra-64g", {"ai.compute/vram": "64Gi", "cpu": "10m"},
                annotations={"hcs.io/topology-preference": "high-bandwidth"})
    pod = _create_pod(api_client, ns, body)
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "10m"} and res["claims"] == [{"name": "hcs-main"}]
    assert "schedulerName" not in pod["spec"] or pod["spec"]["schedulerName"] == "default-scheduler"
    (claim_ref,) = pod["spec"]["resourceClaims"]
    tpl_name = claim_ref["resourceClaimTemplateName"]
    resource = client.ResourceV1Api(api_client)
    # created by the claim-template controller from the admitted pod (the webhook itself creates nothing)
    tpl = _wait(f"ResourceClaimTemplate {tpl_name}",
                lambda: _json(resource.read_namespaced_resource_claim_template, tpl_name, ns), timeout=30)
    devices = tpl["spec"]["spec"]["devices"]
    assert devices["constraints"] == [{"requests": ["accel"], "matchAttribute": "ai.compute/island"}]
    alternatives = devices["requests"][0]["firstAvailable"]
    assert [(a["count"], a["capacity"]["requests"]["memory"]) for a in alternatives] == [
        (1, "64Gi"), (2, "32Gi"), (4, "16Gi")]  # shares below 16Gi (dra.minSplit) are not offered
    # the claim the resourceclaim controller will make from the template is valid for the real API
    # server (checked directly: the shared cluster's controller-manager may be busy with other tests)
    claim = json.loads(resource.create_namespaced_resource_claim(
        ns, {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": "from-template"},
             "spec": tpl["spec"]["spec"]}, _preload_content=False).data)
    assert claim["spec"]["devices"]["requests"][0]["firstAvailable"][0]["deviceClassName"] == "vram.ai.compute"


def test_dra_dry_run_creates_no_template(api_client: Any, webhook: WebhookServer,
                                         namespaces: dict[str, str]) -> None:
    from kubernetes import client

    core, _, _ = _apis(api_client)
    ns = namespaces["dra"]
    body = _pod("dry", {"ai.compute/vram": "13Gi"})
    created = json.loads(core.create_namespaced_pod(ns, body, dry_run="All", _preload_content=False).data)
    name = created["spec"]["resourceClaims"][0]["resourceClaimTemplateName"]
    listed = _json(client.ResourceV1Api(api_client).list_namespaced_resource_claim_template, ns)
    assert name not in [t["metadata"]["name"] for t in listed["items"]]


def test_retargeted_pod_ends_with_the_vendor_image(api_client: Any, webhook: WebhookServer,
                                                   namespaces: dict[str, str]) -> None:
    core, _, _ = _apis(api_client)
    ns = namespaces["dp"]
    pod = _create_pod(api_client, ns, _pod("retarget", {"ai.compute/vram": "8Gi"}, image=CUDA_IMAGE))
    assert {"name": "hcs.io/vendor-image"} in pod["spec"]["schedulingGates"]
    assert pod["spec"]["containers"][0]["image"] == CUDA_IMAGE
    assert retarget_pod(api_client, ns, "retarget", "ascend") is True
    final = _json(core.read_namespaced_pod, "retarget", ns)
    assert final["spec"]["containers"][0]["image"] == "hcs.local/busybox:ascend-example"
    assert not final["spec"].get("schedulingGates")
    assert final["metadata"]["annotations"]["hcs.io/retargeted-vendor"] == "ascend"
    assert retarget_pod(api_client, ns, "retarget", "ascend") is False  # idempotent


def test_computenode_capacity_reads_the_real_api(api_client: Any) -> None:
    import yaml
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    try:
        ext.read_custom_resource_definition("computenodes.hetero.zrs.io")
    except ApiException as exc:
        assert exc.status == 404
        crd = Path(__file__).resolve().parents[2] / "hcs" / "node" / "crds" / "computenode.yaml"
        ext.create_custom_resource_definition(yaml.safe_load(crd.read_text()))
    custom = client.CustomObjectsApi(api_client)

    def listed() -> Any:
        return json.loads(custom.list_cluster_custom_object("hetero.zrs.io", "v1alpha1", "computenodes",
                                                           _preload_content=False).data)

    items = _wait("ComputeNode API", listed)["items"]
    expected = islands_of(capacity_of(inventory_of(items)[0]))  # what the allocator would answer
    assert CachedCapacity(ComputeNodeCapacity(api_client), 5).islands() == expected


def test_deployment_with_the_simple_form_is_accepted_and_its_pods_mutated(
        api_client: Any, webhook: WebhookServer, namespaces: dict[str, str]) -> None:
    core, _, apps = _apis(api_client)
    ns = namespaces["dp"]
    template = _pod("x", {"ai.compute/vram": "8Gi"})
    template["spec"]["restartPolicy"] = "Always"
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "simple"},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "simple"}},
                           "template": {"metadata": {"labels": {"app": "simple"}}, "spec": template["spec"]}}}
    created = json.loads(apps.create_namespaced_deployment(ns, deployment, _preload_content=False).data)
    res = created["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"] == res["limits"] == {"ai.compute/vram": "8Gi"}  # slot is added per pod, not here
    pods = _wait("the Deployment's pod", lambda: json.loads(core.list_namespaced_pod(
        ns, label_selector="app=simple", _preload_content=False).data)["items"], timeout=180)
    pod = pods[0]
    assert pod["spec"]["schedulerName"] == "hcs-scheduler"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["ai.compute/slot"] == "1"


def test_stale_retarget_patch_is_refused_and_retried(api_client: Any, webhook: WebhookServer,
                                                     namespaces: dict[str, str]) -> None:
    from kubernetes.client.exceptions import ApiException

    from hcs.retarget import retarget_patch

    core, _, _ = _apis(api_client)
    ns = namespaces["dp"]
    pod = _create_pod(api_client, ns, _pod("stale", {"ai.compute/vram": "8Gi"}, image=CUDA_IMAGE))
    stale_ops = retarget_patch(pod, "ascend")
    core.patch_namespaced_pod("stale", ns, {"metadata": {"labels": {"touched": "yes"}}},
                              _content_type="application/merge-patch+json")  # someone else writes first
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_pod("stale", ns, stale_ops, _content_type="application/json-patch+json")
    assert info.value.status == 422  # the resourceVersion test failed: what retarget_pod re-reads and retries on
    assert retarget_pod(api_client, ns, "stale", "ascend") is True
    assert _json(core.read_namespaced_pod, "stale", ns)["spec"]["containers"][0]["image"].endswith("ascend-example")
