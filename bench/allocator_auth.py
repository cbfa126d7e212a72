"""Allocator decision latency through its gRPC API with caller authentication on vs off.

On the local cluster (e2e/cluster; start it first, this never builds it): the allocator service runs in
this process on a TCP loopback port, twice —

- ``off``: plaintext, no caller identity (what ``--insecure-dev`` serves);
- ``on``:  TLS (a serving certificate from hcs.webhook.certs) and :class:`KubeAuthorizer` against the
  real kube-apiserver: TokenReview (audience ``hcs-allocator``) + SubjectAccessReview, cached.

Callers hold real tokens from the TokenRequest API: a scheduler identity bound to the
``allocator.hcs.io`` admin rules (Reserve + Release = one placement decision and its undo) and a
pod-bound node-agent token (GetNodeAssignments, the node agent's per-Allocate call). Inventory:
``--nodes`` nodes of 8 x 80Gi devices. Rounds alternate off/on to spread machine noise over both.
Prints one JSON object with p50/p99 (ms) per call both ways and their ratios (target: on/off <= 1.10),
plus the first (uncached) authenticated call and the API calls made while timing (should be 0).

    .venv/bin/python bench/allocator_auth.py [--nodes 50] [--calls 2000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from hcs.allocator.auth import KubeAuthorizer, server_credentials
from hcs.allocator.service import AllocatorService, serve
from hcs.allocator.state import AllocatorState
from hcs.allocator_client import channel
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import DeviceInfo, NodeInventory
from hcs.kube import KubeError, KubeRest
from hcs.testing.cluster import cluster_layout, is_up
from hcs.webhook.certs import generate_certs

GI = 2**30
AUDIENCE = "hcs-allocator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def state_of(nodes: int) -> AllocatorState:
    st = AllocatorState()
    for n in range(nodes):
        st.set_node(NodeInventory(f"bench-node-{n}", tuple(
            DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{n}-{i}", i, 80 * GI, 312_000, f"nvl-{n}")
            for i in range(8))))
    return st


class Identities:
    """Namespace, ServiceAccounts, RBAC, a Node + pod for the node-agent token; removed by close()."""

    def __init__(self, rest: KubeRest, tmp: Path) -> None:
        self.rest, self.tmp = rest, tmp
        sfx = uuid.uuid4().hex[:6]
        self.ns, self.node = f"hcs-bench-auth-{sfx}", "bench-node-0"
        self.cleanup: list[str] = []
        self.role = f"hcs-bench-auth-{sfx}"
        self._post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}},
                   f"/api/v1/namespaces/{self.ns}")
        for sa in ("hcs-node-agent", "hcs-scheduler"):
            rest.request("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts",
                         body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        for role, sa, rules in (
                ("node", "hcs-node-agent", [{"apiGroups": ["allocator.hcs.io"], "resources": ["nodeassignments"],
                                             "verbs": ["get", "update", "delete"]}]),
                ("admin", "hcs-scheduler", [{"apiGroups": ["allocator.hcs.io"],
                                             "resources": ["assignments", "nodeassignments", "placements",
                                                           "capacity"],
                                             "verbs": ["get", "create", "update", "delete"]}])):
            name = f"{self.role}-{role}"
            self._post(f"{rbac}/clusterroles", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                                "metadata": {"name": name}, "rules": rules},
                       f"{rbac}/clusterroles/{name}")
            self._post(f"{rbac}/clusterrolebindings", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": self.ns}]},
                f"{rbac}/clusterrolebindings/{name}")
        with contextlib.suppress(KubeError):
            self._post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node}},
                       f"/api/v1/nodes/{self.node}")
        self.agent_pod = rest.request("POST", f"/api/v1/namespaces/{self.ns}/pods", body={
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent"},
            "spec": {"serviceAccountName": "hcs-node-agent", "nodeName": self.node,
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "busybox"}]}})

    def _post(self, path: str, body: dict[str, Any], delete: str) -> None:
        self.rest.request("POST", path, body=body)
        self.cleanup.append(delete)

    def token(self, sa: str, pod: dict[str, Any] | None = None) -> Path:
        spec: dict[str, Any] = {"audiences": [AUDIENCE], "expirationSeconds": 3600}
        if pod is not None:
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                      "uid": pod["metadata"]["uid"]}
        out = self.rest.request("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        path = self.tmp / f"{sa}.token"
        path.write_text(out["status"]["token"])
        return path

    def close(self) -> None:
        for path in reversed(self.cleanup):
            with contextlib.suppress(KubeError):
                self.rest.request("DELETE", path)


def quantiles(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(qs[49] * 1e3, 4), "p99_ms": round(qs[98] * 1e3, 4)}


def time_calls(fn: Callable[[int], None], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--calls", type=int, default=2000, help="calls per method per round and mode")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if not is_up():
        print(json.dumps({"error": "local cluster not up; run e2e/cluster/up first"}))
        return 2
    from kubernetes import config

    api = config.new_client_from_config(config_file=cluster_layout()["kubeconfig"])
    rest = KubeRest(api)
    tmp = Path(tempfile.mkdtemp(prefix="hcs-bench-auth-"))
    ids = Identities(rest, tmp)
    try:
        certs = generate_certs(tmp / "tls", ("127.0.0.1",), name="allocator")
        auth = KubeAuthorizer(rest, audience=AUDIENCE,
                              node_agent_users=[f"system:serviceaccount:{ids.ns}:hcs-node-agent"])
        servers, stubs = [], {}
        for mode in ("off", "on"):
            port = free_port()
            addr = f"127.0.0.1:{port}"
            svc = AllocatorService(state_of(args.nodes), auth=auth if mode == "on" else None)
            creds = server_credentials(addr, str(certs.cert), str(certs.key)) if mode == "on" else None
            servers.append(serve(svc, addr, credentials=creds))
            if mode == "on":
                admin = channel(addr, token_file=str(ids.token("hcs-scheduler")), ca_file=str(certs.ca))
                agent = channel(addr, token_file=str(ids.token("hcs-node-agent", ids.agent_pod)), ca_file=str(certs.ca))
            else:
                admin = agent = grpc.insecure_channel(addr)
            stubs[mode] = (pbg.AllocatorStub(admin), pbg.AllocatorStub(agent))  # type: ignore[no-untyped-call]

        def reserve_release(stub: Any) -> Callable[[int], None]:
            def call(i: int) -> None:
                uid = f"bench-{i}"
                stub.Reserve(pb.ReserveRequest(request=pb.PodRequest(
                    pod=pb.PodRef(uid=uid, namespace="bench", name=uid, creation_time_unix_ms=i),
                    containers=[pb.ContainerRequest(container="main", vram_bytes=16 * GI)])), timeout=10)
                stub.Release(pb.ReleaseRequest(pod_uid=uid), timeout=10)
            return call

        def node_assignments(stub: Any) -> Callable[[int], None]:
            def call(_: int) -> None:
                stub.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node=ids.node), timeout=10)
            return call

        t = time.perf_counter()
        node_assignments(stubs["on"][1])(0)  # first authenticated call: TokenReview + SubjectAccessReview
        cold_ms = (time.perf_counter() - t) * 1e3
        for mode in ("off", "on"):  # warm both (channels, caches, the Reserve verb's access review)
            time_calls(reserve_release(stubs[mode][0]), 50)
            time_calls(node_assignments(stubs[mode][1]), 50)
        reviews_before = auth.reviews
        samples: dict[str, dict[str, list[float]]] = {m: {"reserve_release": [], "get_node_assignments": []}
                                                     for m in ("off", "on")}
        for r in range(args.rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                samples[mode]["reserve_release"] += time_calls(reserve_release(stubs[mode][0]), args.calls)
                samples[mode]["get_node_assignments"] += time_calls(node_assignments(stubs[mode][1]), args.calls)
        out: dict[str, Any] = {"nodes": args.nodes, "devices": args.nodes * 8,
                               "calls_per_mode": args.calls * args.rounds}
        for method in ("reserve_release", "get_node_assignments"):
            off, on = quantiles(samples["off"][method]), quantiles(samples["on"][method])
            out[method] = {"auth_off": off, "auth_on": on,
                           "p50_ratio": round(on["p50_ms"] / off["p50_ms"], 3),
                           "p99_ratio": round(on["p99_ms"] / off["p99_ms"], 3)}
        out["first_authenticated_call_ms"] = round(cold_ms, 3)
        out["api_reviews_while_timing"] = auth.reviews - reviews_before
        for s in servers:
            s.stop(None)
        print(json.dumps(out))
    finally:
        ids.close()
        api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
