"""Attack 4 (issue 16): connection exhaustion and oversized/odd requests against the webhook and the extender.

Before: 512 half-open TLS connections locked every client out of the webhook; the extender had no
connection cap, no read timeout, no body limit (a 50 MiB body was buffered), hung a thread on
``Content-Length: -1`` and dropped the connection on a 100k-deep JSON array. Each test performs the
attack against the real daemon process, asserts it fails (refused with a 4xx, or the slow connections
cost the legitimate client nothing), that legitimate use still works, and that RSS stays within 20%.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from pathlib import Path

from sec_input_helpers import (
    Daemon,
    HealthWatch,
    admission_review,
    extender_filter_args,
    extender_process,
    slow_connections,
    trickle,
    webhook_process,
)

from hcs.httpserve import HttpService, Limits, Reply
from hcs.webhook.certs import generate_certs

SLOW = 512


def _raw_request(d: Daemon, head: bytes, body: bytes = b"", cert: tuple[str, str] | None = None) -> bytes:
    """Send bytes as they are (no client-side validation) and read the answer until the server closes."""
    ctx = d.context(cert)
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(head + body)
        out = b""
        with contextlib.suppress(OSError):
            while len(out) < 65536:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out:
                    header, _, rest = out.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in header.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), None)
                    if length is not None and len(rest) >= length:
                        break
        return out


def _status(answer: bytes) -> int:
    assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:200]
    return int(answer.split(b" ", 2)[1])


def _legit_admissions(wh: Daemon, n: int) -> list[float]:
    conn = wh.connection(timeout=5)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            conn.request("POST", "/validate", body=admission_review("16Gi"),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            times.append(time.perf_counter() - t)
            assert resp.status == 200 and json.loads(body)["response"]["allowed"] is True
    finally:
        conn.close()
    return times


def test_webhook_512_slow_tls_connections_do_not_lock_out_clients(tmp_path: Path) -> None:
    with webhook_process(tmp_path) as wh:
        rss_before = wh.rss_kib
        ctx = ssl.create_default_context(cafile=str(wh.ca))
        socks = slow_connections(wh.port, SLOW, tls_ctx=ctx)
        try:
            with HealthWatch(wh) as watch:
                for _ in range(3):
                    trickle(socks)
                    # a fresh client (new TLS handshake) and a keep-alive one both get answers
                    assert wh.request("POST", "/validate", admission_review("16Gi"), timeout=5)[0] == 200
                    _legit_admissions(wh, 20)
                    time.sleep(1)
            assert not watch.failures and watch.ok > 0, watch.failures[:5]
            # the server ends connections that never finish their request (handshake 5 s, headers 10 s)
            deadline = time.monotonic() + 30
            while trickle(socks) and time.monotonic() < deadline:
                time.sleep(1)
            assert trickle(socks) == 0
        finally:
            for s in socks:
                s.close()
        assert wh.alive()
        _legit_admissions(wh, 10)
        assert wh.rss_kib <= rss_before * 1.2, (rss_before, wh.rss_kib)


def test_connection_cap_sheds_the_oldest_idle_connection_first(tmp_path: Path) -> None:
    """Past max_connections, the connection stuck (or idle) longest is closed; a new client gets in."""
    certs = generate_certs(tmp_path / "tls")
    from hcs.httpserve import CertStore

    svc = HttpService("127.0.0.1", 0, lambda req: Reply(200, b'{"ok": true}'),
                      certs=CertStore(str(certs.cert), str(certs.key)),
                      limits=Limits(max_connections=32, header_timeout_s=30, handshake_timeout_s=30))
    svc.start()
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    socks = slow_connections(svc.port, 64, tls_ctx=ctx)
    try:
        time.sleep(0.5)
        assert svc.stats.open <= 32 and svc.stats.shed >= 32
        oldest_closed = socks[0]
        with contextlib.suppress(OSError):
            oldest_closed.settimeout(2)
            assert oldest_closed.recv(10) == b""  # shed: the server closed it
        d = Daemon(proc=None, port=svc.port, ca=certs.ca, log=tmp_path / "x")  # type: ignore[arg-type]
        for _ in range(5):
            assert d.request("GET", "/anything", timeout=5)[0] == 200
    finally:
        for s in socks:
            s.close()
        svc.stop()


def test_webhook_refuses_huge_negative_length_and_deep_bodies(tmp_path: Path) -> None:
    with webhook_process(tmp_path) as wh:
        rss_before = wh.rss_kib
        # 50 MiB body: refused from its Content-Length, never buffered
        head = (b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % (50 * 2**20))
        assert _status(_raw_request(wh, head, b"{" * 65536)) == 413
        # Content-Length: -1 (and other non-numbers)
        for bad in (b"-1", b"abc", b"1 2", b"99999999999999999999999"):
            head = b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: " + bad + b"\r\n\r\n"
            assert _status(_raw_request(wh, head, b"{}")) in (400, 413), bad
        # 100k-deep JSON array
        deep = b"[" * 100_000 + b"]" * 100_000
        status, body = wh.request("POST", "/validate", deep, timeout=10)
        assert status == 400 and b"deeper" in body
        # chunked 50 MiB without Content-Length is cut off at the cap too
        head = b"POST /validate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n" % (1 << 20) + b"x" * (1 << 20) + b"\r\n"
        answer = _raw_request(wh, head, chunk * 5)
        assert _status(answer) == 413
        assert wh.alive() and wh.healthz()
        _legit_admissions(wh, 10)
        assert wh.rss_kib <= rss_before * 1.2, (rss_before, wh.rss_kib)


def test_extender_refuses_huge_negative_length_deep_bodies_and_slow_clients(tmp_path: Path) -> None:
    with extender_process(tmp_path) as ext:
        cert = ext.client_cert
        rss_before = ext.rss_kib
        head = (b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % (50 * 2**20))
        assert _status(_raw_request(ext, head, b"{" * 65536, cert)) == 413
        for bad in (b"-1", b"abc"):
            head = b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Length: " + bad + b"\r\n\r\n"
            assert _status(_raw_request(ext, head, b"{}", cert)) == 400, bad
        deep = b"[" * 100_000 + b"]" * 100_000
        status, body = ext.request("POST", "/scheduler/filter", deep, cert=cert, timeout=10)
        assert status == 400 and b"nested too deeply" in body
        ctx = ext.context(cert)
        socks = slow_connections(ext.port, SLOW, tls_ctx=ctx)
        try:
            with HealthWatch(ext) as watch:
                for _ in range(3):
                    trickle(socks)
                    status, body = ext.request("POST", "/scheduler/filter", extender_filter_args("16Gi"), cert=cert)
                    assert status == 200 and json.loads(body)["NodeNames"] == ["big"]
                    time.sleep(1)
            assert not watch.failures and watch.ok > 0, watch.failures[:5]
        finally:
            for s in socks:
                s.close()
        assert ext.alive()
        assert ext.rss_kib <= rss_before * 1.2, (rss_before, ext.rss_kib)
