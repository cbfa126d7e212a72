"""Attack 10 (issue 16): broad rights — the node agent could read every pod, the allocator patch any
pod cluster-wide.

The chart's RBAC is applied to the real API server and every component's rights are asked with
SubjectAccessReviews for its ServiceAccount user; the pod-writers policies are installed and the
allocator's and node agent's identities are impersonated writing pods. What RBAC cannot express (a
field selector on list/watch; which pod fields a patch may touch) is covered by: the agent's own
requests always carrying ``spec.nodeName=<node>`` (recorded from real calls, and checked in the
source), and the ValidatingAdmissionPolicies in pod-writers.yaml. The residual risk is written down in
docs/operations.md ("RBAC, verb by verb").
"""

from __future__ import annotations

import ast
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sec_records_helpers import (
    REPO,
    delete,
    ensure,
    find_helm,
    grant_in_namespace,
    impersonating,
    pod,
    render_chart,
    sa_user,
    taint_node,
    wait_for,
)

from hcs.kube import KubeError, KubeRest

RUN = uuid.uuid4().hex[:6]
RELEASE = f"sr{RUN}"
NS = f"hcs-sr-rbac-{RUN}"
KINDS = {"ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
         "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"}


def _helm() -> str:
    helm = find_helm()
    if helm is None:
        pytest.fail("helm not found (built with the local cluster): cannot render the chart")
    return helm


# --------------------------------------------------------------------------- no cluster

def test_agent_pod_reads_always_carry_the_node_selector_in_the_source() -> None:
    """Every place in hcs/node that requests /api/v1/pods passes node_pods_query(...) as the query."""
    offenders = []
    for path in sorted((REPO / "hcs" / "node").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                continue
            if call.func.attr not in ("request", "watch") or len(call.args) < 1:
                continue
            target = call.args[1] if call.func.attr == "request" and len(call.args) > 1 else call.args[0]
            if isinstance(target, ast.Constant) and target.value == "/api/v1/pods":
                query = next((k.value for k in call.keywords if k.arg == "query"), None)
                ok = (isinstance(query, ast.Call) and isinstance(query.func, ast.Name)
                      and query.func.id == "node_pods_query")
                if not ok:
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == [], f"pod list/watch without node_pods_query(): {offenders}"


def test_chart_rbac_verbs() -> None:
    docs = render_chart(_helm(), RELEASE, NS, mode="both")
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}

    def verbs(role: str, resource: str) -> set[str]:
        return {v for r in roles[f"{RELEASE}-hcs-{role}"]["rules"] if resource in r["resources"] for v in r["verbs"]}

    assert verbs("node-agent", "pods") == {"list", "watch"}  # allocator mode: no writes at all
    assert verbs("allocator", "pods") == {"get", "list", "watch", "patch"}  # no update, no delete
    assert verbs("webhook", "pods") == {"list", "watch"}
    assert verbs("webhook", "resourceclaimtemplates") == {"create"}
    for role in roles.values():
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"], role["metadata"]["name"]
    local = render_chart(_helm(), RELEASE, NS, **{"scheduler.enabled": False})
    agent = next(d for d in local if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-node-agent"))
    assert {v for r in agent["rules"] if "pods" in r["resources"] for v in r["verbs"]} == {"list", "watch", "patch"}
    names = {d["metadata"]["name"] for d in local if d["kind"] == "ValidatingAdmissionPolicy"}
    assert {f"{RELEASE}-hcs-pod-writes-node-agent", f"{RELEASE}-hcs-pod-writes-allocator"} <= names


# --------------------------------------------------------------------------- the real API server

@pytest.fixture(scope="module")
def rest(api_client: Any) -> KubeRest:
    return KubeRest(api_client)


@pytest.fixture(scope="module")
def chart_rbac(rest: KubeRest) -> Iterator[list[dict[str, Any]]]:
    """The chart's ClusterRoles and ClusterRoleBindings (release unique to this run) in the cluster."""
    docs = [d for d in render_chart(_helm(), RELEASE, NS, mode="both") if d["kind"] in KINDS]
    for d in docs:
        ensure(rest, KINDS[d["kind"]], d)
    yield docs
    for d in docs:
        delete(rest, f"{KINDS[d['kind']]}/{d['metadata']['name']}")


def _can(rest: KubeRest, sa: str, verb: str, resource: str, *, group: str = "", namespace: str = "",
         subresource: str = "", field_selector: str = "", name: str = "") -> bool:
    user = sa_user(NS, f"{RELEASE}-hcs-{sa}")
    attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        attrs["namespace"] = namespace
    if subresource:
        attrs["subresource"] = subresource
    if name:
        attrs["name"] = name
    if field_selector:
        attrs["fieldSelector"] = {"rawSelector": field_selector}
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NS}",
                                                "system:authenticated"], "resourceAttributes": attrs}}
    out = rest.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=review)
    return bool(out["status"].get("allowed"))


@pytest.mark.cluster
def test_each_component_has_only_the_verbs_it_needs(rest: KubeRest, chart_rbac: Any) -> None:
    wait_for("RBAC to see the new roles", lambda: _can(rest, "allocator", "patch", "pods", namespace="default"),
             timeout=30)
    # node agent (allocator mode): reads pods, writes none, no secrets (the record key comes as a mount)
    assert _can(rest, "node-agent", "list", "pods", field_selector="spec.nodeName=n1")
    for verb in ("get", "create", "update", "patch", "delete"):
        assert not _can(rest, "node-agent", verb, "pods", namespace="team-a", name="x"), verb
    assert not _can(rest, "node-agent", "create", "pods", subresource="binding", namespace="team-a")
    assert not _can(rest, "node-agent", "create", "pods", subresource="exec", namespace="team-a")
    assert not _can(rest, "node-agent", "get", "secrets", namespace=NS, name=f"{RELEASE}-hcs-record-key")
    # allocator: patches pods (records, retargeting), never updates, creates or reads secrets
    assert _can(rest, "allocator", "patch", "pods", namespace="team-a")
    assert not _can(rest, "allocator", "update", "pods", namespace="team-a")
    assert not _can(rest, "allocator", "create", "pods", namespace="team-a")
    assert not _can(rest, "allocator", "get", "secrets", namespace=NS, name=f"{RELEASE}-hcs-record-key")
    assert not _can(rest, "allocator", "list", "secrets")
    # webhook: in DRA mode watches pods and creates templates; writes no pods
    assert _can(rest, "webhook", "create", "resourceclaimtemplates", group="resource.k8s.io", namespace="team-a")
    assert not _can(rest, "webhook", "get", "resourceclaimtemplates", group="resource.k8s.io", namespace="team-a")
    assert not _can(rest, "webhook", "patch", "pods", namespace="team-a")
    assert not _can(rest, "webhook", "get", "secrets", namespace=NS)


@pytest.mark.cluster
def test_agent_requests_carry_the_node_selector(rest: KubeRest) -> None:
    """The agent's pod reads against the real API server: every one carries spec.nodeName=<its node>."""
    from hcs.node.sources import KubePodLister
    from hcs.records import RecordKey

    seen: list[tuple[str, str, dict[str, str]]] = []

    class Recording(KubeRest):
        def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
            seen.append((method, path, dict(kw.get("query") or {})))
            return super().request(method, path, **kw)

    lister = KubePodLister(Recording(rest.api_client), f"sr-node-{RUN}", RecordKey(None))
    assert list(lister()) == []  # no pod is bound to that node
    pod_reads = [(m, p, q) for m, p, q in seen if p.endswith("/pods")]
    assert pod_reads and all(q.get("fieldSelector") == f"spec.nodeName=sr-node-{RUN}" for _, _, q in pod_reads)
    with pytest.raises(ValueError, match="node name"):
        KubePodLister(rest, "", RecordKey(None))


@pytest.fixture(scope="module")
def writers(rest: KubeRest) -> Iterator[dict[str, str]]:
    """The chart's pod-writers policies, bound to one labelled namespace, and pods to write."""
    ns, node = f"hcs-sr-writes-{RUN}", f"hcs-sr-wnode-{RUN}"
    ensure(rest, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": ns, "labels": {"hcs-sr-writes": RUN}}})
    taint_node(rest, node)
    docs = render_chart(_helm(), RELEASE, NS, **{"scheduler.enabled": False})
    base = "/apis/admissionregistration.k8s.io/v1"
    installed = []
    for d in docs:
        if "-pod-writes-" not in d["metadata"]["name"]:
            continue
        if d["kind"] == "ValidatingAdmissionPolicyBinding":
            d["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {"hcs-sr-writes": RUN}}}
            ensure(rest, f"{base}/validatingadmissionpolicybindings", d)
            installed.append(f"{base}/validatingadmissionpolicybindings/{d['metadata']['name']}")
        elif d["kind"] == "ValidatingAdmissionPolicy":
            ensure(rest, f"{base}/validatingadmissionpolicies", d)
            installed.append(f"{base}/validatingadmissionpolicies/{d['metadata']['name']}")
    users = {"allocator": sa_user(NS, f"{RELEASE}-hcs-allocator"), "agent": sa_user(NS, f"{RELEASE}-hcs-node-agent")}
    grant_in_namespace(rest, ns, "sr-writers", list(users.values()),
                       [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}])
    plain = pod("plain", "1Gi", node=node)
    gated = pod("gated", "1Gi")
    gated["spec"]["schedulingGates"] = [{"name": "hcs.io/vendor-image"}]
    for body in (plain, gated):
        rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=body)
    yield {"ns": ns, "node": node, **users}
    for path in installed:
        delete(rest, path)
    delete(rest, f"/api/v1/namespaces/{ns}")
    delete(rest, f"/api/v1/nodes/{node}")


def _merge(client: KubeRest, ns: str, name: str, body: dict[str, Any]) -> None:
    client.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}", body=body,
                   content_type="application/merge-patch+json")


def _json_patch(client: KubeRest, ns: str, name: str, ops: list[dict[str, Any]]) -> None:
    client.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}", body=ops,
                   content_type="application/json-patch+json")


@pytest.mark.cluster
def test_allocator_and_agent_pod_patches_are_narrowed(kube_cluster: Any, rest: KubeRest,
                                                      writers: dict[str, str]) -> None:
    ns, node = writers["ns"], writers["node"]
    allocator = impersonating(kube_cluster.kubeconfig, writers["allocator"])

    def label_denied() -> bool:  # policies load asynchronously
        try:
            _merge(allocator, ns, "plain", {"metadata": {"labels": {"owned": "yes"}}})
        except KubeError as exc:
            return exc.status in (403, 422) and "labels starting with hcs.io/" in str(exc)
        _merge(rest, ns, "plain", {"metadata": {"labels": {"owned": None}}})
        return False

    wait_for("the pod-writers policies to take effect", label_denied, timeout=60, interval=1)
    with pytest.raises(KubeError, match="annotations starting with hcs.io/"):
        _merge(allocator, ns, "plain", {"metadata": {"annotations": {"team": "mine"}}})
    with pytest.raises(KubeError, match="retarget the images"):  # not gated: no image change
        _json_patch(allocator, ns, "plain", [{"op": "replace", "path": "/spec/containers/0/image",
                                              "value": "hcs.local/busybox:other"}])
    # what it needs: the record annotations and hcs.io/* labels (its leader label, the hcs.io/allocator
    # selector label); retargeting a gated pod and removing the gate
    _merge(allocator, ns, "plain", {"metadata": {"annotations": {"hcs.io/assignment": "{}"}}})
    _merge(allocator, ns, "plain", {"metadata": {"labels": {"hcs.io/allocator-leader": "true"}}})
    with pytest.raises(KubeError, match="labels starting with hcs.io/"):  # other labels stay untouchable
        _merge(allocator, ns, "plain", {"metadata": {"labels": {"hcs.io/allocator-leader": None, "app": "x"}}})
    _json_patch(allocator, ns, "gated", [
        {"op": "replace", "path": "/spec/containers/0/image", "value": "hcs.local/busybox:ascend-example"},
        {"op": "remove", "path": "/spec/schedulingGates"}])
    got = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/gated")
    assert got["spec"]["containers"][0]["image"].endswith("ascend-example")
    # node agent (local policy): only the record annotations, only on its node's pods
    elsewhere = impersonating(kube_cluster.kubeconfig, writers["agent"],
                              extra={"authentication.kubernetes.io/node-name": ["another-node"]})
    with pytest.raises(KubeError, match="its own node"):
        _merge(elsewhere, ns, "plain", {"metadata": {"annotations": {"hcs.io/assignment": "{ }"}}})
    here = impersonating(kube_cluster.kubeconfig, writers["agent"],
                         extra={"authentication.kubernetes.io/node-name": [node]})
    with pytest.raises(KubeError, match="annotations starting with hcs.io/assignment"):
        _merge(here, ns, "plain", {"metadata": {"annotations": {"hcs.io/vendor": "nvidia"}}})
    with pytest.raises(KubeError, match="may not change pod labels"):  # node agents change no label at all
        _merge(here, ns, "plain", {"metadata": {"labels": {"hcs.io/allocator-leader": "false"}}})
    _merge(here, ns, "plain", {"metadata": {"annotations": {"hcs.io/assignment": "{ }"}}})


def test_docs_say_why_each_verb_is_there() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## RBAC, verb by verb", 1)[1].split("\n## ", 1)[0]
    for word in ("node agent", "allocator", "webhook", "patch", "list", "watch", "fieldSelector",
                 "residual", "pod-writers"):
        assert word in section, word
    assert Path(REPO / "helm" / "hcs" / "templates" / "pod-writers.yaml").is_file()
