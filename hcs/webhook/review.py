"""AdmissionReview ``admission.k8s.io/v1`` in, AdmissionReview out: decode, dispatch, answer.

``Admission.handle`` never raises for bad input: a body that is not an AdmissionReview gets HTTP 400
with a plain-text reason (no uid to answer to); anything that is one gets a proper response. Only a
bug gives HTTP 500, which the API server treats per the chart's ``failurePolicy``.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

from hcs.podspec import TEMPLATE_PATHS, as_dict, depth_exceeds, pod_template
from hcs.webhook.capacity import IslandCapacity
from hcs.webhook.config import WebhookConfig
from hcs.webhook.kube import ClusterView
from hcs.webhook.mutate import mutate_pod, normalise_template
from hcs.webhook.validate import (
    Verdict,
    check_quota_escapes,
    check_record_write,
    check_template_record,
    is_quota_pod,
    template_amounts,
    validate_template,
)

log = logging.getLogger(__name__)

API_VERSION = "admission.k8s.io/v1"
MAX_WARNINGS = 10
MAX_MESSAGE = 3000


@dataclass(frozen=True)
class Answer:
    status: int  # HTTP status
    body: bytes
    result: str  # metrics label: allowed | denied | patched | bad_request | error
    kind: str = ""
    content_type: str = "application/json"


def _bad(reason: str) -> Answer:
    return Answer(400, (reason + "\n").encode(), "bad_request", content_type="text/plain; charset=utf-8")


def _respond(uid: str, allowed: bool, *, message: str = "", warnings: tuple[str, ...] = (),
             patch: tuple[dict[str, Any], ...] = (), code: int = 403) -> bytes:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": code, "reason": "Forbidden" if code == 403 else "InternalError",
                              "message": message[:MAX_MESSAGE]}
    if warnings:
        response["warnings"] = [w[:500] for w in warnings[:MAX_WARNINGS]]
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    review = {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
    return json.dumps(review, separators=(",", ":")).encode()


class Admission:
    """The admission logic behind ``/mutate`` and ``/validate``."""

    def __init__(self, cfg: WebhookConfig, capacity: IslandCapacity | None, cluster: ClusterView) -> None:
        self.cfg = cfg
        self.capacity = capacity
        self.cluster = cluster

    def handle(self, endpoint: str, body: bytes) -> Answer:
        try:
            review = json.loads(body)
        except RecursionError:
            return _bad(f"request body nests deeper than this webhook accepts (max depth {self.cfg.max_depth})")
        except (ValueError, UnicodeDecodeError) as exc:
            return _bad(f"request body is not JSON ({exc}); send an admission.k8s.io/v1 AdmissionReview")
        if not isinstance(review, dict):
            return _bad("request body is not a JSON object; send an admission.k8s.io/v1 AdmissionReview")
        if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
            return _bad(f"expected apiVersion {API_VERSION} kind AdmissionReview, got apiVersion "
                        f"{str(review.get('apiVersion'))[:80]!r} kind {str(review.get('kind'))[:80]!r}; "
                        "set admissionReviewVersions: [v1] in the webhook configuration")
        request = review.get("request")
        if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
            return _bad("AdmissionReview.request.uid is missing; the request cannot be answered")
        uid = request["uid"]
        kind = str(as_dict(request.get("kind")).get("kind", ""))
        if depth_exceeds(request.get("object"), self.cfg.max_depth):
            return Answer(200, _respond(uid, False, message=(
                f"{kind or 'object'}: nests deeper than {self.cfg.max_depth} levels; the HCS webhook refuses "
                "objects this deep")), "denied", kind)
        try:
            if endpoint == "mutate":
                return self._mutate(uid, kind, request)
            return self._validate(uid, kind, request)
        except Exception:
            log.exception("internal error handling %s of %s uid=%s", endpoint, kind, uid)
            return Answer(500, b"internal error in the HCS webhook; see its log\n", "error", kind,
                          content_type="text/plain; charset=utf-8")

    def _validate(self, uid: str, kind: str, request: dict[str, Any]) -> Answer:
        obj = request.get("object")
        operation = request.get("operation")
        template = pod_template(as_dict(obj), kind) if isinstance(obj, dict) else None
        if template is None or operation not in ("CREATE", "UPDATE"):
            return Answer(200, _respond(uid, True), "allowed", kind)
        # only the allocator (and node agents, for their node) may write the assignment record
        records = check_record_write(request, self.cfg) if kind == "Pod" else check_template_record(template)
        if kind == "Pod" and operation == "UPDATE":
            # a pod's accelerator request is fixed at creation; updates are the allocator's annotations
            # and image retargeting, which must not be blocked by a changed cluster. Ephemeral containers
            # (kubectl debug) are the one way to add a container: held to the quota rules.
            verdict = records
            if request.get("subResource") == "ephemeralcontainers" and is_quota_pod(template):
                verdict = verdict.merge(check_quota_escapes(template, self.cfg, ("ephemeralContainers",)))
            if not verdict.allowed:
                return self._deny(uid, kind, request, as_dict(obj), verdict)
            return Answer(200, _respond(uid, True), "allowed", kind)
        _, verdict = validate_template(template, self.cfg, self.capacity)
        verdict = records.merge(verdict)
        if not verdict.allowed:
            return self._deny(uid, kind, request, as_dict(obj), verdict)
        return Answer(200, _respond(uid, True, warnings=verdict.warnings), "allowed", kind)

    def _mutate_workload(self, uid: str, kind: str, request: dict[str, Any]) -> Answer:
        obj = request.get("object")
        template = pod_template(obj, kind) if isinstance(obj, dict) else None
        if template is None or not template.spec:
            return Answer(200, _respond(uid, True), "allowed", kind)
        amounts, verdict = validate_template(template, self.cfg, self.capacity)
        if not verdict.allowed:
            return self._deny(uid, kind, request, as_dict(obj), verdict)
        mutation = normalise_template(template, amounts)
        result = "patched" if mutation.patch else "allowed"
        return Answer(200, _respond(uid, True, warnings=verdict.warnings + mutation.warnings, patch=mutation.patch),
                      result, kind)

    def _deny(self, uid: str, kind: str, request: dict[str, Any], obj: dict[str, Any], verdict: Verdict) -> Answer:
        meta = as_dict(obj.get("metadata"))
        name = meta.get("name") or request.get("name") or meta.get("generateName") or ""
        namespace = request.get("namespace") or ""
        prefix = f"{kind} {namespace}/{name}: " if namespace else f"{kind} {name}: "
        log.info("denied %s %s/%s: %d problem(s)", kind, namespace, name, len(verdict.denials))
        return Answer(200, _respond(uid, False, message=prefix + "; ".join(verdict.denials),
                                    warnings=verdict.warnings), "denied", kind)

    def _mutate(self, uid: str, kind: str, request: dict[str, Any]) -> Answer:
        obj = request.get("object")
        if kind != "Pod" and kind in TEMPLATE_PATHS and request.get("operation") in ("CREATE", "UPDATE"):
            return self._mutate_workload(uid, kind, request)
        if kind != "Pod" or request.get("operation") != "CREATE" or not isinstance(obj, dict):
            return Answer(200, _respond(uid, True), "allowed", kind)
        template = pod_template(obj, "Pod")
        assert template is not None
        amounts, verdict = template_amounts(template, self.cfg)
        if not amounts and verdict.allowed:
            return Answer(200, _respond(uid, True), "allowed", kind)
        # Validate before translating: DRA mode removes the ai.compute resources, so the validating
        # webhook would no longer see them; and nothing (no claim template) is created for a bad pod.
        amounts, verdict = validate_template(template, self.cfg, self.capacity)
        namespace = str(request.get("namespace") or as_dict(obj.get("metadata")).get("namespace") or "default")
        if not verdict.allowed:
            return self._deny(uid, kind, request, obj, verdict)
        mode = self.cluster.namespace_mode(namespace)
        # No side effects: DRA templates are created by hcs.webhook.claims from the admitted pod, never
        # here, where the caller (anyone reaching this port) is not authenticated.
        mutation = mutate_pod(obj, template, amounts, namespace, mode, self.cfg, self.cluster.image_map())
        if mutation.templates and not self.cluster.connected and not request.get("dryRun"):
            return Answer(200, _respond(uid, False, code=500, message=(
                f"Pod in namespace {namespace}: DRA mode needs API-server access to create ResourceClaimTemplates; "
                "run the webhook with a kubeconfig or in-cluster credentials")), "denied", kind)
        result = "patched" if mutation.patch else "allowed"
        warnings = verdict.warnings + mutation.warnings
        return Answer(200, _respond(uid, True, warnings=warnings, patch=mutation.patch), result, kind)
