"""Drive the demo: reserve each workload through the allocator's gRPC API, admit it through the chosen
node's kubelet simulator (GetPreferredAllocation → Allocate → PreStartContainer against the real node
agent), and report where it landed and what was injected."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from hcs.allocator.placement import ContainerDemand, PodDemand, PodRef, parse_constraints
from hcs.allocator.service import demand_to_proto
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as al
from hcs.demo.report import DeviceUse, PodResult
from hcs.demo.stack import RESOURCE, DemoStack
from hcs.demo.workloads import DemoPod
from hcs.testing.kubelet_sim import AdmissionError, SimPod

NAMESPACE = "demo"


def demand_of(pod: DemoPod) -> PodDemand:
    return PodDemand(PodRef(str(uuid.uuid4()), NAMESPACE, pod.name, int(time.time() * 1000)),
                     (ContainerDemand("main", pod.vram_bytes, int(round(pod.tflops * 1000))),),
                     parse_constraints(pod.annotations, f"pod {NAMESPACE}/{pod.name}"))


def reserve(stack: DemoStack, pod: DemoPod) -> tuple[PodDemand, Any, str]:
    """(demand, assignment proto or None, pending reason)."""
    demand = demand_of(pod)
    try:
        resp = stack.stub.Reserve(al.ReserveRequest(request=demand_to_proto(demand)), timeout=10)
        return demand, resp.assignment, ""
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT):
            raise
        return demand, None, why_pending(stack, demand, exc.details() or "")


def why_pending(stack: DemoStack, demand: PodDemand, fallback: str) -> str:
    try:
        verdicts = stack.stub.Explain(al.ExplainRequest(request=demand_to_proto(demand)), timeout=10).verdicts
    except grpc.RpcError:
        return fallback
    reasons = sorted({f"{v.node}: {v.reason}" for v in verdicts if not v.fits})
    return "; ".join(reasons) or fallback


def admit(stack: DemoStack, demand: PodDemand, assignment: Any, note: str) -> PodResult:
    node = stack.node(assignment.node)
    assert node.kubelet is not None
    sim_pod = SimPod(NAMESPACE, demand.pod.name, demand.pod.uid, (("main", 1),))
    result = PodResult(demand.pod.name, node=assignment.node, note=note)
    grants = [d for c in assignment.containers for d in c.devices]
    result.vendor = grants[0].vendor if grants else ""
    result.devices = [{"key": f"{g.vendor}-{g.index}", "uuid": g.uuid, "index": g.index, "model": g.model,
                       "vram_bytes": g.vram_bytes, "island": g.island} for g in grants]
    result.vram_bytes = sum(g.vram_bytes for g in grants)
    try:
        responses = node.kubelet.admit(sim_pod, RESOURCE)
        node.kubelet.start_container(NAMESPACE, demand.pod.name, "main")
    except AdmissionError as exc:
        result.pending_reason = f"admission on {assignment.node} failed: {exc}"
        return result
    env: dict[str, str] = {}
    mounts: dict[str, str] = {}  # container path -> host path
    for r in responses:
        env.update(dict(r.envs))
        mounts.update({m.container_path: m.host_path for m in r.mounts})
        for cdi in r.cdi_devices:  # deferred: the node agent wrote the CDI spec at PreStartContainer
            cdi_env, cdi_mounts = _cdi_edits(node.dir / "cdi", cdi.name)
            env.update(cdi_env)
            mounts.update(cdi_mounts)
    result.env = dict(sorted(env.items()))
    result.quota = _read_quota(env.get("HCS_QUOTA_FILE", ""), mounts)
    return result


def _cdi_edits(cdi_dir: Path, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(env, container path -> host path) of the CDI device ``kind=name``."""
    kind, _, dev = name.partition("=")
    for spec_file in cdi_dir.glob("*.json"):
        spec = json.loads(spec_file.read_text())
        if spec.get("kind") != kind:
            continue
        for d in spec.get("devices", []):
            if d.get("name") == dev:
                edits = d.get("containerEdits", {})
                return (dict(e.split("=", 1) for e in edits.get("env", [])),
                        {m["containerPath"]: m["hostPath"] for m in edits.get("mounts", [])})
    return {}, {}


def _read_quota(container_path: str, mounts: dict[str, str]) -> str:
    """The host file behind the container's HCS_QUOTA_FILE, as the container would read it."""
    path = Path(container_path)
    for inside in (path, *path.parents):
        if str(inside) in mounts:
            host = Path(mounts[str(inside)]) / path.relative_to(inside)
            return host.read_text().strip().replace("\n", "; ") if host.is_file() else ""
    return ""


def run_workloads(stack: DemoStack, pods: list[DemoPod], on_result: Callable[[PodResult], None]) -> list[PodResult]:
    """Reserve a whole wave first (as a scheduler binding a burst does), then let each node admit its
    pods: several pending pods per node exercise the Allocate handshake without a node lock."""
    reserved: list[tuple[DemoPod, PodDemand, Any]] = []
    results: list[PodResult] = []
    for pod in pods:
        demand, assignment, reason = reserve(stack, pod)
        if assignment is None:
            r = PodResult(pod.name, pending_reason=reason, note=pod.note)
            results.append(r)
            on_result(r)
        else:
            reserved.append((pod, demand, assignment))
    for pod, demand, assignment in reserved:
        r = admit(stack, demand, assignment, pod.note)
        if r.pending_reason:
            stack.stub.Release(al.ReleaseRequest(pod_uid=demand.pod.uid), timeout=10)
        results.append(r)
        on_result(r)
    return results


def device_usage(stack: DemoStack, results: list[PodResult]) -> list[DeviceUse]:
    uses: dict[tuple[str, str], DeviceUse] = {}
    for node in stack.nodes:
        for d in node.computenode["spec"]["devices"]:
            uses[(node.name, d["name"])] = DeviceUse(node.name, d["name"], d["vendor"], d["model"], d["vramBytes"])
    for r in results:
        for d in r.devices:
            uses[(r.node, d["key"])].pods[r.name] = d["vram_bytes"]
    return list(uses.values())
