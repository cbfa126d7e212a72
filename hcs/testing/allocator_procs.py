"""Real allocator daemons for tests and benches: start ``hcs allocator`` processes, kill them, cut their
connections to the API server (a TCP proxy in between), read their state over gRPC."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml

from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`cut` drops every open connection (watches break,
    calls in flight fail), as a network blip or an API server restart does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._srv.getsockname()[1])
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = False
        self.cuts = 0
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                if self._stop:
                    return
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns -= {a, b}

    def cut(self) -> int:
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.cuts += 1
        return len(conns) // 2

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._srv.close()
        self.cut()


def kubeconfig_via(kubeconfig: Path, port: int, out: Path) -> Path:
    """A copy of ``kubeconfig`` whose server is https://127.0.0.1:<port> (the API server's certificate
    names 127.0.0.1, so TLS still verifies)."""
    cfg = yaml.safe_load(kubeconfig.read_text())
    for c in cfg.get("clusters") or []:
        c["cluster"]["server"] = f"https://127.0.0.1:{port}"
    out.write_text(yaml.safe_dump(cfg))
    return out


def server_of(kubeconfig: Path) -> tuple[str, int]:
    cfg = yaml.safe_load(kubeconfig.read_text())
    url = cfg["clusters"][0]["cluster"]["server"]
    hostport = url.split("://", 1)[1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    return host, int(port)


class Daemon:
    """One ``hcs allocator`` process (extender on HTTP, gRPC on a unix socket)."""

    def __init__(self, kubeconfig: Path, tmp: Path, identity: str, lease_name: str, *, lease_seconds: int = 10,
                 namespace: str = "default") -> None:
        self.kubeconfig = kubeconfig
        self.tmp = tmp
        self.identity = identity
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sock = tmp / f"alloc-{identity}.sock"
        self.config = tmp / f"alloc-{identity}.yaml"
        self.config.write_text(f"allocator:\n  namespace: {namespace}\n  leaseName: {lease_name}\n"
                               f"  leaseSeconds: {lease_seconds}\n  syncIntervalSeconds: 1\n")
        self.log = tmp / f"alloc-{identity}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hcs.cli", "allocator", "--config", str(self.config), "--kubeconfig",
                 str(self.kubeconfig), "--grpc-address", f"unix://{self.sock}", "--extender-address",
                 f"127.0.0.1:{self.port}", "--identity", self.identity,
                 # the harness plays kube-scheduler over plain HTTP/gRPC; caller auth: tests/security
                 "--insecure-dev"],
                stdout=logf, stderr=subprocess.STDOUT, cwd=str(REPO))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until /readyz says leader + synced; raises TimeoutError (with the log's tail)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"allocator {self.identity} exited ({self.proc.returncode}):\n{self.tail()}")
            if self.ready():
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"allocator {self.identity} not ready within {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def post(self, verb: str, body: Any, timeout: float = 30) -> Any:
        req = urllib.request.Request(f"{self.url}/{verb}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def assignments(self, nodes: list[str]) -> dict[str, tuple[str, tuple[tuple[str, str, int], ...]]]:
        """uid → (node, ((container, device uuid, vram bytes), ...)) from the daemon's own state (gRPC)."""
        out: dict[str, tuple[str, tuple[tuple[str, str, int], ...]]] = {}
        with grpc.insecure_channel(f"unix://{self.sock}") as ch:
            stub = pbg.AllocatorStub(ch)  # type: ignore[no-untyped-call]
            for node in nodes:
                for a in stub.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node=node), timeout=30).assignments:
                    out[a.pod.uid] = (a.node, tuple(sorted((c.container, d.uuid, d.vram_bytes)
                                                          for c in a.containers for d in c.devices)))
        return out
