"""Attack 7 (issue 16): side effects from an unauthenticated ``/mutate``.

Before: in DRA mode an AdmissionReview posted straight to the webhook made it create
ResourceClaimTemplates in any namespace (``kube-system`` included) with its own token. Now ``/mutate``
creates nothing; the templates come from :mod:`hcs.webhook.claims`, which reconciles pods that exist in
the API server. The attack is replayed against the real HTTPS webhook holding real (admin) API
credentials, with the controller running; the real path (API server → webhook → pod → template) still
works.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sec_records_helpers import HttpsClient, delete, ensure, pod, review, wait_for, webhook

from hcs.kube import RESOURCE_API, KubeError, KubeRest
from hcs.webhook.certs import CertPaths, generate_certs
from hcs.webhook.claims import ClaimTemplateController
from hcs.webhook.config import Mode, WebhookConfig
from hcs.webhook.manifests import webhook_configurations
from hcs.webhook.mutate import CLAIM_TEMPLATES

pytestmark = pytest.mark.cluster

RUN = uuid.uuid4().hex[:6]
LABEL = "hcs-sec-records-admission"


@pytest.fixture(scope="module")
def rest(api_client: Any) -> KubeRest:
    return KubeRest(api_client)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate_certs(tmp_path_factory.mktemp("sec-records-admission"))


@pytest.fixture(scope="module")
def stack(api_client: Any, rest: KubeRest, certs: CertPaths) -> Iterator[tuple[HttpsClient, ClaimTemplateController,
                                                                             str]]:
    """The webhook (DRA mode, admin credentials) + the claim-template controller, registered with the
    real API server for one labelled namespace."""
    ns = f"hcs-sr-dra-{RUN}"
    ensure(rest, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": ns, "labels": {LABEL: RUN, "hcs.io/mode": "dra"}}})
    cfg = WebhookConfig(mode=Mode.DRA, cache_ttl_s=1.0)
    controller = ClaimTemplateController(cfg, api_client).start()
    with webhook(certs, cfg, api_client) as client:
        mutating, validating = webhook_configurations(
            url=f"https://127.0.0.1:{client.port}", ca_bundle=base64.b64encode(certs.ca.read_bytes()).decode(),
            name_suffix=f"-sr-{RUN}", namespace_selector={"matchLabels": {LABEL: RUN}})
        base = "/apis/admissionregistration.k8s.io/v1"
        ensure(rest, f"{base}/mutatingwebhookconfigurations", mutating)
        ensure(rest, f"{base}/validatingwebhookconfigurations", validating)

        def active() -> bool:
            out = rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod("probe", "1Gi"),
                               query={"dryRun": "All"})
            return bool(out["spec"].get("resourceClaims"))

        wait_for("the API server to call the webhook", active, timeout=60, interval=0.5)
        wait_for("the controller's first list", controller.synced.is_set, timeout=30)
        yield client, controller, ns
        delete(rest, f"{base}/mutatingwebhookconfigurations/{mutating['metadata']['name']}")
        delete(rest, f"{base}/validatingwebhookconfigurations/{validating['metadata']['name']}")
    controller.stop()
    delete(rest, f"/api/v1/namespaces/{ns}")


def _templates(rest: KubeRest, ns: str) -> set[str]:
    items = rest.request("GET", f"{RESOURCE_API}/namespaces/{ns}/resourceclaimtemplates").get("items") or []
    return {t["metadata"]["name"] for t in items}


def test_forged_admission_review_creates_nothing_in_kube_system(stack: Any, rest: KubeRest) -> None:
    client, controller, _ = stack
    before = _templates(rest, "kube-system")
    # a request size nobody else uses, so its template name is this test's own
    body = pod(f"forged-{RUN}", f"{37 + int(RUN, 16) % 50}Gi")
    created_before = controller.created
    resp = client.admit("mutate", review(body, namespace="kube-system",
                                         user="system:serviceaccount:kube-system:replicaset-controller"))
    assert resp["allowed"] is True  # answered (nothing to authenticate in an answer)...
    patch = json.loads(base64.b64decode(resp["patch"]))
    claims = next(op["value"] for op in patch if op["path"] == "/spec/resourceClaims")
    name = claims[0]["resourceClaimTemplateName"]
    time.sleep(3)  # ...but nothing was created: not by the webhook, not by the controller
    after = _templates(rest, "kube-system")
    assert name not in after, (name, after - before)
    assert controller.created == created_before


def test_forged_claim_record_on_a_real_pod_creates_nothing(stack: Any, rest: KubeRest) -> None:
    """A tenant's pod that bypasses the webhook and records a template name its request does not
    hash to gets no template (the controller recomputes every template from the pod)."""
    _, controller, ns = stack
    other = f"hcs-sr-plain-{RUN}"
    ensure(rest, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        body = pod("bypass", None)
        body["metadata"]["labels"] = {CLAIM_TEMPLATES: "true"}
        body["metadata"]["annotations"] = {CLAIM_TEMPLATES: json.dumps({"hcs-000000000000": {"vram": 2**30}})}
        body["spec"]["resourceClaims"] = [{"name": "hcs-main", "resourceClaimTemplateName": "hcs-000000000000"}]
        rejected = controller.rejected
        rest.request("POST", f"/api/v1/namespaces/{other}/pods", body=body)
        wait_for("the controller to look at the pod", lambda: controller.rejected > rejected, timeout=30)
        assert "hcs-000000000000" not in _templates(rest, other)
    finally:
        delete(rest, f"/api/v1/namespaces/{other}")


def test_real_path_still_creates_the_template(stack: Any, rest: KubeRest) -> None:
    _, _, ns = stack
    created = rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod("real", "24Gi"))
    (claim,) = created["spec"]["resourceClaims"]
    name = claim["resourceClaimTemplateName"]
    assert created["metadata"]["labels"][CLAIM_TEMPLATES] == "true"
    tpl = wait_for(f"ResourceClaimTemplate {ns}/{name}", lambda: rest.request(
        "GET", f"{RESOURCE_API}/namespaces/{ns}/resourceclaimtemplates/{name}"), timeout=30)
    request = tpl["spec"]["spec"]["devices"]["requests"][0]
    assert (request.get("exactly") or request["firstAvailable"][0])["capacity"]["requests"]["memory"] == "24Gi"
    # a dry run is answered and creates nothing
    dry = rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod("dry", "23Gi"), query={"dryRun": "All"})
    dry_name = dry["spec"]["resourceClaims"][0]["resourceClaimTemplateName"]
    time.sleep(2)
    with pytest.raises(KubeError) as info:
        rest.request("GET", f"{RESOURCE_API}/namespaces/{ns}/resourceclaimtemplates/{dry_name}")
    assert info.value.status == 404


def test_registered_webhook_guards_records_and_ephemeral_containers(stack: Any, rest: KubeRest) -> None:
    """Through the real API server, with only the webhook (no ValidatingAdmissionPolicy): ordinary pod
    updates pass (the match condition filters them), a record write by someone other than the
    allocator and a privileged debug container in a quota'd (DRA-translated) pod are denied."""
    _, _, ns = stack
    rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod("guarded", "2Gi"))
    path = f"/api/v1/namespaces/{ns}/pods/guarded"
    merge = "application/merge-patch+json"
    rest.request("PATCH", path, body={"metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}}},
                 content_type=merge)
    with pytest.raises(KubeError) as info:
        rest.request("PATCH", path, body={"metadata": {"annotations": {"hcs.io/assignment": "{}"}}},
                     content_type=merge)
    assert info.value.status == 403 and "only the HCS allocator" in str(info.value)
    current = rest.request("GET", path)
    debug = [{"name": "debugger", "image": "hcs.local/busybox:1.35", "targetContainerName": "main",
              "securityContext": {"privileged": True}}]
    with pytest.raises(KubeError) as info:
        rest.request("PATCH", f"{path}/ephemeralcontainers", body={"spec": {"ephemeralContainers": debug}},
                     content_type="application/strategic-merge-patch+json")
    assert info.value.status == 403 and "spec.ephemeralContainers[0].securityContext.privileged" in str(info.value)
    assert current["spec"].get("resourceClaims"), "the pod should be DRA-translated (quota'd through claims)"
