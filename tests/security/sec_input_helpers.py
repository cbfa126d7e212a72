"""Helpers for tests/security/test_sec_input_*: the real webhook and extender as their own processes,
attack clients, RSS. (Unique module name: other helpers' security tests live in the same directory.)"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcs.webhook.certs import CertPaths, generate_certs

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    ca: Path
    log: Path
    client_cert: tuple[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def context(self, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx

    def connection(self, timeout: float = 5.0, cert: tuple[str, str] | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(cert), timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, *, timeout: float = 5.0,
                cert: tuple[str, str] | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = self.connection(timeout, cert)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def healthz(self) -> bool:
        try:
            return self.request("GET", "/healthz", timeout=3)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    @property
    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_up(d: Daemon, cert: tuple[str, str] | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited {d.proc.returncode}: {d.log.read_text()[-3000:]}")
        try:
            if d.request("GET", "/healthz", timeout=2, cert=cert)[0] == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise AssertionError(f"daemon did not come up: {d.log.read_text()[-3000:]}")


@contextlib.contextmanager
def webhook_process(tmp: Path) -> Iterator[Daemon]:
    """``hcs webhook --no-kube --config F`` with only webhook.listen, certFile, keyFile, largestIsland."""
    certs = generate_certs(tmp / "wh-tls")
    port = free_port()
    cfg = tmp / "webhook.yaml"
    cfg.write_text(json.dumps({"webhook": {"listen": f"127.0.0.1:{port}", "certFile": str(certs.cert),
                                           "keyFile": str(certs.key), "largestIsland": "80Gi"}}))
    log = tmp / "webhook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hcs.cli", "webhook", "--no-kube", "--config", str(cfg)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HCS_LOG_LEVEL": "warning"})
    d = Daemon(proc, port, certs.ca, log)
    try:
        _wait_up(d)
        yield d
    finally:
        d.stop()


@dataclass(frozen=True)
class ExtenderCerts:
    server: CertPaths
    scheduler: tuple[str, str]  # CN hcs-scheduler, signed by the extender CA
    wrong_cn: tuple[str, str]  # CN tenant, signed by the extender CA
    other_ca: tuple[str, str]  # CN hcs-scheduler, signed by another CA


def extender_certs(tmp: Path) -> ExtenderCerts:
    d = tmp / "ext-tls"
    server = generate_certs(d, ("127.0.0.1", "localhost"), name="extender")
    sched = generate_certs(d, ("hcs-scheduler",), name="scheduler", ca=server, usage="clientAuth")
    wrong = generate_certs(d, ("tenant",), name="tenant", ca=server, usage="clientAuth")
    other = generate_certs(tmp / "other-ca", ("hcs-scheduler",), name="forged", usage="clientAuth")
    return ExtenderCerts(server, (str(sched.cert), str(sched.key)), (str(wrong.cert), str(wrong.key)),
                         (str(other.cert), str(other.key)))


@contextlib.contextmanager
def extender_process(tmp: Path) -> Iterator[Daemon]:
    """The extender (real ExtenderServer over HTTPS + client certificates) in its own process."""
    certs = extender_certs(tmp)
    port = free_port()
    log = tmp / "extender.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(HERE / "sec_input_extender_main.py"), str(port),
                                 str(certs.server.cert), str(certs.server.key), str(certs.server.ca)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    d = Daemon(proc, port, certs.server.ca, log, client_cert=certs.scheduler, extra={"certs": certs})
    try:
        _wait_up(d)
        yield d
    finally:
        d.stop()


def admission_review(vram: Any, *, raw_value: str | None = None) -> bytes:
    """An AdmissionReview for a pod asking ``ai.compute/vram: vram`` (``raw_value``: a JSON token as is)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "t"},
           "spec": {"containers": [{"name": "c", "image": "x",
                                    "resources": {"requests": {"ai.compute/vram": "__V__"},
                                                  "limits": {"ai.compute/vram": "__V__"}}}]}}
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                          "resource": {"group": "", "version": "v1", "resource": "pods"},
                          "operation": "CREATE", "namespace": "t", "object": pod}}
    text = json.dumps(review)
    token = raw_value if raw_value is not None else json.dumps(vram)
    return text.replace('"__V__"', token).encode()


def extender_filter_args(vram: Any, *, raw_value: str | None = None) -> bytes:
    pod = {"metadata": {"name": "p", "namespace": "t", "uid": "u-1"},
           "spec": {"containers": [{"name": "c", "resources": {"requests": {"ai.compute/vram": "__V__"}}}]}}
    text = json.dumps({"Pod": pod, "NodeNames": ["big"]})
    token = raw_value if raw_value is not None else json.dumps(vram)
    return text.replace('"__V__"', token).encode()


class HealthWatch:
    """Polls /healthz in a thread while an attack runs; records every failure."""

    def __init__(self, d: Daemon, cert: tuple[str, str] | None = None) -> None:
        self.d = d
        self.cert = cert
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _ = self.d.request("GET", "/healthz", timeout=5, cert=self.cert)
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"status {status}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
            self._stop.wait(0.05)

    def __enter__(self) -> HealthWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=10)


def slow_connections(port: int, n: int, *, tls_ctx: ssl.SSLContext | None) -> list[socket.socket]:
    """``n`` connections that start a request and never finish it: half with a completed TLS handshake and
    one header byte, half in the middle of the handshake (a few ClientHello bytes)."""
    socks: list[socket.socket] = []
    for i in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls_ctx is not None and i % 2 == 0:
            tls = tls_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(b"P")
            socks.append(tls)
        else:
            raw.sendall(b"\x16\x03\x01" if tls_ctx is not None else b"P")
            socks.append(raw)
    return socks


def trickle(socks: list[socket.socket]) -> int:
    """One more byte on each slow connection; returns how many were still open."""
    alive = 0
    for s in socks:
        try:
            s.sendall(b"O")
            alive += 1
        except OSError:
            pass
    return alive
