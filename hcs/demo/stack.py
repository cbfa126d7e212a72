"""The demo's simulated cluster: per node a kubelet simulator and a real ``hcs node`` process on its own
simulated driver profile, plus the allocator's gRPC service — the production code paths, wired
without an API server (the demo hands each node's ComputeNode spec to the allocator directly).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hcs.allocator.inventory import parse_computenode
from hcs.allocator.service import AllocatorService, serve
from hcs.allocator.state import AllocatorState
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as al_grpc
from hcs.errors import HcsError
from hcs.testing.kubelet_sim import KubeletSim

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sim_env(profile: Path, faults: Path) -> dict[str, str]:
    env = dict(os.environ, HCS_SIM_PROFILE=str(profile), HCS_SIM_FAULTS=str(faults))
    env.pop("HCS_DRIVER_PATH", None)
    return env


class DemoStack:
    """Start/stop everything; ``stub`` talks to the allocator; ``nodes`` hold the kubelet simulators."""

    def __init__(self, workdir: Path, nodes: tuple[tuple[str, str], ...] = DEFAULT_NODES) -> None:
        self.workdir = workdir
        self.nodes = [DemoNode(name, PROFILES / profile, workdir / name) for name, profile in nodes]
        self.state = AllocatorState(seed=0)
        self.server: grpc.Server | None = None
        self.channel: grpc.Channel | None = None
        self.stub: Any = None
        self.address = ""

    def start(self, progress: Any = None) -> DemoStack:
        say = progress or (lambda _msg: None)
        self.address = f"127.0.0.1:{_free_port()}"
        self.server = serve(AllocatorService(self.state), self.address)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = al_grpc.AllocatorStub(self.channel)  # type: ignore[no-untyped-call]
        say(f"allocator gRPC API on {self.address}")
        for node in self.nodes:
            self._start_node(node)
            say(f"{node.name}: node agent pid {node.agent.pid if node.agent else '?'} on {node.profile.name}")
        for node in self.nodes:
            assert node.kubelet is not None
            conn = node.kubelet.wait_registered(RESOURCE, timeout_s=60)
            self.state.set_node(parse_computenode(node.computenode))
            say(f"{node.name}: device plugin registered, {len(conn.devices)} slots advertised")
        return self

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
        cmd = [sys.executable, "-m", "hcs.cli", "--log-level", "warning", "node", "--no-api-server",
               "--node-name", node.name, "--assignment-source", "allocator", "--allocator-address", self.address,
               "--device-plugin-dir", str(node.dir / "device-plugins"),
               "--pod-resources-socket", str(node.dir / "pod-resources.sock"),
               "--state-dir", str(node.dir / "state"), "--quota-dir", str(node.dir / "quota"),
               "--shm-dir", str(node.dir / "shm"), "--cdi-dir", str(node.dir / "cdi"),
               "--interceptor-dir", str(interceptor) if interceptor.exists() else "", "--metrics-port", "0"]
        log_file = (node.dir / "agent.log").open("wb")
        node.agent = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def agent_log(self, node: str) -> str:
        path = self.workdir / node / "agent.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def node(self, name: str) -> DemoNode:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        for node in self.nodes:
            if node.agent is not None and node.agent.poll() is None:
                node.agent.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in self.nodes:
            if node.agent is not None:
                try:
                    node.agent.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    node.agent.kill()
                    node.agent.wait()
            if node.kubelet is not None:
                node.kubelet.stop()
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            self.server.stop(grace=1).wait()
