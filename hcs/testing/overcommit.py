"""An over-commit checker independent of the allocator: reads ComputeNodes and pods from the API server.

Used by the allocator's stress test and the scheduler benchmark. It parses the ``hcs.io/assignment``
annotation as plain JSON (not through the allocator's code) and adds up, per device, the VRAM granted
to every unfinished pod that is bound or holds an assignment; any device above its ``vramBytes`` is
over-committed. It also lists pods bound to a ComputeNode's node that ask for ``ai.compute/*`` but
carry no assignment (bound without a grant).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hcs.kube import KubeRest

CN_PATH = "/apis/hetero.zrs.io/v1alpha1/computenodes"
ANN = "hcs.io/assignment"


@dataclass
class Report:
    devices: int = 0
    pods: int = 0
    granted_pods: int = 0
    overcommitted: list[str] = field(default_factory=list)  # "node/device: used > capacity"
    bound_without_grant: list[str] = field(default_factory=list)  # "ns/name on node"


def _paged(rest: KubeRest, path: str, query: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    q = {**(query or {}), "limit": "500"}
    while True:
        page = rest.request("GET", path, query=q)
        out += page.get("items") or []
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return out
        q = {**(query or {}), "limit": "500", "continue": token}


def check(rest: KubeRest, namespace: str | None = None, nodes: set[str] | None = None) -> Report:
    """Read the API server now and report over-committed devices and pods bound without a grant.

    ``namespace`` limits the pods read (the test's own); ``nodes`` limits the ComputeNodes checked."""
    cap: dict[tuple[str, str], int] = {}
    for cn in _paged(rest, CN_PATH):
        spec = cn.get("spec") or {}
        node = str(spec.get("nodeName") or "")
        if nodes is not None and node not in nodes:
            continue
        for d in spec.get("devices") or []:
            cap[(node, str(d.get("name")))] = int(d.get("vramBytes") or 0)
    report = Report(devices=len(cap))
    used: dict[tuple[str, str], int] = {}
    path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    for pod in _paged(rest, path):
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        report.pods += 1
        bound = str(spec.get("nodeName") or "")
        text = (meta.get("annotations") or {}).get(ANN)
        if not text:
            asks = any(str(k).startswith("ai.compute/")
                       for c in spec.get("containers") or []
                       for k in {**((c.get("resources") or {}).get("requests") or {}),
                                 **((c.get("resources") or {}).get("limits") or {})})
            if bound and asks and (nodes is None or bound in nodes):
                report.bound_without_grant.append(f"{meta.get('namespace')}/{meta.get('name')} on {bound}")
            continue
        a = json.loads(text)
        if str((a.get("pod") or {}).get("uid")) != meta.get("uid"):
            continue  # an annotation copied from another pod grants nothing
        node = str(a.get("node") or "")
        if bound and bound != node:
            continue
        report.granted_pods += 1
        for c in a.get("containers") or []:
            for d in c.get("devices") or []:
                key = (node, f"{d.get('vendor')}-{int(d.get('index') or 0)}")
                used[key] = used.get(key, 0) + int(d.get("vramBytes") or 0)
    for key, v in sorted(used.items()):
        if key in cap and v > cap[key]:
            report.overcommitted.append(f"{key[0]}/{key[1]}: {v} > {cap[key]}")
    return report
