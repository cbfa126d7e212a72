"""Drive the demo: reserve each workload through the allocator's gRPC API, admit it through the chosen
node's kubelet simulator (GetPreferredAllocation → Allocate → PreStartContainer against the real node
agent), and report where it landed and what was injected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from hcs.demo.stack import RESOURCE, ROOT, DemoStack
from hcs.demo.workloads import DemoPod
from hcs.kubeletsim.deviceplugin import AdmissionError, SimPod

NAMESPACE = "demo"


def demand_of(pod: DemoPod) -> PodDemand:
    return PodDemand(PodRef(str(uuid.uuid4()), NAMESPACE, pod.name, int(time.time() * 1000)),
                     (ContainerDemand("main", pod.vram_bytes, int(round(pod.tflops * 1000))),),
                     parse_constraints(pod.annotations, f"pod {NAMESPACE}/{pod.name}"))


def reserve(stack: DemoStack, pod: DemoPod) -> tuple[PodDemand, Any, list[str]]:
    """(demand, assignment proto or None, pending reasons: one per node)."""
    demand = demand_of(pod)
    stack.demands[(NAMESPACE, pod.name)] = demand  # `hcs alloc explain demo/NAME --allocator ...` finds it
    try:
        resp = stack.stub.Reserve(al.ReserveRequest(request=demand_to_proto(demand)), timeout=10)
        return demand, resp.assignment, []
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT):
            raise
        return demand, None, why_pending(stack, demand, exc.details() or "")


def why_pending(stack: DemoStack, demand: PodDemand, fallback: str) -> list[str]:
    """The allocator's Explain, one ``node: reason`` per node that does not fit."""
    try:
        verdicts = stack.stub.Explain(al.ExplainRequest(request=demand_to_proto(demand)), timeout=10).verdicts
    except grpc.RpcError:
        return [fallback]
    return sorted(f"{v.node}: {v.reason}" for v in verdicts if not v.fits) or [fallback]


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
        result.pending_reasons = [f"{assignment.node}: admission failed: {exc}"]
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
    result.mounts = mounts
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


def host_path(container_path: str, mounts: dict[str, str]) -> Path | None:
    """The host path behind a path inside the container (through its mounts)."""
    path = Path(container_path)
    for inside in (path, *path.parents):
        if str(inside) in mounts:
            return Path(mounts[str(inside)]) / path.relative_to(inside)
    return None


def _read_quota(container_path: str, mounts: dict[str, str]) -> str:
    """The VRAM lines of the host file behind the container's HCS_QUOTA_FILE (the ``#`` lines are the
    agent's record of compute shares, not quotas)."""
    host = host_path(container_path, mounts) if container_path else None
    if host is None or not host.is_file():
        return ""
    return "; ".join(x for x in host.read_text().splitlines() if x.strip() and not x.startswith("#"))


def quota_check(stack: DemoStack, r: PodResult) -> dict[str, Any]:
    """Run ``hcs.demo.quota_check`` as the pod's container would: its env, the interceptor preloaded, its
    quota file and accounting dir (host paths of its mounts), the node's simulated runtime."""
    quota_file = host_path(r.env.get("HCS_QUOTA_FILE", ""), r.mounts)
    shm_dir = host_path(r.env.get("HCS_SHM_DIR", ""), r.mounts)
    interceptor = ROOT / "interceptor" / "build" / "libhcs_interceptor.so"
    if quota_file is None or shm_dir is None or not interceptor.is_file():
        return {"enforced": False, "error": "no quota file, accounting dir or interceptor (run `make dev`)"}
    lines = [ln.split() for ln in quota_file.read_text().splitlines() if ln.strip()]
    quota = int(lines[0][1])
    env = dict(os.environ)
    env.update({k: v for k, v in r.env.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH")})
    env.update(LD_PRELOAD=str(interceptor), HCS_QUOTA_FILE=str(quota_file), HCS_SHM_DIR=str(shm_dir),
               HCS_SIM_PROFILE=str(stack.node(r.node).profile), LD_LIBRARY_PATH=str(ROOT / "driver/build/lib"))
    env.pop("HCS_DRIVER_PATH", None)
    out = subprocess.run([sys.executable, "-m", "hcs.demo.quota_check", r.vendor, str(quota)], env=env,
                         capture_output=True, text=True, timeout=60)
    try:
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"enforced": False, "error": (out.stderr.strip() or "no output")[-300:]}
    result["pod"] = r.name
    return result


def run_workloads(stack: DemoStack, pods: list[DemoPod], on_result: Callable[[PodResult], None]) -> list[PodResult]:
    """Reserve a whole wave first (as a scheduler binding a burst does), then let each node admit its
    pods: several pending pods per node exercise the Allocate handshake without a node lock."""
    reserved: list[tuple[DemoPod, PodDemand, Any]] = []
    results: list[PodResult] = []
    for pod in pods:
        demand, assignment, reason = reserve(stack, pod)
        if assignment is None:
            r = PodResult(pod.name, pending_reasons=reason, note=pod.note)
            results.append(r)
            on_result(r)
        else:
            reserved.append((pod, demand, assignment))
    for pod, demand, assignment in reserved:
        r = admit(stack, demand, assignment, pod.note)
        if r.pending_reasons:
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
