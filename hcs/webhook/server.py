"""HTTPS server: ``/mutate``, ``/validate``, ``/healthz``, ``/readyz``, ``/metrics``.

stdlib ``ThreadingHTTPServer`` with HTTP/1.1 keep-alive (the API server reuses connections, so the
TLS handshake is paid once per connection, not per admission). The TLS handshake runs in the
connection's thread, never in the accept loop. Certificate and key are re-read when their files
change (checked every ``certCheckSeconds``; Secret volume updates swap a symlink, which changes the
stat), a bad new pair is logged and the old one kept. An expired certificate is reported in the log,
in ``/readyz`` (503) and in ``hcs_webhook_cert_not_after_seconds``; serving continues so a renewal
is picked up without a restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hcs.errors import ConfigError
from hcs.httpreply import send_once
from hcs.webhook.podspec import TEMPLATE_PATHS
from hcs.webhook.review import Admission

log = logging.getLogger(__name__)

#: Concurrent connections served (each has a thread); more are closed at once.
MAX_CONNECTIONS = 512
#: A refused (too large) body up to this size is read and dropped so the client sees the 413.
LINGER_MAX_BYTES = 64 * 2**20
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


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


def cert_not_after(cert_file: str) -> float | None:
    """notAfter of the first certificate in a PEM file (unix time), None when it cannot be read."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        info = decode(cert_file)
        return float(ssl.cert_time_to_seconds(info["notAfter"]))
    except (OSError, ssl.SSLError, KeyError, ValueError):
        return None


class CertStore:
    """The current server ``SSLContext``; reloads when the files change."""

    def __init__(self, cert_file: str, key_file: str, metrics: Metrics) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._metrics = metrics
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._context = self._load()  # errors here are start-up errors: ConfigError
        self.not_after = self._note_expiry()

    def _stat(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for path in (self.cert_file, self.key_file):
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for path in (self.cert_file, self.key_file):
            if not os.path.isfile(path):
                raise ConfigError(f"webhook TLS: {path}: file not found; pass --cert-file/--key-file (or "
                                  "webhook.certFile/keyFile) pointing at the serving certificate and key")
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"webhook TLS: cannot load certificate {self.cert_file} with key {self.key_file} "
                              f"({exc}); check both are PEM and belong together") from exc
        return ctx

    def _note_expiry(self) -> float | None:
        not_after = cert_not_after(self.cert_file)
        self._metrics.cert_not_after.set(not_after or 0)
        if not_after is not None and not_after < time.time():
            log.error("serving certificate %s EXPIRED at %s; the API server will refuse TLS until it is renewed",
                      self.cert_file, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after)))
        return not_after

    @property
    def context(self) -> ssl.SSLContext:
        with self._lock:
            return self._context

    @property
    def expired(self) -> bool:
        return self.not_after is not None and self.not_after < time.time()

    def maybe_reload(self) -> bool:
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        try:
            ctx = self._load()
        except ConfigError as exc:
            # keep the old pair; a half-written renewal (cert before key) lands here transiently
            log.warning("certificate files changed but cannot be loaded yet, keeping the old pair: %s", exc)
            self._metrics.cert_reloads.labels("error").inc()
            return False
        with self._lock:
            self._context = ctx
            self._stamp = stamp
        self.not_after = self._note_expiry()
        self._metrics.cert_reloads.labels("ok").inc()
        log.info("reloaded serving certificate %s", self.cert_file)
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    certs: CertStore
    admission: Admission
    metrics: Metrics
    max_body: int

    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # connection flood: refuse instead of spawning threads
            log.warning("more than %d open connections; refusing %s", MAX_CONNECTIONS, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            tls = self.certs.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.metrics.tls_errors.inc()
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            tls.settimeout(120)  # idle keep-alive connections end after this
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server
    server_version = "hcs-webhook"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        send_once(self, status, body, content_type)  # one TLS record, no Nagle/delayed-ACK stall

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/livez"):
            self._send(200, b"ok\n", "text/plain")
        elif path == "/readyz":
            certs = self.server.certs
            body = {"ready": not certs.expired, "certNotAfter": certs.not_after, "certExpired": certs.expired}
            self._send(503 if certs.expired else 200, json.dumps(body).encode())
        else:
            self._send(404, b"not found; endpoints: /mutate /validate /healthz /readyz /metrics\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        start = time.perf_counter()
        path = self.path.split("?", 1)[0]
        endpoint = path.strip("/")
        if endpoint not in ("mutate", "validate"):
            self._drain()
            self._send(404, b"not found; POST AdmissionReviews to /mutate or /validate\n", "text/plain")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self.close_connection = True
            self._send(411, b"Content-Length required\n", "text/plain")
            return
        length = int(length_text)
        if length > self.server.max_body:
            self.close_connection = True  # never parse a huge body
            self.server.metrics.requests.labels(endpoint, "", "too_large").inc()
            self._send(413, f"AdmissionReview of {length} bytes is larger than the {self.server.max_body} "
                       "bytes this webhook accepts (webhook.maxBodyBytes)\n".encode(), "text/plain")
            self._discard(length)
            return
        body = self.rfile.read(length)
        answer = self.server.admission.handle(endpoint, body)
        self._send(answer.status, answer.body, answer.content_type)
        m = self.server.metrics
        kind = answer.kind if answer.kind in TEMPLATE_PATHS else ("" if not answer.kind else "other")
        m.requests.labels(endpoint, kind, answer.result).inc()
        m.duration.labels(endpoint).observe(time.perf_counter() - start)

    def _discard(self, length: int) -> None:
        """Read and drop a refused body (bounded) so the client receives the answer instead of a reset."""
        if length > LINGER_MAX_BYTES:
            return
        self.wfile.flush()
        self.connection.settimeout(5)
        with contextlib.suppress(OSError):
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)

    def _drain(self) -> None:
        length_text = self.headers.get("Content-Length", "0")
        length = int(length_text) if length_text.isdigit() else 0
        if 0 < length <= self.server.max_body:
            self.rfile.read(length)
        elif length:
            self.close_connection = True


class WebhookServer:
    """The webhook's HTTPS server; ``start()`` serves in a background thread."""

    def __init__(self, host: str, port: int, cert_file: str, key_file: str, admission: Admission, *,
                 cert_check_s: float = 5.0, max_body_bytes: int = 3 * 2**20, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.certs = CertStore(cert_file, key_file, self.metrics)
        try:
            server = _Server((host, port), _Handler, bind_and_activate=False)
            server.allow_reuse_address = True
            if ":" in host:
                server.address_family = socket.AF_INET6
                server.socket = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            server.server_bind()
            server.server_activate()
        except OSError as exc:
            raise ConfigError(f"webhook: cannot listen on {host}:{port} ({exc.strerror}); choose another "
                              "address with --listen or webhook.listen") from exc
        server.certs = self.certs
        server.admission = admission
        server.metrics = self.metrics
        server.max_body = max_body_bytes
        server.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._server = server
        self._cert_check_s = cert_check_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _watch_certs(self) -> None:
        while not self._stop.wait(self._cert_check_s):
            try:
                self.certs.maybe_reload()
            except Exception:
                log.exception("certificate reload check failed")

    def start(self) -> None:
        for target, name in ((self._server.serve_forever, "webhook-serve"), (self._watch_certs, "webhook-certs")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("webhook serving HTTPS on %s:%d", *self._server.server_address[:2])

    def stop(self) -> None:
        if self._stop.is_set() and not self._threads:
            return
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
