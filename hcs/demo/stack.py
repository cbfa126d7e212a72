"""The demo's simulated cluster: per node a kubelet simulator and a real ``hcs node`` process on its own
simulated driver profile, the allocator's gRPC service, and a real ``hcs webhook`` process over TLS —
the production code paths, wired without an API server (the demo hands each node's ComputeNode spec
to the allocator directly, and the webhook asks the allocator for island capacity).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hcs.allocator.placement import PodDemand
from hcs.allocator.service import AllocatorService, serve
from hcs.allocator.state import AllocatorState
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as al_grpc
from hcs.cluster_inventory import parse_computenode
from hcs.devices.simhost import write_simulated_sysfs
from hcs.errors import HcsError
from hcs.kubeletsim.deviceplugin import KubeletSim
from hcs.webhook.certs import generate_certs

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "driver" / "profiles"
RESOURCE = "ai.compute/slot"

#: node name -> simulated profile: one node per vendor.
DEFAULT_NODES = (
    ("node-a100", "a100-80g-nvlink-8.json"),
    ("node-910b", "ascend-910b-hccs-8.json"),
    ("node-k100", "hygon-k100ai-xgmi-8.json"),
    ("node-mlu370", "mlu370-x8-mlulink-8.json"),
)

_SPEC_SCRIPT = """
import json
from hcs.devices.inventory import discover
from hcs.node.computenode import IslandInfo, build_spec
inv = discover()
islands = [IslandInfo(i.id, str(i.vendor), str(i.link_type), tuple(i.members), i.min_gbps) for i in inv.islands]
print(json.dumps({"metadata": {"name": NODE}, "spec": build_spec(NODE, inv.devices, islands)}))
"""


@dataclass
class DemoNode:
    name: str
    profile: Path
    dir: Path
    kubelet: KubeletSim | None = None
    agent: subprocess.Popen[bytes] | None = None
    computenode: dict[str, Any] = field(default_factory=dict)
    metrics_port: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sim_env(profile: Path, faults: Path) -> dict[str, str]:
    env = dict(os.environ, HCS_SIM_PROFILE=str(profile), HCS_SIM_FAULTS=str(faults))
    env.setdefault("HCS_HOST_SYSFS", str(write_simulated_sysfs(profile, faults.parent / "sysfs")))
    env.pop("HCS_DRIVER_PATH", None)
    return env


class DemoStack:
    """Start/stop everything; ``stub`` talks to the allocator; ``nodes`` hold the kubelet simulators.

    ``log_level`` is passed to every process it starts (their logs go to ``WORKDIR/<node>/agent.log``
    and ``WORKDIR/webhook/webhook.log``); ``demands`` lets ``hcs alloc explain demo/POD --allocator``
    find the demo's pods by name, as the real allocator finds them through the API server.
    """

    def __init__(self, workdir: Path, nodes: tuple[tuple[str, str], ...] = DEFAULT_NODES,
                 log_level: str = "info") -> None:
        self.workdir = workdir
        self.nodes = [DemoNode(name, PROFILES / profile, workdir / name) for name, profile in nodes]
        self.state = AllocatorState(seed=0)
        self.server: grpc.Server | None = None
        self.channel: grpc.Channel | None = None
        self.stub: Any = None
        self.address = ""
        self.log_level = log_level
        self.demands: dict[tuple[str, str], PodDemand] = {}
        self.webhook: subprocess.Popen[bytes] | None = None
        self.webhook_port = 0
        self.webhook_ca = ""
        self.webhook_skipped = ""

    def _resolve(self, uid: str, namespace: str, name: str) -> PodDemand | None:
        found = self.demands.get((namespace, name))
        if found is None and uid:
            found = next((d for d in self.demands.values() if d.pod.uid == uid), None)
        return found

    def start(self, progress: Any = None) -> DemoStack:
        say = progress or (lambda _msg: None)
        self.address = f"127.0.0.1:{_free_port()}"
        self.server = serve(AllocatorService(self.state, resolve_pod=self._resolve), self.address)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = al_grpc.AllocatorStub(self.channel)  # type: ignore[no-untyped-call]
        say(f"allocator gRPC API on {self.address}")
        for node in self.nodes:
            self._start_node(node)
            say(f"{node.name}: node agent pid {node.agent.pid if node.agent else '?'} on {node.profile.name}")
        try:
            self._start_webhook()
        except HcsError as exc:  # e.g. no openssl for its certificate: the rest of the demo still runs
            self.webhook_skipped = str(exc)
            say(f"admission webhook skipped: {exc}")
        for node in self.nodes:
            assert node.kubelet is not None
            conn = node.kubelet.wait_registered(RESOURCE, timeout_s=60)
            self.state.set_node(parse_computenode(node.computenode))
            say(f"{node.name}: device plugin registered, {len(conn.devices)} slots advertised")
        if self.webhook_skipped:
            return self
        self._wait_webhook()
        say(f"admission webhook (hcs webhook, TLS) on https://127.0.0.1:{self.webhook_port}, "
            "asking the allocator for island capacity")
        return self

    def _start_webhook(self) -> None:
        wdir = self.workdir / "webhook"
        certs = generate_certs(wdir)
        self.webhook_ca = str(certs.ca)
        self.webhook_port = _free_port()
        config = wdir / "webhook.yaml"
        config.write_text(json.dumps({"webhook": {"allocatorAddress": self.address}}))
        cmd = [sys.executable, "-m", "hcs.cli", "--log-level", self.log_level, "webhook", "--no-kube",
               "--listen", f"127.0.0.1:{self.webhook_port}", "--cert-file", str(certs.cert),
               "--key-file", str(certs.key), "--config", str(config)]
        with (wdir / "webhook.log").open("wb") as log_file:
            self.webhook = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)

    def _https(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=self.webhook_ca)
        conn = http.client.HTTPSConnection("127.0.0.1", self.webhook_port, context=ctx, timeout=10)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _wait_webhook(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._https("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            if self.webhook is None or self.webhook.poll() is not None or time.monotonic() > deadline:
                log_text = (self.workdir / "webhook" / "webhook.log").read_text(errors="replace")[-800:]
                raise HcsError(f"the demo's webhook did not start: {log_text.strip() or 'no output'}")
            time.sleep(0.2)

    def admission_review(self, pod: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """POST an AdmissionReview for ``pod`` to the webhook's /mutate; (response, decoded JSON patch)."""
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": {"uid": "demo-review-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                              "resource": {"group": "", "version": "v1", "resource": "pods"},
                              "namespace": pod["metadata"].get("namespace", "default"), "operation": "CREATE",
                              "userInfo": {"username": "demo"}, "object": pod}}
        status, body = self._https("POST", "/mutate", json.dumps(review).encode())
        if status != 200:
            raise HcsError(f"webhook /mutate answered HTTP {status}: {body[:300]!r}")
        response: dict[str, Any] = json.loads(body)["response"]
        patch = json.loads(base64.b64decode(response["patch"])) if response.get("patch") else []
        return response, patch

    def _start_node(self, node: DemoNode) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        faults = node.dir / "node.faults"
        faults.touch()
        env = _sim_env(node.profile, faults)
        out = subprocess.run([sys.executable, "-c", f"NODE = {node.name!r}\n" + _SPEC_SCRIPT], env=env,
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise HcsError(f"{node.name}: discovering {node.profile.name} failed: {out.stderr.strip()[-400:]}")
        node.computenode = json.loads(out.stdout)
        node.kubelet = KubeletSim(node.dir / "device-plugins", node.dir / "pod-resources.sock").start()
        interceptor = ROOT / "interceptor" / "build"
        node.metrics_port = _free_port()
        config = node.dir / "node.yaml"
        config.write_text(json.dumps({"node": {"metricsAddress": "127.0.0.1"}}))
        cmd = [sys.executable, "-m", "hcs.cli", "--log-level", self.log_level, "node", "--config", str(config),
               "--no-api-server",
               "--node-name", node.name, "--assignment-source", "allocator", "--allocator-address", self.address,
               "--device-plugin-dir", str(node.dir / "device-plugins"),
               "--pod-resources-socket", str(node.dir / "pod-resources.sock"),
               "--state-dir", str(node.dir / "state"), "--quota-dir", str(node.dir / "quota"),
               "--shm-dir", str(node.dir / "shm"), "--cdi-dir", str(node.dir / "cdi"),
               "--interceptor-dir", str(interceptor) if interceptor.exists() else "",
               "--metrics-port", str(node.metrics_port)]
        with (node.dir / "agent.log").open("wb") as log_file:
            node.agent = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def agent_log(self, node: str) -> str:
        path = self.workdir / node / "agent.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def node(self, name: str) -> DemoNode:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        procs = [n.agent for n in self.nodes if n.agent is not None] + ([self.webhook] if self.webhook else [])
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for node in self.nodes:
            if node.kubelet is not None:
                node.kubelet.stop()
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            self.server.stop(grace=1).wait()
