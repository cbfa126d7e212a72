"""Kubernetes Events for sub-health verdict changes: one on the Node, one on every affected pod.

Affected pods are found through the API server: DRA ResourceClaims whose allocation names this
node's device (``status.reservedFor`` lists the pods), and device-plugin pods on this node whose
``hcs.io/assignment`` record names the device's UUID. Best effort: a failed write is logged, never
raised (health handling must not stop on an Event).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from hcs.kube import KubeError, KubeRest
from hcs.node.sources import node_pods_query
from hcs.records import ASSIGNMENT_ANNOTATION

log = logging.getLogger(__name__)

REASONS = {"healthy": "DeviceRecovered", "degraded": "DeviceDegraded", "failing": "DeviceFailing",
           "lost": "DeviceLost"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def affected_pods(rest: KubeRest, node: str, driver: str, device_key: str, uuid: str) -> list[tuple[str, str, str]]:
    """(namespace, name, uid) of pods holding the device (DRA claims and device-plugin assignments)."""
    out: dict[str, tuple[str, str, str]] = {}
    try:
        claims = rest.request("GET", "/apis/resource.k8s.io/v1/resourceclaims").get("items") or []
    except KubeError as exc:
        log.debug("resourceclaims not listed: %s", exc)
        claims = []
    for c in claims:
        status = c.get("status") or {}
        results = ((status.get("allocation") or {}).get("devices") or {}).get("results") or []
        if not any(r.get("driver") == driver and r.get("pool") == node and
                   (r.get("device") == device_key or str(r.get("device", "")).startswith(device_key + "-"))
                   for r in results):
            continue
        ns = (c.get("metadata") or {}).get("namespace", "")
        for ref in status.get("reservedFor") or []:
            if ref.get("resource") == "pods":
                out[str(ref.get("uid"))] = (ns, str(ref.get("name")), str(ref.get("uid")))
    if uuid:
        try:
            pods = rest.request("GET", "/api/v1/pods", query=node_pods_query(node))
        except KubeError as exc:
            log.debug("pods not listed: %s", exc)
            pods = {}
        for p in pods.get("items") or []:
            meta = p.get("metadata") or {}
            if uuid in str((meta.get("annotations") or {}).get(ASSIGNMENT_ANNOTATION, "")):
                out[str(meta.get("uid"))] = (str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid")))
    return sorted(out.values())


def _event(rest: KubeRest, namespace: str, involved: dict[str, Any], reason: str, message: str,
           warning: bool) -> None:
    now = _now()
    body = {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.hcs-subhealth-", "namespace": namespace},
            "involvedObject": involved, "reason": reason, "message": message[:1000],
            "type": "Warning" if warning else "Normal", "source": {"component": "hcs-node-agent"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1}
    try:
        rest.request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)
    except KubeError as exc:
        log.warning("sub-health event on %s %s not written: %s", involved.get("kind"), involved.get("name"), exc)


def report_verdict(rest: KubeRest, node: str, driver: str, device_key: str, uuid: str, grade: str,
                   reasons: tuple[str, ...] | list[str]) -> int:
    """Write the Node event and one event per affected pod; returns how many pods were told."""
    reason = REASONS.get(grade, "DeviceHealthChanged")
    why = "; ".join(reasons) or "all sub-health signals normal"
    message = f"device {device_key} ({uuid}) is {grade}: {why}"
    warning = grade != "healthy"
    _event(rest, "default", {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node}, reason, message,
           warning)
    pods = affected_pods(rest, node, driver, device_key, uuid)
    for ns, name, uid in pods:
        _event(rest, ns, {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name, "uid": uid}, reason,
               message, warning)
    return len(pods)


class EventingHealthSource:
    """Wraps a health source (``HealthMonitor``) and writes the sub-health Events on every grade change,
    for a DRA plugin that polls health itself (the node agent writes them in its own health loop)."""

    def __init__(self, source: Any, rest: KubeRest, node: str, driver: str, uuids: dict[str, str]) -> None:
        self.source = source
        self.rest = rest
        self.node = node
        self.driver = driver
        self.uuids = uuids

    def wait(self, timeout_s: float) -> Any:
        changes = self.source.wait(timeout_s)
        for c in changes:
            if c.old.verdict != c.new.verdict:
                threading.Thread(target=report_verdict, name=f"hcs-event-{c.device_key}", daemon=True,
                                 args=(self.rest, self.node, self.driver, c.device_key,
                                       self.uuids.get(c.device_key, ""), c.new.verdict, c.new.reasons)).start()
        return changes

    def close(self) -> None:
        self.source.close()
