"""A watch-fed cache of the ResourceClaims allocated to this node's devices.

Why: reading the claim from the API server was most of a NodePrepareResources call (a GET per
claim, ~10 ms on a busy control plane). The cache lists and then watches ``resource.k8s.io/v1``
resourceclaims in all namespaces and keeps only claims with an allocation result of our driver in
our pool (pool = node name), trimmed to what prepare reads, so memory stays proportional to this
node's claims.

It is an optimisation only; correctness never depends on it. ``lookup`` answers only while the
watch is connected (``synced``) and only for the exact UID the kubelet asked for; anything else
(miss, other UID, not synced) makes the caller GET the claim as before. When the watch breaks (API
server down, network), the content stays but is not served until the watch is back; an expired
resourceVersion (410 Gone) relists. The remaining staleness window is the watch delivery delay,
much shorter than the kubelet's own path from reading the claim to calling NodePrepareResources.
"""

from __future__ import annotations

import logging
from typing import Any

from hcs.kube import RESOURCE_API, Informer, KubeRest
from hcs.node.dra.metadata import POD_CLAIM_ANNOTATION

log = logging.getLogger(__name__)

CLAIMS = f"{RESOURCE_API}/resourceclaims"

#: ownerReferences / reservedFor: the claim's pods, whose hcs.io/compute-policy applies to its compute share
_META_KEYS = ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp", "ownerReferences")
_STATUS_KEYS = ("allocation", "reservedFor")


def ours(claim: Any, driver: str, pool: str) -> bool:
    """True when ``claim`` has an allocation result of ``driver`` in ``pool`` (tolerates any shape)."""
    try:
        results = claim["status"]["allocation"]["devices"]["results"]
        return any(isinstance(r, dict) and r.get("driver") == driver and r.get("pool") == pool for r in results)
    except (KeyError, TypeError):
        return False


def trim(claim: dict[str, Any]) -> dict[str, Any]:
    """Only what prepare and the claim-status patch read (drops managedFields, spec, conditions)."""
    meta = claim.get("metadata") or {}
    status = claim.get("status") or {}
    kept = {k: meta[k] for k in _META_KEYS if k in meta}
    annotations = meta.get("annotations") or {}
    if POD_CLAIM_ANNOTATION in annotations:  # device metadata paths of template-generated claims
        kept["annotations"] = {POD_CLAIM_ANNOTATION: annotations[POD_CLAIM_ANNOTATION]}
    return {
        "apiVersion": claim.get("apiVersion", "resource.k8s.io/v1"),
        "kind": "ResourceClaim",
        "metadata": kept,
        "status": {k: status[k] for k in _STATUS_KEYS if k in status},
    }


class ClaimCache(Informer):
    """List+watch of the claims allocated on this node. Thread-safe; never raises from its thread."""

    def __init__(
        self,
        rest: KubeRest,
        driver: str,
        node: str,
        *,
        watch_timeout_s: float = 60.0,
        page_size: int = 500,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.driver = driver
        self.node = node
        super().__init__(rest, CLAIMS, "resourceclaims", trim=self._trim_ours, watch_timeout_s=watch_timeout_s,
                         page_size=page_size, max_backoff_s=max_backoff_s, thread_name="dra-claim-cache",
                         broken_hint="; prepare reads claims with GETs until it is back")
        # counters (tests, debugging)
        self.hits = 0
        self.misses = 0

    @property
    def resource_version(self) -> str:
        return str(self.rv) if self.rv else ""

    def __len__(self) -> int:
        return len(self.items)

    def lookup(self, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
        """The cached claim when the cache is synced and holds exactly this UID; else None (GET it)."""
        obj = self.items.get((namespace, name)) if self._synced.is_set() else None
        if obj is None or obj["metadata"].get("uid") != uid:
            self.misses += 1
            return None
        self.hits += 1
        return obj

    def _trim_ours(self, claim: dict[str, Any]) -> dict[str, Any] | None:
        return trim(claim) if ours(claim, self.driver, self.node) else None
