"""``hcs webhook`` as a process: start-up errors, manifests, serving and a clean stop on SIGTERM."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import yaml

from hcs.webhook.certs import CertPaths
from hcs.webhook.manifests import POD_ASKS_ACCELERATOR


def hcs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hcs.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_missing_certificate_is_a_clear_error(tmp_path: Path) -> None:
    out = hcs("webhook", "--no-kube")
    assert out.returncode == 1 and "serving certificate is required" in out.stderr
    out = hcs("webhook", "--no-kube", "--cert-file", str(tmp_path / "x.crt"), "--key-file", str(tmp_path / "x.key"))
    assert out.returncode == 1 and "file not found" in out.stderr and "x.crt" in out.stderr
    bad = tmp_path / "c.yaml"
    bad.write_text("webhook: {mode: gpu}\n")
    out = hcs("webhook", "--config", str(bad))
    assert out.returncode == 1 and "webhook.mode: 'gpu' is not one of" in out.stderr


def test_print_configurations(certs: CertPaths) -> None:
    out = hcs("webhook", "--print-configurations", "https://10.0.0.1:9443", "--ca-file", str(certs.ca),
              "--failure-policy", "Ignore")
    assert out.returncode == 0, out.stderr
    mutating, validating = yaml.safe_load_all(out.stdout)
    hook = mutating["webhooks"][0]
    assert hook["clientConfig"]["url"] == "https://10.0.0.1:9443/mutate"
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["matchConditions"][0]["expression"] == POD_ASKS_ACCELERATOR
    assert validating["webhooks"][0]["clientConfig"]["url"].endswith("/validate")


def test_serves_and_stops_on_sigterm(certs: CertPaths) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hcs.cli", "webhook", "--no-kube", "--listen",
                             f"127.0.0.1:{port}", "--cert-file", str(certs.cert), "--key-file", str(certs.key)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
                conn.request("GET", "/readyz")
                resp = conn.getresponse()
                assert resp.status == 200 and json.loads(resp.read())["ready"] is True
                conn.close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
