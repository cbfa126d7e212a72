"""The real HTTPS server on loopback: AdmissionReview round trips, bad input, metrics, certificates."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import time
from pathlib import Path

from webhook_helpers import Client, ServerFactory, hb_pod, pod, review

from hcs.webhook.capacity import StaticCapacity
from hcs.webhook.certs import CertPaths, generate_certs
from hcs.webhook.config import Mode, WebhookConfig

GI = 2**30


def test_mutate_and_validate_round_trip(serve: ServerFactory) -> None:
    _, client = serve(capacity=StaticCapacity(80 * GI))
    out, resp = client.mutated(hb_pod({"ai.compute/vram": "16Gi"}))
    assert resp["allowed"] is True and resp["patchType"] == "JSONPatch"
    assert out["spec"]["schedulerName"] == "hcs-scheduler"
    assert out["spec"]["containers"][0]["resources"]["limits"]["ai.compute/slot"] == "1"
    ok = client.admit("validate", review(out))
    assert ok["allowed"] is True
    denied = client.admit("validate", review(hb_pod({"ai.compute/vram": "96Gi"}, name="big")))
    assert denied["allowed"] is False and denied["status"]["code"] == 403
    assert denied["status"]["message"].startswith("Pod default/big: spec.containers[0]")
    assert "largest interconnect island in the cluster (80Gi)" in denied["status"]["message"]


def test_non_accelerator_and_unknown_kinds_pass_untouched(serve: ServerFactory) -> None:
    _, client = serve()
    resp = client.admit("mutate", review(pod({"cpu": "1"})))
    assert resp == {"uid": resp["uid"], "allowed": True}
    resp = client.admit("validate", review({"spec": {"containers": []}}, kind="Widget"))
    assert resp == {"uid": resp["uid"], "allowed": True}
    resp = client.admit("validate", review(None, operation="DELETE"))
    assert resp["allowed"] is True


def test_pod_updates_are_not_revalidated(serve: ServerFactory) -> None:
    _, client = serve(capacity=StaticCapacity(8 * GI))
    resp = client.admit("validate", review(hb_pod({"ai.compute/vram": "16Gi"}), operation="UPDATE"))
    assert resp["allowed"] is True
    dep = {"spec": {"template": hb_pod({"ai.compute/vram": "16Gi"})}}
    assert client.admit("validate", review(dep, kind="Deployment", operation="UPDATE"))["allowed"] is False


def test_malformed_reviews_get_clear_400s(serve: ServerFactory) -> None:
    _, client = serve()
    cases = [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(),
         "admissionReviewVersions: [v1]"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}).encode(),
         "request.uid is missing"),
        (b"[" * 100000 + b"]" * 100000, "nests deeper"),
        (b"\xff\xfe\x00garbage", "not JSON"),
    ]
    for body, needle in cases:
        status, text = client.raw("POST", "/mutate", body, {"Content-Type": "application/json"})
        assert status == 400, (body[:40], text)
        assert needle in text.decode(), text
    # the server is still answering on the same connection
    assert client.admit("validate", review(pod({"ai.compute/vram": "1Gi"})))["allowed"] is True


def test_deep_object_inside_a_valid_review_is_denied(serve: ServerFactory) -> None:
    _, client = serve()
    obj = pod({"ai.compute/vram": "1Gi"})
    nested: dict[str, object] = {}
    node = nested
    for _ in range(150):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    obj["metadata"]["labels"] = nested
    resp = client.admit("mutate", review(obj))
    assert resp["allowed"] is False and "nests deeper than 100 levels" in resp["status"]["message"]


def test_huge_body_is_refused_without_reading_it(serve: ServerFactory) -> None:
    _, client = serve(WebhookConfig(max_body_bytes=64 * 1024))
    status, text = client.raw("POST", "/validate", b"x" * (65 * 1024), {"Content-Type": "application/json"})
    assert status == 413 and b"webhook.maxBodyBytes" in text
    fresh = Client(client.port, client_ca(client))
    assert fresh.admit("validate", review(pod({"ai.compute/vram": "1Gi"})))["allowed"] is True
    fresh.close()


def client_ca(client: Client) -> Path:
    return Path(client.ca_path)


def test_health_metrics_and_404(serve: ServerFactory) -> None:
    _, client = serve()
    client.admit("validate", review(pod({"ai.compute/vram": "0"})))
    client.admit("mutate", review(pod({"ai.compute/vram": "1Gi"})))
    assert client.raw("GET", "/healthz") == (200, b"ok\n")
    status, body = client.raw("GET", "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    status, body = client.raw("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'hcs_webhook_requests_total{endpoint="validate",kind="Pod",result="denied"} 1.0' in text
    assert 'hcs_webhook_requests_total{endpoint="mutate",kind="Pod",result="patched"} 1.0' in text
    assert "hcs_webhook_request_duration_seconds_bucket" in text
    assert client.raw("GET", "/nope")[0] == 404
    assert client.raw("POST", "/nope", b"{}")[0] == 404


def test_garbage_and_plaintext_connections_do_not_hurt(serve: ServerFactory) -> None:
    server, client = serve()
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b""):
        # the server closes (or resets) the failed handshake
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s, contextlib.suppress(OSError):
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.recv(100)
    assert client.admit("validate", review(pod({"ai.compute/vram": "1Gi"})))["allowed"] is True
    deadline = time.monotonic() + 5
    while True:  # the last failed handshake may still be in its thread
        _, body = client.raw("GET", "/metrics")
        if "hcs_webhook_tls_handshake_errors_total 3.0" in body.decode():
            break
        assert time.monotonic() < deadline, body.decode()
        time.sleep(0.05)


def _serial(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cert = tls.getpeercert()
    return str(cert["serialNumber"])


def test_certificate_is_reloaded_when_files_change(serve: ServerFactory, certs: CertPaths, tmp_path: Path) -> None:
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(certs.cert, live_cert)
    shutil.copy(certs.key, live_key)
    server, client = serve(cert=live_cert, key=live_key, cert_check_s=0.1)
    before = _serial(server.port, certs.ca)
    renewed = generate_certs(tmp_path / "new", name="renewed", ca=certs)
    # a half-written renewal (new cert, old key) must not replace the working pair
    shutil.copy(renewed.cert, live_cert)
    time.sleep(0.5)
    assert _serial(server.port, certs.ca) == before
    shutil.copy(renewed.key, live_key)
    deadline = time.monotonic() + 10
    while _serial(server.port, certs.ca) == before:
        assert time.monotonic() < deadline, "certificate was not reloaded"
        time.sleep(0.1)
    _, body = client.raw("GET", "/metrics")
    text = body.decode()
    assert 'hcs_webhook_cert_reloads_total{result="ok"} 1.0' in text
    assert 'hcs_webhook_cert_reloads_total{result="error"}' in text


def test_expired_certificate_is_reported_not_fatal(serve: ServerFactory, certs: CertPaths, tmp_path: Path) -> None:
    expired = generate_certs(tmp_path, name="expired", ca=certs, not_after="20210101000000Z")
    server, _ = serve(cert=expired.cert, key=expired.key)
    assert server.certs.expired
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        try:
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            raise AssertionError("an expired certificate was accepted")
        except ssl.SSLCertVerificationError as exc:
            assert "expired" in str(exc)
    # an operator (or probe) that does not verify sees why it is not ready
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=insecure, timeout=5)
    conn.request("GET", "/readyz")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 503 and body["certExpired"] is True and body["certNotAfter"] == 1609459200.0


def test_mutate_denies_invalid_pods_before_translating(serve: ServerFactory) -> None:
    _, client = serve(WebhookConfig(mode=Mode.DRA), capacity=StaticCapacity(80 * GI))
    resp = client.admit("mutate", review(hb_pod({"ai.compute/vram": "96Gi"}, name="big")))
    assert resp["allowed"] is False and "largest interconnect island" in resp["status"]["message"]
    assert "patch" not in resp


def test_dra_mode_without_api_access_says_so(serve: ServerFactory) -> None:
    _, client = serve(WebhookConfig(mode=Mode.DRA), capacity=StaticCapacity(80 * GI))
    resp = client.admit("mutate", review(pod({"ai.compute/vram": "16Gi"})))
    assert resp["allowed"] is False and "needs API-server access" in resp["status"]["message"]
    # a dry run creates nothing, so it can be answered
    out, resp = client.mutated(pod({"ai.compute/vram": "16Gi"}), dry_run=True)
    assert resp["allowed"] is True and out["spec"]["resourceClaims"][0]["name"] == "hcs-main"


def test_workload_templates_get_limits_equal_to_requests(serve: ServerFactory) -> None:
    _, client = serve(capacity=StaticCapacity(80 * GI))
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"template": hb_pod({"ai.compute/vram": "8192Mi", "cpu": "1"})}}
    out, resp = client.mutated(dep, kind="Deployment")
    res = out["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res == {"requests": {"ai.compute/vram": "8Gi", "cpu": "1"}, "limits": {"ai.compute/vram": "8Gi"}}
    assert "schedulerName" not in out["spec"]["template"]["spec"]  # pods get it when they are created
    again, resp = client.mutated(out, kind="Deployment")
    assert "patch" not in resp and again == out
    cron = {"spec": {"jobTemplate": {"spec": {"template": hb_pod({"ai.compute/vram": "1Ti"})}}}}
    resp = client.admit("mutate", review(cron, kind="CronJob"))
    assert resp["allowed"] is False and "spec.containers[0]" in resp["status"]["message"]
