"""Prometheus metrics of the node agent (own registry; ``hcs_`` prefix)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_DEVICE = ("device", "vendor", "model", "uuid")
_GRPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.vram_total = Gauge("hcs_device_vram_total_bytes", "Device VRAM capacity.", _DEVICE, registry=r)
        self.vram_allocated = Gauge("hcs_device_vram_allocated_bytes", "VRAM granted to containers.", _DEVICE,
                                    registry=r)
        self.health_score = Gauge("hcs_device_health_score", "Device health, 0 (unusable) to 100.", _DEVICE,
                                  registry=r)
        self.healthy = Gauge("hcs_device_healthy", "1 when the device is schedulable.", _DEVICE, registry=r)
        self.allocations = Gauge("hcs_device_allocations", "Containers currently holding the device.", _DEVICE,
                                 registry=r)
        self.allocate_total = Counter("hcs_allocate_requests_total",
                                      "Allocate outcomes per container (exact, deferred, fallback, error).",
                                      ("outcome",), registry=r)
        self.grpc_latency = Histogram("hcs_grpc_request_duration_seconds", "Device-plugin gRPC handling time.",
                                      ("method", "code"), buckets=_GRPC_BUCKETS, registry=r)
        self.admission_phase = Histogram(
            "hcs_admission_phase_seconds",
            "Parts of GetPreferredAllocation/Allocate: kubelet_list (pod-resources List), watch_catch_up "
            "(waiting for the pod watch to deliver the kubelet's pods), source (GetNodeAssignments).",
            ("phase",), buckets=_GRPC_BUCKETS, registry=r)
        self.registrations = Counter("hcs_kubelet_registrations_total", "Registrations with the kubelet.",
                                     ("result",), registry=r)
        self.health_events = Counter("hcs_device_health_changes_total", "Health changes seen.",
                                     ("device", "healthy"), registry=r)
        self.reports = Counter("hcs_computenode_reports_total", "ComputeNode writes.", ("result",), registry=r)
        self.grade = Gauge("hcs_device_grade", "Sub-health verdict: 0 healthy, 1 degraded, 2 failing, 3 lost.",
                           _DEVICE, registry=r)
        self.signal = Gauge("hcs_device_subhealth_signal",
                            "Last sample of each sub-health signal (counters, link, clocks, temperature).",
                            (*_DEVICE, "signal"), registry=r)
        from hcs.records import REJECTED

        r.register(REJECTED)  # hcs_assignment_records_rejected_total{component,reason}
        self._server: Any = None

    def serve(self, address: str, port: int) -> int:
        """Serve /metrics; returns the bound port (``port`` 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", address, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
