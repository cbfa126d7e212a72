"""Mutating/ValidatingWebhookConfiguration objects for the HCS webhook (dicts, admissionregistration/v1).

Used by ``hcs webhook --print-configurations``, the tests against the real API server and as the
reference for the chart. ``matchConditions`` (CEL) make the API server call the mutating webhook only
for pods that mention ``ai.compute/*``, so ordinary pods never pay the webhook's latency.
"""

from __future__ import annotations

from typing import Any

MUTATING_NAME = "hcs-webhook-mutate"
VALIDATING_NAME = "hcs-webhook-validate"

_CONTAINERS = "(object.spec.containers + (has(object.spec.initContainers) ? object.spec.initContainers : []))"
_ASKS = (
    "c, has(c.resources) && ((has(c.resources.requests) && c.resources.requests.exists(k, "
    "k.startsWith('ai.compute/'))) || (has(c.resources.limits) && c.resources.limits.exists(k, "
    "k.startsWith('ai.compute/'))))"
)
POD_ASKS_ACCELERATOR = f"has(object.spec) && {_CONTAINERS}.exists({_ASKS})"


def _template_asks(template: str) -> str:
    spec = f"{template}.spec"
    return (f"has({spec}) && ({spec}.containers + (has({spec}.initContainers) ? {spec}.initContainers : []))"
            f".exists({_ASKS})")


# Workloads (object.spec.template) and CronJobs (object.spec.jobTemplate.spec.template) whose pod template
# asks for ai.compute/*: no other Deployment, Job or ReplicaSet in the cluster waits on the webhook.
TEMPLATE_ASKS_ACCELERATOR = (
    "has(object.spec) && ((has(object.spec.template) && " + _template_asks("object.spec.template") + ") || "
    "(has(object.spec.jobTemplate) && has(object.spec.jobTemplate.spec) && has(object.spec.jobTemplate.spec.template)"
    " && " + _template_asks("object.spec.jobTemplate.spec.template") + "))"
)

WORKLOAD_RULES = [
    {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
     "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"], "scope": "Namespaced"},
    {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
     "resources": ["jobs", "cronjobs"], "scope": "Namespaced"},
]
POD_RULE = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
            "scope": "Namespaced"}
#: Pod updates that matter to HCS: the assignment record (hcs.io/assignment and its signature) changing,
#: and ephemeral containers being added (the one way to add a container to a quota'd pod).
POD_UPDATE_RULE = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                   "resources": ["pods", "pods/ephemeralcontainers"], "scope": "Namespaced"}
_RECORD_KEYS = ("hcs.io/assignment", "hcs.io/assignment-signature")
RECORD_CHANGED = " || ".join(
    f"object.metadata.?annotations[?'{k}'].orValue('') != oldObject.metadata.?annotations[?'{k}'].orValue('')"
    for k in _RECORD_KEYS)
EPHEMERAL = "request.?subResource.orValue('') == 'ephemeralcontainers'"
POD_UPDATE_MATTERS = f"{EPHEMERAL} || {RECORD_CHANGED}"
EPHEMERAL_RULE = {**POD_UPDATE_RULE, "resources": ["pods/ephemeralcontainers"]}


def _client_config(path: str, ca_bundle: str, url: str | None, service: tuple[str, str, int] | None) -> dict[str, Any]:
    if (url is None) == (service is None):
        raise ValueError("give exactly one of url or service")
    if url is not None:
        return {"url": url.rstrip("/") + path, "caBundle": ca_bundle}
    assert service is not None
    namespace, name, port = service
    return {"service": {"namespace": namespace, "name": name, "path": path, "port": port}, "caBundle": ca_bundle}


def webhook_configurations(
    *, ca_bundle: str, url: str | None = None, service: tuple[str, str, int] | None = None,
    failure_policy: str = "Fail", timeout_s: int = 5, exclude_namespaces: tuple[str, ...] = ("kube-system",),
    name_suffix: str = "", namespace_selector: dict[str, Any] | None = None, record_writes: bool = True,
) -> list[dict[str, Any]]:
    """``[MutatingWebhookConfiguration, ValidatingWebhookConfiguration]`` for a webhook at url/service.

    ``namespace_selector`` replaces the default (every namespace but ``exclude_namespaces``).
    ``record_writes``: the webhook also guards ``hcs.io/assignment`` writes (for clusters without the
    chart's ValidatingAdmissionPolicy; with it, leave the allocator's writes independent of the webhook).
    """
    ns_selector = namespace_selector or {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": list(exclude_namespaces)}]}
    common = {"admissionReviewVersions": ["v1"], "failurePolicy": failure_policy, "timeoutSeconds": timeout_s,
              "namespaceSelector": ns_selector}
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATING_NAME + name_suffix},
        "webhooks": [{
            "name": "mutate.webhook.ai.compute",
            "clientConfig": _client_config("/mutate", ca_bundle, url, service),
            "rules": [POD_RULE],
            # creates nothing: DRA templates come from the admitted pods (hcs.webhook.claims)
            "sideEffects": "None",
            "reinvocationPolicy": "IfNeeded",
            "matchConditions": [{"name": "asks-ai-compute", "expression": POD_ASKS_ACCELERATOR}],
            **common,
        }, {
            # pod templates: limits = requests for ai.compute (the API server requires it before any
            # validating webhook runs); only workloads whose template asks for ai.compute/* are sent.
            "name": "templates.webhook.ai.compute",
            "clientConfig": _client_config("/mutate", ca_bundle, url, service),
            "rules": WORKLOAD_RULES,
            "sideEffects": "None",
            "reinvocationPolicy": "IfNeeded",
            "matchConditions": [{"name": "template-asks-ai-compute", "expression": TEMPLATE_ASKS_ACCELERATOR}],
            **common,
        }],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_NAME + name_suffix},
        "webhooks": [{
            "name": "validate.webhook.ai.compute",
            "clientConfig": _client_config("/validate", ca_bundle, url, service),
            "rules": [POD_RULE, *WORKLOAD_RULES],
            "sideEffects": "None",
            **common,
        }, {
            # only the allocator writes hcs.io/assignment; no privileged ephemeral containers in quota'd pods
            "name": "records.webhook.ai.compute",
            "clientConfig": _client_config("/validate", ca_bundle, url, service),
            "rules": [POD_UPDATE_RULE if record_writes else EPHEMERAL_RULE],
            "sideEffects": "None",
            "matchConditions": [{"name": "record-or-ephemeral",
                                 "expression": POD_UPDATE_MATTERS if record_writes else EPHEMERAL}],
            **common,
        }],
    }
    return [mutating, validating]
