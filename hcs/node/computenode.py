"""The node's ComputeNode object (hetero.zrs.io/v1alpha1): built from the inventory, written by the agent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from hcs import __version__
from hcs.devices.model import Device
from hcs.kube import KubeError, KubeRest
from hcs.node.metrics import NodeMetrics
from hcs.quantity import format_bytes

log = logging.getLogger(__name__)

GROUP = "hetero.zrs.io"
VERSION = "v1alpha1"
PLURAL = "computenodes"
BASE = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
CRD_FILE = Path(__file__).with_name("crds") / "computenode.yaml"
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class IslandInfo:
    id: str
    vendor: str
    link_type: str
    members: tuple[str, ...]
    min_gbps: float


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_spec(node_name: str, devices: Sequence[Device], islands: Sequence[IslandInfo]) -> dict[str, Any]:
    vendors = sorted({str(d.vendor) for d in devices})
    return {
        "nodeName": node_name,
        "vendor": vendors[0] if len(vendors) == 1 else ("none" if not vendors else "mixed"),
        "agentVersion": __version__,
        "devices": [
            {
                "name": d.key,
                "vendor": str(d.vendor),
                "model": d.model,
                "productName": d.name,
                "uuid": d.uuid,
                "index": d.index,
                "vramBytes": d.vram_total_bytes,
                "compute": {"fp16Tflops": d.compute.fp16_tflops, "fp32Tflops": d.compute.fp32_tflops,
                            "int8Tops": d.compute.int8_tops, "rate": d.compute.rate,
                            "a100EquivTflops": d.compute.a100_equiv_tflops},
                "topology": {"busId": d.pci_bus_id, "numaNode": d.numa_node, "island": d.island,
                             "links": [{"type": str(lk.type), "peer": lk.peer, "gbps": lk.gbps} for lk in d.links]},
                "healthScore": d.health.score,
                "healthy": d.health.healthy,
                "healthReasons": list(d.health.reasons),
                "grade": d.health.verdict,
            }
            for d in sorted(devices, key=lambda d: (str(d.vendor), d.index))
        ],
        "islands": [{"id": i.id, "vendor": i.vendor, "linkType": i.link_type, "members": list(i.members),
                     "minGbps": i.min_gbps} for i in islands],
    }


def build_status(devices: Sequence[Device], allocated: Mapping[str, tuple[int, int]],
                 now: str | None = None) -> dict[str, Any]:
    total = sum(d.vram_total_bytes for d in devices)
    healthy = [d for d in devices if d.health.healthy]
    used = sum(allocated.get(d.key, (0, 0))[0] for d in devices)
    usable = sum(d.vram_total_bytes for d in healthy)
    allocatable = max(0, usable - sum(allocated.get(d.key, (0, 0))[0] for d in healthy))
    if not devices:
        phase, reason, msg = "NotReady", "NoDevices", "no accelerator found by any vendor library"
    elif not healthy:
        phase, reason, msg = "NotReady", "AllDevicesUnhealthy", "no device is schedulable"
    elif len(healthy) < len(devices) or any(d.health.degraded for d in devices):
        bad = [f"{d.key} ({d.health.score}: {'; '.join(d.health.reasons)})" for d in devices if d.health.score < 100]
        phase, reason, msg = "Degraded", "DevicesDegraded", "; ".join(bad)[:1000]
    else:
        phase, reason, msg = "Ready", "AllDevicesHealthy", f"{len(devices)} devices healthy"
    stamp = now or _now()
    return {
        "phase": phase,
        "vram": f"{format_bytes(allocatable)}/{format_bytes(total)}",
        "vramTotalBytes": total,
        "vramAllocatableBytes": allocatable,
        "vramAllocatedBytes": used,
        "healthyDevices": len(healthy),
        "lastReportTime": stamp,
        "devices": [{"name": d.key, "vramAllocatedBytes": allocated.get(d.key, (0, 0))[0],
                     "allocations": allocated.get(d.key, (0, 0))[1]}
                    for d in sorted(devices, key=lambda d: (str(d.vendor), d.index))],
        "conditions": [{"type": "Ready", "status": "True" if phase == "Ready" else "False", "reason": reason,
                        "message": msg, "lastTransitionTime": stamp}],
    }


def report_inventory_error(rest: KubeRest, node_name: str, message: str) -> None:
    """The node's ComputeNode when its devices cannot be enumerated (a broken node profile, a vendor library
    that fails): no devices, phase NotReady, condition Ready=False with reason InventoryFailed and the error,
    so the node shows up with the cause instead of missing or keeping a stale Ready status."""
    path = f"{BASE}/{node_name}"
    spec = build_spec(node_name, [], [])
    try:
        rest.request("GET", path)
    except KubeError as exc:
        if exc.status != 404:
            raise
        rest.request("POST", BASE, body={"apiVersion": f"{GROUP}/{VERSION}", "kind": "ComputeNode",
                                         "metadata": {"name": node_name,
                                                      "labels": {"hetero.zrs.io/node": node_name}},
                                         "spec": spec})
    else:
        rest.request("PATCH", path, body={"spec": spec}, content_type=MERGE_PATCH)
    status = build_status([], {})
    status["conditions"] = [{"type": "Ready", "status": "False", "reason": "InventoryFailed",
                             "message": message[:1000], "lastTransitionTime": status["lastReportTime"]}]
    rest.request("PATCH", f"{path}/status", body={"status": status}, content_type=MERGE_PATCH)


def install_crd(rest: KubeRest) -> None:
    """Create or update the ComputeNode CRD (tests, `hcs node --install-crd`)."""
    body = yaml.safe_load(CRD_FILE.read_text())
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        rest.request("POST", path, body=body)
    except KubeError as exc:
        if exc.status != 409:
            raise
        rest.request("PATCH", f"{path}/{body['metadata']['name']}", body=body, content_type=MERGE_PATCH)


Snapshot = Callable[[], tuple[Sequence[Device], Sequence[IslandInfo], Mapping[str, tuple[int, int]]]]


class ComputeNodeReporter:
    """Writes the node's ComputeNode every ``interval`` seconds and at once after ``trigger()``.

    API-server trouble is logged and retried at the next tick; it never reaches the kubelet side.
    """

    def __init__(self, rest: KubeRest, node_name: str, snapshot: Snapshot, interval_s: float,
                 metrics: NodeMetrics) -> None:
        self.rest = rest
        self.node_name = node_name
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._node_uid = ""
        self._last: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._thread: threading.Thread | None = None
        self.reports = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="hcs-computenode")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def trigger(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.report()
            except Exception:  # never let a bad response kill the reporter
                log.exception("ComputeNode %s: report failed", self.node_name)
            self._wake.wait(self.interval_s)

    def _owner(self) -> list[dict[str, Any]]:
        if not self._node_uid:
            try:
                node = self.rest.request("GET", f"/api/v1/nodes/{self.node_name}")
                self._node_uid = str(node["metadata"]["uid"])
            except KubeError as exc:
                if exc.status != 404:
                    raise
                log.warning("Node %s not found in the API server; ComputeNode written without an owner",
                            self.node_name)
                return []
        return [{"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self._node_uid,
                 "controller": True, "blockOwnerDeletion": False}]

    def report(self) -> bool:
        devices, islands, allocated = self.snapshot()
        spec = build_spec(self.node_name, devices, islands)
        status = build_status(devices, allocated)
        path = f"{BASE}/{self.node_name}"
        try:
            owners = self._owner()
            try:
                current = self.rest.request("GET", path)
            except KubeError as exc:
                if exc.status != 404:
                    raise
                body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ComputeNode",
                        "metadata": {"name": self.node_name, "ownerReferences": owners,
                                     "labels": {"hetero.zrs.io/node": self.node_name}},
                        "spec": spec}
                self.rest.request("POST", BASE, body=body)
                log.info("ComputeNode %s created", self.node_name)
            else:
                if current.get("spec") != spec or (owners and not current["metadata"].get("ownerReferences")):
                    patch: dict[str, Any] = {"spec": spec}
                    if owners:
                        patch["metadata"] = {"ownerReferences": owners}
                    self.rest.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
            self.rest.request("PATCH", f"{path}/status", body={"status": status}, content_type=MERGE_PATCH)
        except KubeError as exc:
            self.metrics.reports.labels("error").inc()
            log.warning("ComputeNode %s: %s (will retry in %.0fs)", self.node_name, exc, self.interval_s)
            return False
        self.metrics.reports.labels("ok").inc()
        self.reports += 1
        return True
