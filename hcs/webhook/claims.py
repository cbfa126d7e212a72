"""DRA mode: create the ResourceClaimTemplates that admitted pods refer to — from the pods, not from
admission requests.

The mutating webhook must not create objects for a request it cannot authenticate: anyone who reaches
its port can post an AdmissionReview. So ``/mutate`` only patches the pod — ``spec.resourceClaims``
naming a content-addressed ``hcs-<digest>`` template, the label ``hcs.io/claim-templates`` and the
annotation of the same name recording each template's inputs — and this controller, which watches
pods carrying the label, creates the templates. A pod exists in the API server only if its author was
allowed to create it there, so nothing is ever created in a namespace without a genuine pod in it.

Nothing in the pod is trusted beyond that: the controller recomputes each template from the recorded
VRAM/TFLOPS and the pod's own ``hcs.io/vendor``/``model``/``topology-preference`` annotations with the
same function the webhook uses, and creates it only when the result hashes to a name the pod's
``spec.resourceClaims`` refers to. A tenant editing the annotation can therefore only get a template
HCS would have made for a pod of its own namespace asking for those amounts.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from hcs.kube import RESOURCE_API, Informer, KubeError, KubeRest
from hcs.webhook.config import WebhookConfig
from hcs.webhook.mutate import CLAIM_TEMPLATES, claim_template

log = logging.getLogger(__name__)

MAX_TEMPLATES_PER_POD = 64
MAX_VRAM_BYTES = 2**60
MAX_TFLOPS = 10**9


def _amount(value: Any, limit: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise ValueError(f"{value!r} is not a positive whole number up to {limit}")
    return value


def wanted_templates(pod: Mapping[str, Any], cfg: WebhookConfig) -> list[dict[str, Any]]:
    """The templates this pod needs, recomputed from its record; ValueError for a bad record."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    namespace = str(meta.get("namespace") or "")
    annotations = {str(k): v for k, v in (meta.get("annotations") or {}).items() if isinstance(v, str)}
    raw = annotations.get(CLAIM_TEMPLATES)
    if not namespace or not raw:
        return []
    record = json.loads(raw)
    if not isinstance(record, dict) or len(record) > MAX_TEMPLATES_PER_POD:
        raise ValueError(f"annotation {CLAIM_TEMPLATES}: expected a mapping of at most {MAX_TEMPLATES_PER_POD} "
                         "template names")
    referenced = {c.get("resourceClaimTemplateName") for c in spec.get("resourceClaims") or [] if isinstance(c, dict)}
    out = []
    for name, inputs in record.items():
        if name not in referenced or not isinstance(inputs, dict):
            continue
        vram = _amount(inputs.get("vram"), MAX_VRAM_BYTES)
        tflops = _amount(inputs.get("tflops"), MAX_TFLOPS)
        if vram is None and tflops is None:
            continue
        tpl = claim_template(namespace, vram, tflops, annotations, cfg.dra)
        if tpl["metadata"]["name"] != name:
            raise ValueError(f"template {name} does not match the recorded request (recomputed: "
                             f"{tpl['metadata']['name']}); it is not created")
        out.append(tpl)
    return out


class ClaimTemplateController:
    """Watches pods labelled ``hcs.io/claim-templates`` and creates their ResourceClaimTemplates."""

    def __init__(self, cfg: WebhookConfig, api_client: Any, *, watch_timeout_s: float = 60.0) -> None:
        self.cfg = cfg
        self.rest = KubeRest(api_client)
        self._created: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.created = 0
        self.rejected = 0
        self.synced = threading.Event()  # set after the first full list
        self.pods = Informer(self.rest, "/api/v1/pods", "pods", query={"labelSelector": CLAIM_TEMPLATES},
                             trim=_trim_pod, on_change=self._changed, on_synced=self.synced.set,
                             watch_timeout_s=watch_timeout_s, max_backoff_s=30.0, thread_name="hcs-claim-templates",
                             broken_hint=" (in DRA mode the webhook needs get/list/watch on pods)")

    # ------------------------------------------------------------------ one pod
    def reconcile(self, pod: Mapping[str, Any]) -> list[str]:
        """Create the pod's missing templates; returns the names created (or found). Never raises."""
        meta = pod.get("metadata") or {}
        where = f"pod {meta.get('namespace')}/{meta.get('name')}"
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return []
        try:
            templates = wanted_templates(pod, self.cfg)
        except (ValueError, TypeError) as exc:
            self.rejected += 1
            log.warning("%s: %s ignored: %s", where, CLAIM_TEMPLATES, exc)
            return []
        done = []
        for tpl in templates:
            tmeta = tpl["metadata"]
            key = f"{tmeta['namespace']}/{tmeta['name']}"
            with self._lock:
                if key in self._created:
                    done.append(tmeta["name"])
                    continue
            try:
                self.rest.request("POST", f"{RESOURCE_API}/namespaces/{tmeta['namespace']}/resourceclaimtemplates",
                                  body=tpl)
                self.created += 1
                log.info("%s: created ResourceClaimTemplate %s", where, key)
            except KubeError as exc:
                if exc.status != 409:  # 409: already there (same content, same name)
                    log.warning("%s: creating ResourceClaimTemplate %s failed: %s; check the webhook's RBAC "
                                "for resourceclaimtemplates", where, key, exc)
                    continue
            with self._lock:
                self._created[key] = None
                while len(self._created) > 10000:
                    self._created.popitem(last=False)
            done.append(tmeta["name"])
        return done

    # ------------------------------------------------------------------ loop
    def _changed(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is not None and etype in ("ADDED", "MODIFIED", "SYNC"):  # SYNC: listed (at start, after a relist)
            self.reconcile(new)

    def start(self) -> ClaimTemplateController:
        self.pods.start()
        return self

    def stop(self) -> None:
        self.pods.stop()


def _trim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """What :meth:`ClaimTemplateController.reconcile` reads of a pod."""
    meta = pod.get("metadata") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion", "annotations", "deletionTimestamp")
                     if k in meta},
        "spec": {"resourceClaims": (pod.get("spec") or {}).get("resourceClaims") or []},
        "status": {"phase": (pod.get("status") or {}).get("phase", "")},
    }
