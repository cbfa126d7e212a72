"""HTTPS server: ``/mutate``, ``/validate``, ``/healthz``, ``/readyz``, ``/metrics``.

Served by :class:`hcs.httpserve.HttpService` (aiohttp on an event loop in a background thread, with
handshake/header/body/idle timeouts, a body cap and a connection cap that sheds the connection idle
longest; see that module). HTTP/1.1 keep-alive: the API server reuses connections, so the TLS
handshake is paid once per connection, not per admission. Certificate and key are re-read when their
files change (checked every ``certCheckSeconds``; Secret volume updates swap a symlink, which changes
the stat), a bad new pair is logged and the old one kept. An expired certificate is reported in the
log, in ``/readyz`` (503) and in ``hcs_webhook_cert_not_after_seconds``; serving continues so a renewal
is picked up without a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hcs import httpserve
from hcs.httpserve import HttpService, Limits, Reply, Request, cert_not_after
from hcs.podspec import TEMPLATE_PATHS
from hcs.webhook.capacity import StaticCapacity
from hcs.webhook.review import Admission

log = logging.getLogger(__name__)

#: Open connections kept; past this the one idle longest is closed (slow or stuck clients go first).
MAX_CONNECTIONS = 1024
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
__all__ = ["CertStore", "Metrics", "WebhookServer", "cert_not_after"]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "hcs_webhook_requests", "AdmissionReviews handled", ["endpoint", "kind", "result"], registry=self.registry
        )
        self.duration = Histogram(
            "hcs_webhook_request_duration_seconds", "Time to answer one AdmissionReview", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.cert_reloads = Counter("hcs_webhook_cert_reloads", "Certificate reloads", ["result"],
                                    registry=self.registry)
        self.cert_not_after = Gauge("hcs_webhook_cert_not_after_seconds",
                                    "Expiry of the serving certificate (unix time; 0 unknown)", registry=self.registry)
        self.tls_errors = Counter("hcs_webhook_tls_handshake_errors", "Failed TLS handshakes", registry=self.registry)
        self.open_connections = Gauge("hcs_webhook_open_connections", "Open client connections",
                                      registry=self.registry)
        self.shed_connections = Gauge("hcs_webhook_connections_shed", "Connections closed by the connection cap "
                                      "(since start)", registry=self.registry)
        self.header_timeouts = Gauge("hcs_webhook_header_timeouts", "Connections closed for sending no complete "
                                     "request headers in time (since start)", registry=self.registry)

    def watch(self, stats: httpserve.ConnStats) -> None:
        self.open_connections.set_function(lambda: stats.open)
        self.shed_connections.set_function(lambda: stats.shed)
        self.header_timeouts.set_function(lambda: stats.header_timeouts)


class CertStore(httpserve.CertStore):
    """The webhook's serving certificate (reloaded when its files change), reported in its metrics."""

    def __init__(self, cert_file: str, key_file: str, metrics: Metrics) -> None:
        super().__init__(
            cert_file, key_file, label="webhook TLS",
            hint="pass --cert-file/--key-file (or webhook.certFile/keyFile) pointing at the serving certificate "
                 "and key",
            on_reload=lambda result: metrics.cert_reloads.labels(result).inc(),
            on_not_after=metrics.cert_not_after.set)


_NOT_FOUND_GET = b"not found; endpoints: /mutate /validate /healthz /readyz /metrics\n"
_NOT_FOUND_POST = b"not found; POST AdmissionReviews to /mutate or /validate\n"


class WebhookServer:
    """The webhook's HTTPS server; ``start()`` serves in a background thread."""

    def __init__(self, host: str, port: int, cert_file: str, key_file: str, admission: Admission, *,
                 cert_check_s: float = 5.0, max_body_bytes: int = 3 * 2**20, metrics: Metrics | None = None,
                 limits: Limits | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.certs = CertStore(cert_file, key_file, self.metrics)
        self.admission = admission
        self.limits = limits or Limits(max_body_bytes=max_body_bytes, max_connections=MAX_CONNECTIONS)
        self._http = HttpService(host, port, self._handle, certs=self.certs, limits=self.limits, name="webhook",
                                 inline=self._inline,
                                 on_tls_error=self.metrics.tls_errors.inc,
                                 body_hint="webhook.maxBodyBytes; an AdmissionReview is far smaller")
        self.metrics.watch(self._http.stats)
        self._cert_check_s = cert_check_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self._http.port

    def _inline(self, method: str, path: str) -> bool:
        """Run on the event loop: GETs, and reviews when nothing in them can wait on I/O (a fixed
        ``largestIsland`` and no API access: pure CPU, so a thread hop would only add latency)."""
        return method != "POST" or self._local_only

    @property
    def _local_only(self) -> bool:
        adm = self.admission  # (an unknown shape counts as "may wait": worker threads)
        return isinstance(adm.capacity, StaticCapacity | None) and getattr(adm.cluster, "_api_client", 1) is None

    def _handle(self, req: Request) -> Reply:
        if req.method == "POST":
            return self._post(req)
        if req.method not in ("GET", "HEAD"):
            return Reply(405, b"method not allowed; GET health/metrics or POST AdmissionReviews\n", "text/plain")
        if req.path == "/metrics":
            return Reply(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        if req.path in ("/healthz", "/livez"):
            return Reply(200, b"ok\n", "text/plain")
        if req.path == "/readyz":
            certs = self.certs
            body = {"ready": not certs.expired, "certNotAfter": certs.not_after, "certExpired": certs.expired}
            return Reply(503 if certs.expired else 200, json.dumps(body).encode())
        return Reply(404, _NOT_FOUND_GET, "text/plain")

    def _post(self, req: Request) -> Reply:
        start = time.perf_counter()
        endpoint = req.path.strip("/")
        if endpoint not in ("mutate", "validate"):
            return Reply(404, _NOT_FOUND_POST, "text/plain")
        answer = self.admission.handle(endpoint, req.body)
        m = self.metrics
        kind = answer.kind if answer.kind in TEMPLATE_PATHS else ("" if not answer.kind else "other")
        m.requests.labels(endpoint, kind, answer.result).inc()
        m.duration.labels(endpoint).observe(time.perf_counter() - start)
        return Reply(answer.status, answer.body, answer.content_type)

    def _watch_certs(self) -> None:
        while not self._stop.wait(self._cert_check_s):
            try:
                self.certs.maybe_reload()
            except Exception:
                log.exception("certificate reload check failed")

    def start(self) -> None:
        self._http.start()
        t = threading.Thread(target=self._watch_certs, name="webhook-certs", daemon=True)
        t.start()
        self._threads.append(t)
        log.info("webhook serving HTTPS on %s:%d", *self._http.server_address)

    def stop(self) -> None:
        if self._stop.is_set() and not self._threads:
            return
        self._stop.set()
        self._http.stop()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
