"""The ``chart`` (and ``kind``) e2e target: HCS installed by ``helm install`` (e2e/chart/run, e2e/kind/run.sh),
driven from outside like a user would: kubectl, the API, the Services. Same surface as the ``local``
harness (e2e/local/harness.py) where the scenarios need it; nothing here starts an HCS component.

Environment (set by e2e/chart/run): HCS_E2E_KUBECONFIG, HCS_E2E_NAMESPACE (the release namespace),
HCS_E2E_RELEASE, HCS_E2E_VALUES (values file the release was installed with).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_helpers import wait_for  # tests/e2e is on sys.path (conftest; bench/startup.py loads it by path)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "e2e" / "cluster"))

COMPUTENODES = "/apis/hetero.zrs.io/v1alpha1/computenodes"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"
SLOT = "ai.compute/slot"
DRA_DRIVER = "ai.compute"


class TargetError(Exception):
    pass



@dataclass(frozen=True)
class ClusterInfo:
    """What scenarios read from ``h.cluster`` (the local target's e2e/cluster handle)."""

    kubeconfig: Path
    bin_dir: Path
    busybox_image: str
    dir: Path


@dataclass
class ChartTarget:
    cluster: ClusterInfo
    rest: Any
    release_namespace: str
    release: str
    target: str
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    use_allocator: bool = True
    procs: dict[str, Any] = field(default_factory=dict)  # no host processes: diagnostics read pod logs

    # ------------------------------------------------------------------ layout
    @property
    def namespace(self) -> str:
        return f"hcs-e2e-{self.session}"

    @property
    def scheduler_name(self) -> str:
        return "hcs-scheduler"

    @property
    def nodes(self) -> list[str]:
        """Nodes the node agent runs on (label hcs.io/accelerator=true), in name order."""
        items = self.rest.request("GET", "/api/v1/nodes", query={"labelSelector": "hcs.io/accelerator=true"})
        return sorted(n["metadata"]["name"] for n in items.get("items") or [])

    @property
    def node(self) -> str:
        """The node single-node scenarios pin to: the first one with both NVIDIA and Ascend devices, else the first."""
        for n in self.nodes:
            vendors = {d["vendor"] for d in self.computenode(n)["spec"].get("devices", [])}
            if {"nvidia", "ascend"} <= vendors:
                return n
        return self.nodes[0]

    def node_root(self, node: str) -> Path:
        """The node's own view of the host (multi-node local cluster: per-node dirs bound in its mount ns)."""
        return self.cluster.dir / "nodes" / node / "root"

    def _host_path(self, node: str, path: str) -> Path:
        """A node's host path (/usr/local/..., /opt/...) as seen from here on the multi-node local cluster."""
        for prefix, sub in (("/usr/local/", "usr-local"), ("/opt/", "opt")):
            if path.startswith(prefix):
                return self.node_root(node) / sub / path[len(prefix):]
        raise ValueError(f"{path}: not under a per-node host directory of the multi-node cluster")

    def read_node_file(self, node: str, path: str) -> bytes:
        """A file on the node's host (kind: inside the node container)."""
        if self.target == "kind":
            return subprocess.run(["docker", "exec", node, "cat", path], capture_output=True, check=True,
                                  timeout=60).stdout
        return self._host_path(node, path).read_bytes()

    def write_node_file(self, node: str, path: str, data: bytes) -> None:
        if self.target == "kind":
            subprocess.run(["docker", "exec", "-i", node, "sh", "-c", f"cat > {path}.tmp && mv {path}.tmp {path}"],
                           input=data, check=True, timeout=60)
            return
        self._host_path(node, path).write_bytes(data)

    def faults_file(self, node: str) -> Path:
        return self.node_root(node) / "opt" / "hcs" / "sim" / "profile.json.faults"

    # ------------------------------------------------------------------ tools
    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.cluster.bin_dir / "kubectl"), f"--kubeconfig={self.cluster.kubeconfig}", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text, check=False)
        if check and r.returncode != 0:
            raise TargetError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.cluster.bin_dir / "helm"), f"--kubeconfig={self.cluster.kubeconfig}", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise TargetError(f"helm {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    # ------------------------------------------------------------------ lifecycle
    def up(self) -> ChartTarget:
        self.wait_ready()
        self.rest.request("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": {"hcs-e2e": self.session}}})
        wait_for(lambda: self._exists(f"/api/v1/namespaces/{self.namespace}/serviceaccounts/default"), 60,
                 f"service account default in {self.namespace}")
        return self

    def down(self) -> None:
        from hcs.kube import KubeError

        with contextlib.suppress(KubeError):
            self.rest.request("DELETE", f"/api/v1/namespaces/{self.namespace}")

    def _exists(self, path: str) -> bool:
        from hcs.kube import KubeError

        try:
            self.rest.request("GET", path)
            return True
        except KubeError:
            return False

    def pods(self, component: str) -> list[dict[str, Any]]:
        sel = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component={component}"
        data = self.rest.request("GET", f"/api/v1/namespaces/{self.release_namespace}/pods",
                                 query={"labelSelector": sel})
        return list(data.get("items") or [])

    @staticmethod
    def pod_ready(pod: dict[str, Any]) -> bool:
        if pod["metadata"].get("deletionTimestamp"):
            return False
        return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])

    def wait_ready(self, timeout: float = 180) -> None:
        nodes = self.nodes
        if not nodes:
            raise TargetError("no node labelled hcs.io/accelerator=true: is the chart installed (e2e/chart/run)?")

        def ready() -> bool:
            agents = [p for p in self.pods("node-agent") if self.pod_ready(p)]
            return (len(agents) >= len(nodes) and all(self._exists(f"{COMPUTENODES}/{n}") for n in nodes)
                    and all(self.slot_allocatable(n) > 0 for n in nodes)
                    and any(self.pod_ready(p) for p in self.pods("webhook"))
                    and bool(self.leader()) and bool(self.scheduler_leader()))

        wait_for(ready, timeout, "the chart's node agents, webhook, allocator leader and hcs-scheduler leader")

    # ------------------------------------------------------------------ node state
    def slot_allocatable(self, node: str | None = None) -> int:
        n = self.rest.request("GET", f"/api/v1/nodes/{node or self.node}")
        return int(n["status"].get("allocatable", {}).get(SLOT, "0"))

    def wait_device_plugin(self, timeout: float = 90) -> None:
        for n in self.nodes:
            wait_for(lambda n=n: self.slot_allocatable(n) > 0, timeout, f"{SLOT} allocatable on {n}")

    def slices(self, node: str | None = None) -> list[dict[str, Any]]:
        data = self.rest.request("GET", SLICES, query={"fieldSelector": f"spec.nodeName={node or self.node}"})
        return [s for s in data.get("items") or [] if s["spec"].get("driver") == DRA_DRIVER]

    def wait_dra(self, timeout: float = 90) -> None:
        wait_for(lambda: bool(self.slices()), timeout, f"ResourceSlices of {DRA_DRIVER} on {self.node}")

    def computenode(self, node: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.rest.request("GET", f"{COMPUTENODES}/{node or self.node}")
        return result

    def set_faults(self, lines: Sequence[str], node: str | None = None) -> None:
        if self.target == "kind":  # a kind node is a container: write the file inside it
            sim = os.environ.get("HCS_E2E_SIM_DIR", "/opt/hcs/sim")
            subprocess.run(["docker", "exec", "-i", node or self.node, "sh", "-c",
                            f"cat > {sim}/profile.json.faults.tmp && mv {sim}/profile.json.faults.tmp "
                            f"{sim}/profile.json.faults"], input="".join(f"{line}\n" for line in lines),
                           text=True, check=True, timeout=60)
            return
        path = self.faults_file(node or self.node)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ allocator
    def leader(self) -> str:
        """Name of the allocator pod holding the Lease (and labelled hcs.io/allocator-leader=true)."""
        for p in self.pods("allocator"):
            if (p["metadata"].get("labels") or {}).get("hcs.io/allocator-leader") == "true" and self.pod_ready(p):
                return str(p["metadata"]["name"])
        return ""

    def scheduler_leader(self) -> str:
        """Name of the Ready allocator pod whose kube-scheduler (the ``hcs-scheduler``) holds its Lease: until
        one does, no ``ai.compute`` pod is scheduled. A Lease left by a scheduler that did not release it (a
        killed pod, a cluster taken down) names a pod that is gone: not a leader (the new one takes the Lease
        when it expires, ``leaseDurationSeconds`` after its last renewal)."""
        from hcs.kube import KubeError

        name = os.environ.get("HCS_E2E_SCHEDULER_NAME", "hcs-scheduler")
        try:
            lease = self.rest.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{self.release_namespace}"
                                             f"/leases/{name}")
        except KubeError:
            return ""
        return lease_leader(lease, {str(p["metadata"]["name"]) for p in self.pods("allocator") if self.pod_ready(p)})

    def allocator_holds(self, node: str) -> list[str]:
        """Pods of the session namespace the leading allocator reserves devices for on ``node``: its gRPC
        API through the chart's leader Service, over TLS (the chart's CA), as an operator would call it —
        a ServiceAccount bound to the chart's ``-allocator-api-admin`` ClusterRole, with a token for the
        allocator's audience (an anonymous or plaintext call is refused: tests/security/test_sec_auth_*)."""
        import base64
        import tempfile

        from hcs.allocator_client import channel
        from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
        from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
        from hcs.kube import KubeError

        ns, sa = self.release_namespace, "hcs-e2e-operator"
        role = f"{self.release}-allocator-api-admin"
        for path, body in (
                (f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": sa}}),
                ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                 {"metadata": {"name": f"{role}-e2e"},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                  "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]})):
            with contextlib.suppress(KubeError):  # already there (409) from an earlier call
                self.rest.request("POST", path, body=body)
        token = self.rest.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                                  body={"spec": {"audiences": ["hcs-allocator"], "expirationSeconds": 600}})
        secret = self.rest.request("GET", f"/api/v1/namespaces/{ns}/secrets/{self.release}-allocator-tls")
        svc = self.rest.request("GET", f"/api/v1/namespaces/{ns}/services/{self.release}-allocator-leader")
        port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "token").write_text(token["status"]["token"])
            (Path(tmp) / "ca.crt").write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
            ch = channel(f"{svc['spec']['clusterIP']}:{port}", token_file=f"{tmp}/token", ca_file=f"{tmp}/ca.crt",
                         server_name=f"{self.release}-allocator-leader.{ns}.svc")
            try:
                stub = pbg.AllocatorStub(ch)  # type: ignore[no-untyped-call]
                deadline = time.time() + 30
                while True:  # the RBAC binding just made may take a moment to reach the authorizer's cache
                    try:
                        resp = stub.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node=node), timeout=10)
                        break
                    except Exception:
                        if time.time() > deadline:
                            raise
                        time.sleep(1)
            finally:
                ch.close()
        return sorted(a.pod.name for a in resp.assignments if a.pod.namespace == self.namespace)

    def assigned_pods(self) -> list[str]:
        """Pods of the session namespace that still hold devices: running/pending pods with an assignment."""
        data = self.rest.request("GET", f"/api/v1/namespaces/{self.namespace}/pods")
        return [p["metadata"]["name"] for p in data.get("items") or []]

    def wait_allocator_released(self, timeout: float = 300) -> None:
        """Deleted pods' reservations are freed by the allocator's sync loop: wait until no ComputeNode
        reports VRAM allocated to a pod that no longer exists (every node back to what other namespaces hold)."""
        if not self.pods("allocator"):  # uninstalled: nothing holds devices any more
            return

        def free() -> bool:
            return not self.assigned_pods() and all(
                int(self.computenode(n).get("status", {}).get("vramAllocatedBytes", 0) or 0) == 0
                for n in self.nodes)

        wait_for(free, timeout, "every ComputeNode to report no VRAM allocated", interval=1.0)

    def logs(self, component: str, tail: int = 30) -> str:
        out = []
        for p in self.pods(component):
            name = p["metadata"]["name"]
            r = self.kubectl("logs", "-n", self.release_namespace, name, "--all-containers", f"--tail={tail}",
                             check=False)
            out.append(f"--- {name} ({p['spec'].get('nodeName')}) ---\n{r.stdout[-3000:]}{r.stderr[-500:]}")
        return "\n".join(out)

    def describe(self) -> str:
        return json.dumps({"target": self.target, "namespace": self.namespace, "release": self.release,
                           "release_namespace": self.release_namespace, "nodes": self.nodes}, indent=2)


def from_env(target: str) -> ChartTarget:
    from kubernetes import client, config

    from hcs.kube import KubeRest

    kubeconfig = os.environ.get("HCS_E2E_KUBECONFIG", "")
    if not kubeconfig and target == "chart":  # the multi-node local cluster's (e2e/cluster/up --workers 3)
        import multinode

        mn = multinode.cp_layout().kubeconfig
        kubeconfig = str(mn) if mn.exists() else ""
    if not kubeconfig:
        raise TargetError(f"HCS_E2E_TARGET={target} needs HCS_E2E_KUBECONFIG (run it through "
                          f"{'e2e/chart/run' if target == 'chart' else 'e2e/kind/run.sh'})")
    import hcs_cluster

    bin_dir = Path(hcs_cluster.layout().bin)
    cluster_dir = Path(kubeconfig).parent
    api = config.new_client_from_config(config_file=kubeconfig)
    assert isinstance(api, client.ApiClient)
    info = ClusterInfo(Path(kubeconfig), bin_dir, os.environ.get("HCS_E2E_BUSYBOX", hcs_cluster.BUSYBOX_IMAGE),
                       cluster_dir)
    return ChartTarget(info, KubeRest(api, timeout_s=30), os.environ.get("HCS_E2E_NAMESPACE", "hcs-system"),
                       os.environ.get("HCS_E2E_RELEASE", "hcs"), target)


def lease_holder_pod(lease: dict[str, Any]) -> str:
    """The pod named by a kube-scheduler Lease's ``holderIdentity`` (``<hostname>_<uuid>``; a pod's hostname
    is its name), or "" when nobody holds it (released: empty identity)."""
    holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
    return holder.rsplit("_", 1)[0] if "_" in holder else holder


def lease_leader(lease: dict[str, Any], ready_pods: set[str]) -> str:
    """The Lease's holder if it is one of ``ready_pods`` (this release's Ready scheduler pods), else ""."""
    holder = lease_holder_pod(lease)
    return holder if holder and holder in ready_pods else ""
