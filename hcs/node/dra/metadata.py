"""KEP-5304 device metadata: what a container learns about its DRA devices without the API server.

With ``deviceMetadata: true`` prepare writes, per claim request, a ``DeviceMetadata`` object
(``metadata.resource.k8s.io/v1alpha1``) naming the prepared devices (driver, pool, device) with the
attributes our ResourceSlices publish for them, and the request's CDI device bind-mounts it read-only
at the path the protocol fixes, so workloads and the upstream reader library find it without knowing
the driver:

    /var/run/kubernetes.io/dra-device-attributes/resourceclaims/<claim>/<request>/<driver>-metadata.json
    /var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/<pod claim>/<request>/<driver>-metadata.json

(the second for claims generated from a template: the pod's own name for the claim is stable, the
generated claim name is not). The file is written once at prepare (``generation`` 1, never updated):
every attribute is known then. Pure functions; state.py does the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

API_VERSION = "metadata.resource.k8s.io/v1alpha1"
KIND = "DeviceMetadata"
#: where the protocol puts the files inside containers
CONTAINER_ROOT = "/var/run/kubernetes.io/dra-device-attributes"
#: set by the ResourceClaim controller on claims it generates from a template: pod.spec.resourceClaims[].name
POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"


@dataclass(frozen=True)
class MetadataDevice:
    pool: str
    name: str
    attributes: Mapping[str, Mapping[str, Any]]


def pod_claim_name(claim: Mapping[str, Any]) -> str:
    """The pod's name for a template-generated claim; "" for a claim the pod references by name."""
    annotations = (claim.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(POD_CLAIM_ANNOTATION, "")
    return value if isinstance(value, str) else ""


def container_path(driver: str, claim_name: str, pod_claim: str, request: str) -> str:
    """The protocol's in-container path for one request (``request`` without its subrequest)."""
    if pod_claim:
        return f"{CONTAINER_ROOT}/resourceclaimtemplates/{pod_claim}/{request}/{driver}-metadata.json"
    return f"{CONTAINER_ROOT}/resourceclaims/{claim_name}/{request}/{driver}-metadata.json"


def host_file_name(request: str) -> str:
    """The file's name in the claim's dir (prefixed, like quota-<request>, so requests never collide)."""
    return f"metadata-{request}.json"


def build(driver: str, claim: Mapping[str, Any], request_ref: str, devices: Sequence[MetadataDevice]) -> dict[str, Any]:
    """The DeviceMetadata object of one request; ``request_ref`` keeps a ``/subrequest`` suffix (the
    protocol records which alternative of a prioritized list was allocated)."""
    meta = claim.get("metadata") or {}
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": str(meta.get("name", "")),
            "namespace": str(meta.get("namespace", "")),
            "uid": str(meta.get("uid", "")),
            "generation": 1,
        },
    }
    pod_claim = pod_claim_name(claim)
    if pod_claim:
        obj["podClaimName"] = pod_claim
    obj["requests"] = [{
        "name": request_ref,
        "devices": [
            {"driver": driver, "pool": d.pool, "name": d.name,
             "attributes": {k: dict(v) for k, v in d.attributes.items()}}
            for d in devices
        ],
    }]
    return obj


def encode(obj: Mapping[str, Any]) -> str:
    """Deterministic JSON (sorted keys), newline-terminated, for humans reading it in a container too."""
    return json.dumps(obj, sort_keys=True, indent=2) + "\n"
