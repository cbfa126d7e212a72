"""Admission latency of ``hcs webhook`` at a fixed request rate; prints one JSON object.

Starts ``hcs webhook`` as its own process (HTTPS on loopback, self-signed ECDSA certificate,
device-plugin mode, fixed island size so no cluster is needed), then sends AdmissionReviews open-loop
at ``--rate`` requests/s for ``--duration`` s over a few keep-alive TLS connections, as the API server
does: half ``/mutate``, half ``/validate``, pods with ``ai.compute`` requests (a tenth of them denied).

``p50_ms``/``p99_ms`` are measured per request from sending it to the last byte of the answer (what
the API server observes); ``*_from_due_ms`` count from the moment the request was due in the open-loop
schedule, so client-side queueing (a stalled server, or this client starved of CPU) is not hidden.
``server_p99_ms`` comes from the webhook's own histogram (bucket upper bound);
``server_cpu_ms_per_review`` is the webhook's CPU time per review, which does not depend on how busy
the machine is. ``rss_mib`` is the webhook process's peak RSS. On a shared machine, ``loadavg_1m``
says how busy it was: with more runnable tasks than cores, p99 measures the scheduler, not the webhook.

``slowloris_p99_ms``: the same load (``--slowloris-duration`` s) while an attacker holds ``--slow``
(512) slow connections: half finish the TLS handshake and send one header byte, half send a few
handshake bytes; each gets one more byte every 2 s and is reopened as soon as the webhook closes it
(issue 16, attack 4). ``slow_held_avg`` is how many the attacker held on average,
``slow_reopened`` how often the webhook cut one off (header/handshake timeouts, the connection cap).

    .venv/bin/python bench/webhook.py [--rate 200] [--duration 30] [--slow 512] [--slowloris-duration 15]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hcs.webhook.certs import generate_certs

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_review(i: int) -> tuple[str, bytes]:
    vram = "96Gi" if i % 10 == 9 else f"{(i % 8 + 1) * 4}Gi"  # 96Gi > the 80Gi island: denied
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"bench-{i}", "namespace": "bench",
                     "annotations": {"hcs.io/vendor": "nvidia,ascend", "hcs.io/topology-preference": "high-bandwidth"}},
        "spec": {"containers": [
            {"name": "main", "image": "pytorch/pytorch:2.4", "resources": {
                "requests": {"ai.compute/vram": vram, "ai.compute/tflops-fp16": "50", "cpu": "1", "memory": "1Gi"}}},
            {"name": "sidecar", "image": "busybox", "resources": {"requests": {"cpu": "10m"}}},
        ]},
    }
    endpoint = "mutate" if i % 2 == 0 else "validate"
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                          "resource": {"group": "", "version": "v1", "resource": "pods"},
                          "operation": "CREATE", "namespace": "bench", "object": pod, "dryRun": False}}
    return endpoint, json.dumps(review).encode()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def server_p99_ms(port: int, ctx: ssl.SSLContext) -> float | None:
    """p99 upper bound from the webhook's hcs_webhook_request_duration_seconds histogram (all endpoints)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("hcs_webhook_request_duration_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    if not buckets:
        return None
    total = buckets[float("inf")]
    for bound in sorted(buckets):
        if buckets[bound] >= 0.99 * total:
            return None if bound == float("inf") else round(bound * 1000, 3)
    return None


class SlowAttacker:
    """Holds ``n`` slow connections open, reopening each one the webhook closes (a slowloris client)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, n: int) -> None:
        self.port, self.ctx, self.n = port, ctx, n
        self.socks: list[socket.socket | None] = [None] * n
        self.reopened = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> socket.socket | None:
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            if i % 2 == 0:
                tls = self.ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                tls.sendall(b"P")
                return tls
            raw.sendall(b"\x16\x03\x01")  # the start of a TLS record: the handshake never completes
            return raw
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            for i in range(self.n):
                if self._stop.is_set():
                    return
                s = self.socks[i]
                if s is not None:
                    try:
                        s.sendall(b"O")
                        continue
                    except OSError:
                        s.close()
                        self.reopened += 1
                self.socks[i] = self._open(i)
            self.samples.append(sum(1 for s in self.socks if s is not None))
            self._stop.wait(2.0)

    def start(self) -> None:
        self._thread.start()

    def wait_full(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.samples and time.monotonic() < deadline:
            time.sleep(0.1)

    def held_avg(self) -> float:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for s in self.socks:
            if s is not None:
                s.close()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    ap.add_argument("--connections", type=int, default=4, help="keep-alive TLS connections (default 4)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    ap.add_argument("--server", choices=("hcs", "uvicorn"), default="hcs",
                    help="hcs: `hcs webhook` (default); uvicorn: the same admission logic behind uvicorn "
                         "(bench/uvicorn_webhook.py, for the comparison in docs/architecture.md)")
    ap.add_argument("--repo", default=str(REPO),
                    help="run `hcs webhook` from this checkout (its .venv), e.g. an older commit's worktree to "
                         "compare servers; default: this one")
    ap.add_argument("--slow", type=int, default=512, help="slow connections held for slowloris_p99_ms (0: skip)")
    ap.add_argument("--slowloris-duration", type=float, default=15.0,
                    help="seconds of load while the slow connections are held (default 15)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hcs-bench-webhook-"))
    certs = generate_certs(tmp)
    port = free_port()
    cfg = tmp / "config.yaml"
    cfg.write_text(json.dumps({"webhook": {"largestIsland": "80Gi"}}))
    env = {**os.environ, "HCS_LOG_LEVEL": "warning"}
    repo = Path(args.repo).resolve()
    python = str(repo / ".venv" / "bin" / "python") if (repo / ".venv" / "bin" / "python").exists() else sys.executable
    tls_args = ["--listen", f"127.0.0.1:{port}", "--cert-file", str(certs.cert), "--key-file", str(certs.key)]
    if args.server == "uvicorn":
        cmd = [sys.executable, str(REPO / "bench" / "uvicorn_webhook.py"), "--config", str(cfg), *tls_args]
    else:
        cmd = [python, "-m", "hcs.cli", "webhook", "--no-kube", "--config", str(cfg), *tls_args]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    c.close()
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                print(json.dumps({"error": f"webhook did not start: {err[-2000:]}"}))
                return 1
            time.sleep(0.2)

        bodies = [make_review(i) for i in range(1000)]

        def run_load(duration: float, warmup: float) -> tuple[list[float], list[float], list[str], float, int]:
            """Open-loop load; (ms from send, ms from due, errors, elapsed s, requests sent)."""
            work: queue.Queue[tuple[float, int] | None] = queue.Queue()
            latencies: list[tuple[float, float, float]] = []  # (due time, seconds from due, seconds from send)
            errors: list[str] = []
            lock = threading.Lock()

            def worker() -> None:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
                while True:
                    item = work.get()
                    if item is None:
                        break
                    due, i = item
                    if time.perf_counter() > hard_deadline:  # a stalled server: stop, count the rest as errors
                        with lock:
                            errors.append("not sent: the webhook stalled past the run's end")
                        continue
                    endpoint, body = bodies[i % len(bodies)]
                    sent = time.perf_counter()
                    try:
                        conn.request("POST", f"/{endpoint}", body=body, headers={"Content-Type": "application/json"})
                        resp = conn.getresponse()
                        data = resp.read()
                        done = time.perf_counter()
                        ok = resp.status == 200 and b'"uid"' in data
                    except (OSError, http.client.HTTPException) as exc:
                        done, ok = time.perf_counter(), False
                        data = str(exc).encode()
                        conn.close()
                        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
                    with lock:
                        latencies.append((due, done - due, done - sent))
                        if not ok:
                            errors.append(data[:200].decode(errors="replace"))
                conn.close()

            hard_deadline = float("inf")
            threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.connections)]
            for t in threads:
                t.start()
            interval = 1.0 / args.rate
            start = time.perf_counter()
            hard_deadline = start + warmup + duration + 15.0
            total = int((warmup + duration) * args.rate)
            for i in range(total):
                due = start + i * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                work.put((due, i))
            for _ in threads:
                work.put(None)
            for t in threads:
                t.join()
            measured = [(d, s) for due, d, s in latencies if due >= start + warmup]
            elapsed = time.perf_counter() - start
            return ([s * 1000 for _, s in measured], [d * 1000 for d, _ in measured], errors, elapsed,
                    len(latencies))

        cpu_before = cpu_seconds(proc.pid)
        ms, ms_due, errors, elapsed, sent_total = run_load(args.duration, args.warmup)
        server_cpu = cpu_seconds(proc.pid) - cpu_before
        server_p99 = server_p99_ms(port, ctx)
        rss = peak_rss_mib(proc.pid)
        slow: dict[str, Any] = {}
        if args.slow > 0:
            attacker = SlowAttacker(port, ctx, args.slow)
            attacker.start()
            try:
                attacker.wait_full(timeout=60)
                s_ms, _, s_errors, _, _ = run_load(args.slowloris_duration, 1.0)
            finally:
                attacker.stop()
            slow = {"slowloris_p99_ms": round(percentile(s_ms, 99), 3),
                    "slowloris_p50_ms": round(percentile(s_ms, 50), 3),
                    "slowloris_errors": len(s_errors), "slow_connections": args.slow,
                    "slow_held_avg": attacker.held_avg(), "slow_reopened": attacker.reopened,
                    "slowloris_rss_mib": peak_rss_mib(proc.pid)}
            errors += s_errors
        result: dict[str, Any] = {
            "p50_ms": round(percentile(ms, 50), 3),
            "p99_ms": round(percentile(ms, 99), 3),
            "p999_ms": round(percentile(ms, 99.9), 3),
            "max_ms": round(max(ms), 3) if ms else None,
            "p50_from_due_ms": round(percentile(ms_due, 50), 3),
            "p99_from_due_ms": round(percentile(ms_due, 99), 3),
            "server_p99_ms": server_p99,
            # CPU the webhook process spent per review (TLS, HTTP, JSON, policy): independent of machine load
            "server_cpu_ms_per_review": round(server_cpu * 1000 / max(1, sent_total), 3),
            "rss_mib": rss,
            "rate_rps": args.rate,
            "achieved_rps": round(sent_total / elapsed, 1),
            "duration_s": args.duration,
            "requests": len(ms),
            "errors": len(errors),
            "connections": args.connections,
            "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "server": args.server if args.repo == str(REPO) else f"{args.server}@{args.repo}",
            **slow,
        }
        print(json.dumps(result))
        return 0 if not errors else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
