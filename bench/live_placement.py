"""Live-path decision time at openb scale: every node of the openb node list (1,213) as an allocator
inventory, a constrained openb trace's arrivals (seed 0, to 100% of device capacity) sent as Reserve
calls through the allocator's gRPC API on a unix socket.

Devices get 1,000 MiB of VRAM so an openb share of ``m`` milli asks exactly ``m`` MiB (the units of the
live-vs-replay equality test). Prints one JSON object: ``decision_p50_ms``/``decision_p99_ms`` (CPU time
of the allocator's reserve — the planner over every node plus the live target's rebuild — on its core,
``time.thread_time``, as bench/replay.py reports), ``rpc_wall_p50_ms``/``rpc_wall_p99_ms`` (the client's
wall clock per Reserve, including waits for a CPU on a shared machine), placed/refused counts.

    .venv/bin/python bench/live_placement.py [--pods gpuspec20] [--limit 3000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from hcs.allocator import replay as rp
from hcs.allocator.placement import PodDemand
from hcs.allocator.service import AllocatorService, serve
from hcs.allocator.state import AllocatorState, Reservation
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import DeviceInfo, NodeInventory

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
MIB = 2**20
#: openb model -> a catalog model id (so hcs.io/model constraints parse); all 1,000 MiB here
MODEL = {"G2": "a100-80g", "G3": "h100", "T4": "t4", "P100": "p100", "V100M16": "v100", "V100M32": "a800-80g",
         "A10": "a10"}


class TimedState(AllocatorState):
    """Records the CPU time of every reserve (the decision) on the serving thread."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_ms: list[float] = []

    def reserve(self, demand: PodDemand, node: str | None = None) -> Reservation:
        t0 = time.thread_time_ns()
        try:
            return super().reserve(demand, node)
        finally:
            self.cpu_ms.append((time.thread_time_ns() - t0) / 1e6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=str(TRACES if TRACES.exists() else Path("/work/shared/traces")))
    ap.add_argument("--pods", default="gpuspec20")
    ap.add_argument("--limit", type=int, default=3000, help="arrivals to send (default 3000)")
    args = ap.parse_args()
    cluster = rp.load_nodes(Path(args.dir) / "openb_node_list_gpu_node.csv")
    pods = rp.load_pods(Path(args.dir) / f"openb_pod_list_{args.pods}.csv")
    state = TimedState()
    for n in range(len(cluster.names)):
        model = MODEL.get(cluster.models[int(cluster.model[n])], "a100-80g")
        devs = tuple(DeviceInfo(f"nvidia-{j}", "nvidia", model, f"GPU-{n}-{j}", j, 1000 * MIB, 312_000)
                     for j in range(int(cluster.gpus[n])))
        state.set_node(NodeInventory(cluster.names[n], devs, int(cluster.cpu[n]), int(cluster.mem[n]) * MIB))
    order = [i for i in rp.arrival_order(pods, cluster.gpu_capacity, 0, 1.0) if pods[i].request.count > 0]
    wall: list[float] = []
    placed = refused = 0
    with tempfile.TemporaryDirectory() as tmp:
        server = serve(AllocatorService(state), f"unix://{tmp}/alloc.sock")
        channel = grpc.insecure_channel(f"unix://{tmp}/alloc.sock")
        stub = pbg.AllocatorStub(channel)
        try:
            for n, i in enumerate(order[: args.limit]):
                p = pods[i]
                r = p.request
                vram = r.milli * MIB if r.count == 1 else r.count * 1000 * MIB
                models = sorted({MODEL[m] for m in p.models if m in MODEL})
                req = pb.PodRequest(pod=pb.PodRef(uid=f"u{n}", namespace="bench", name=f"{p.name}-{n}"),
                                    containers=[pb.ContainerRequest(container="main", vram_bytes=vram)],
                                    constraints=pb.Constraints(models=models), cpu_milli=r.cpu,
                                    memory_bytes=r.mem * MIB)
                t0 = time.perf_counter()
                try:
                    stub.Reserve(pb.ReserveRequest(request=req))
                    placed += 1
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    refused += 1
                wall.append((time.perf_counter() - t0) * 1000)
                if n % 500 == 0:
                    print(f"live_placement: {n}/{min(len(order), args.limit)}", file=sys.stderr, flush=True)
        finally:
            channel.close()
            server.stop(None)
    cpu = np.array(state.cpu_ms)
    print(json.dumps({
        "nodes": len(cluster.names), "devices": int(cluster.gpus.sum()), "pods": args.pods,
        "arrivals": len(wall), "placed": placed, "refused": refused,
        "decision_p50_ms": round(float(np.percentile(cpu, 50)), 3),
        "decision_p99_ms": round(float(np.percentile(cpu, 99)), 3),
        "rpc_wall_p50_ms": round(float(np.percentile(wall, 50)), 3),
        "rpc_wall_p99_ms": round(float(np.percentile(wall, 99)), 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
