"""Objects on a real API server for the DRA tests and bench/dra.py (what a kubelet-less test node needs).

- ``ensure_fake_node``: a Node object without a kubelet (the way kwok does it), Ready, with
  allocatable cpu/memory/pods, so the real kube-scheduler can place pods on it and allocate our
  devices there without a real kubelet trying to run them;
- ``create_allocated_claim``: a ResourceClaim whose ``status.allocation`` is written directly
  (what the scheduler writes), for prepare tests and the prepare benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from hcs.kube import RESOURCE_API, KubeError, KubeRest


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _create(rest: KubeRest, path: str, body: dict[str, Any]) -> None:
    """POST, taking "already exists" (409) as done."""
    try:
        rest.request("POST", path, body=body)
    except KubeError as exc:
        if exc.status != 409:
            raise


def _delete(rest: KubeRest, path: str) -> None:
    """DELETE, taking "not found" (404) as done."""
    try:
        rest.request("DELETE", path)
    except KubeError as exc:
        if exc.status != 404:
            raise


def ensure_namespace(rest: KubeRest, name: str) -> None:
    _create(rest, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def delete_namespace(rest: KubeRest, name: str) -> None:
    _delete(rest, f"/api/v1/namespaces/{name}")


def ensure_fake_node(rest: KubeRest, name: str) -> dict[str, Any]:
    """Create (or refresh) a kubelet-less Node that is Ready with room for pods."""
    body = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "hcs.io/fake-node": "true"}},
        "spec": {},
    }
    _create(rest, "/api/v1/nodes", body)
    status = {
        "status": {
            "capacity": {"cpu": "64", "memory": "512Gi", "pods": "250"},
            "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "250"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node",
                            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
        }
    }
    return rest.request("PATCH", f"/api/v1/nodes/{name}/status", body=status,
                        content_type="application/merge-patch+json")


def delete_node(rest: KubeRest, name: str) -> None:
    _delete(rest, f"/api/v1/nodes/{name}")


def create_allocated_claim(
    rest: KubeRest,
    namespace: str,
    name: str,
    results: Sequence[dict[str, Any]],
    *,
    device_class: str = "vram.ai.compute",
    requests: Sequence[str] = ("gpu",),
) -> dict[str, Any]:
    """Create a claim and write its allocation (results: request/driver/pool/device[/consumedCapacity...])."""
    claim = rest.request("POST", f"{RESOURCE_API}/namespaces/{namespace}/resourceclaims", body={
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": [{"name": r, "exactly": {"deviceClassName": device_class}}
                                          for r in requests]}},
    })
    claim["status"] = {"allocation": {"devices": {"results": list(results)}}}
    return rest.request("PUT", f"{RESOURCE_API}/namespaces/{namespace}/resourceclaims/{name}/status", body=claim)


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.1) -> Any:
    """Poll ``predicate()`` until it returns something truthy; returns it, or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except KubeError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval_s)
