"""The live allocator (gRPC over a real unix socket) and ``hcs replay`` make the same decisions.

Same cluster (a CSV for the replay; the same nodes as ComputeNode inventories for the allocator),
same pod sequence (the replay's arrival order, each pod sent as a Reserve with its CPU, memory,
device share and ``hcs.io/model`` constraint), same policy (``hcs`` against the live decayed request
mix, ``hcs replay --target recent``): every pod must land on the same node and devices, and the pods
the replay skips must be refused live. Devices have 1,000 MiB of VRAM so an openb share of ``m``
milli is exactly ``m`` MiB on every model.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from hcs.allocator import replay as rp
from hcs.allocator.placement import demand_from_pod
from hcs.allocator.policies import RecentMix
from hcs.allocator.service import AllocatorService, serve
from hcs.allocator.state import AllocatorState
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import DeviceInfo, NodeInventory

MIB = 2**20
MODELS = ("a100-80g", "t4", "v100")
SHAPES = [(8, 96000, 786432), (4, 64000, 262144), (2, 32000, 131072), (1, 16000, 65536)]


def _cluster_csv(path: Path) -> list[tuple[str, int, int, int, str]]:
    rng = np.random.default_rng(5)
    nodes = []
    for i in range(40):
        gpus, cpu, mem = SHAPES[int(rng.integers(len(SHAPES)))]
        nodes.append((f"node-{i:02d}", cpu, mem, gpus, MODELS[int(rng.integers(len(MODELS)))]))
    path.write_text("sn,cpu_milli,memory_mib,gpu,model\n" + "".join(f"{n},{c},{m},{g},{mo}\n"
                                                                    for n, c, m, g, mo in nodes))
    return nodes


def _pods_csv(path: Path, n: int = 400) -> None:
    rng = np.random.default_rng(7)
    rows = []
    for i in range(n):
        k = int(rng.choice([1, 1, 1, 1, 2, 4, 8]))
        milli = int(rng.choice([100, 250, 300, 500, 700, 1000])) if k == 1 else 1000
        spec = ""
        if rng.random() < 0.3:
            spec = "|".join(sorted(set(rng.choice(MODELS, size=int(rng.integers(1, 3)), replace=True))))
        cpu = int(rng.choice([1000, 4000, 8000, 16000]))
        rows.append(f"p{i},{cpu},{cpu * 4},{k},{milli},{spec}\n")
    path.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n" + "".join(rows))


Live = tuple[pbg.AllocatorStub, list[tuple[str, int, int, int, str]]]


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[Live]:
    nodes = _cluster_csv(tmp_path / "nodes.csv")
    state = AllocatorState()
    for name, cpu, mem, gpus, model in nodes:
        devs = tuple(DeviceInfo(f"nvidia-{j}", "nvidia", model, f"GPU-{name}-{j}", j, 1000 * MIB, 312_000)
                     for j in range(gpus))
        state.set_node(NodeInventory(name, devs, cpu, mem * MIB))
    sock = tmp_path / "alloc.sock"
    server = serve(AllocatorService(state), f"unix://{sock}")
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield pbg.AllocatorStub(channel), nodes
    finally:
        channel.close()
        server.stop(None)


def test_live_allocator_makes_the_replays_decisions(live: Live, tmp_path: Path) -> None:
    stub, _ = live
    _pods_csv(tmp_path / "pods.csv")
    cluster = rp.load_nodes(tmp_path / "nodes.csv")
    pods = rp.load_pods(tmp_path / "pods.csv")
    decisions: list[tuple[int, str, tuple[int, ...]]] = []
    rp.simulate(cluster, pods, "hcs", 3, rp.target_of(pods), inflation=1.3, mix=RecentMix(), decisions=decisions)
    placed = skipped = 0
    for n, (i, node, devices) in enumerate(decisions):
        p = pods[i]
        r = p.request
        vram = r.milli * MIB if r.count == 1 else r.count * 1000 * MIB
        req = pb.PodRequest(pod=pb.PodRef(uid=f"u{n}", namespace="t", name=f"{p.name}-{n}"),
                            containers=[pb.ContainerRequest(container="main", vram_bytes=vram)],
                            constraints=pb.Constraints(models=sorted(p.models)),
                            cpu_milli=r.cpu, memory_bytes=r.mem * MIB)
        if not node:
            with pytest.raises(grpc.RpcError) as err:
                stub.Reserve(pb.ReserveRequest(request=req))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (n, p)
            skipped += 1
            continue
        a = stub.Reserve(pb.ReserveRequest(request=req)).assignment
        got = (a.node, tuple(sorted(d.index for d in a.containers[0].devices)))
        assert got == (node, devices), f"arrival {n} ({p}): live {got}, replay {(node, devices)}"
        placed += 1
    # the sequence exercised what it should: constrained pods, whole-device pods, a full cluster
    assert placed > 60 and skipped > 10
    assert sum(1 for i, node, _ in decisions if node and pods[i].models) > 10
    assert sum(1 for i, node, _ in decisions if node and pods[i].request.count > 1) > 5


@pytest.mark.cluster
def test_against_the_api_server_the_extender_binds_what_the_replay_places(api_client: Any, tmp_path: Path) -> None:
    """The same comparison through the real kube-apiserver: Nodes and ComputeNodes are API objects the
    allocator syncs, every pod is a real Pod (requests, ``hcs.io/model`` annotation) that the extender
    filters and binds — its ``hcs.io/assignment`` annotation, read back from the API server, must name
    the replay's node and devices. The scheduler's choice is played by taking the node the extender
    scores highest (it always gives the allocator's first choice the maximum)."""
    from hcs.allocator.extender import Extender
    from hcs.allocator.kube import CN_PATH, KubeSync
    from hcs.allocator.placement import ANN_ASSIGNMENT
    from hcs.allocator.service import reservation_from_annotation
    from hcs.kube import KubeError, KubeRest
    from hcs.node.computenode import install_crd

    rest = KubeRest(api_client)
    install_crd(rest)
    tag = uuid.uuid4().hex[:5]
    rng = np.random.default_rng(11)
    nodes = []
    for i in range(16):
        gpus, cpu, mem = SHAPES[int(rng.integers(len(SHAPES)))]
        nodes.append((f"hcs-lr-{tag}-{i:02d}", cpu, mem, gpus, MODELS[i % len(MODELS)]))
    (tmp_path / "nodes.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\n" + "".join(
        f"{n},{c},{m},{g},{mo}\n" for n, c, m, g, mo in nodes))
    _pods_csv(tmp_path / "pods.csv", 200)
    cluster = rp.load_nodes(tmp_path / "nodes.csv")
    pods = rp.load_pods(tmp_path / "pods.csv")
    decisions: list[tuple[int, str, tuple[int, ...]]] = []
    rp.simulate(cluster, pods, "hcs", 1, rp.target_of(pods), inflation=1.3, mix=RecentMix(), decisions=decisions)
    created: list[str] = []
    deadline = time.time() + 60
    while True:  # the CRD is served once established
        try:
            rest.request("GET", CN_PATH)
            break
        except KubeError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    try:
        for name, cpu, mem, gpus, model in nodes:
            alloc = {"cpu": f"{cpu}m", "memory": f"{mem}Mi", "pods": "500"}
            rest.request("POST", "/api/v1/nodes", body={"apiVersion": "v1", "kind": "Node",
                                                         "metadata": {"name": name},
                                                         "status": {"capacity": alloc, "allocatable": alloc}})
            devices = [{"name": f"nvidia-{j}", "vendor": "nvidia", "model": model, "uuid": f"GPU-{name}-{j}",
                        "index": j, "vramBytes": 1000 * MIB,
                        "compute": {"fp16Tflops": 312, "fp32Tflops": 19.5, "int8Tops": 624, "rate": 1.0},
                        "topology": {"busId": f"0000:{j:02x}:00.0", "numaNode": 0, "island": ""},
                        "healthScore": 100} for j in range(gpus)]
            rest.request("POST", CN_PATH, body={"apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNode",
                                                "metadata": {"name": name},
                                                "spec": {"nodeName": name, "vendor": "nvidia", "devices": devices}})
        state = AllocatorState()
        sync = KubeSync(rest, state)
        sync.sync_inventory()
        names = [n[0] for n in nodes]
        for inv in state.nodes():  # other tests' nodes share this API server
            if inv.name not in names:
                state.remove_node(inv.name)
        ext = Extender(state, sync)
        placed = refused = 0
        for n, (i, node, devs) in enumerate(decisions):
            p = pods[i]
            r = p.request
            vram = f"{r.milli}Mi" if r.count == 1 else f"{r.count * 1000}Mi"
            ann = {"hcs.io/model": ",".join(sorted(p.models))} if p.models else {}
            pod = rest.request("POST", "/api/v1/namespaces/default/pods", body={
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"hcs-lr-{tag}-{n}", "namespace": "default", "annotations": ann},
                "spec": {"schedulerName": "hcs-scheduler", "containers": [{
                    "name": "main", "image": "busybox", "command": ["sleep", "3600"],
                    "resources": {"requests": {"ai.compute/vram": vram, "cpu": f"{r.cpu}m",
                                               "memory": f"{r.mem}Mi"},
                                  "limits": {"ai.compute/vram": vram}}}]}})
            created.append(pod["metadata"]["name"])
            out = ext.filter({"Pod": pod, "NodeNames": names})
            if not node:
                assert out["NodeNames"] == [], (n, p, out["NodeNames"])
                refused += 1
                continue
            scores = {s["Host"]: s["Score"] for s in ext.prioritize({"Pod": pod, "NodeNames": out["NodeNames"]})}
            top = max(scores.values())
            first = next(v.node for v in state.explain(demand_from_pod(pod), names, proposals=0) if v.fits)
            assert scores[first] == top
            result = ext.bind({"PodName": pod["metadata"]["name"], "PodNamespace": "default",
                               "PodUID": pod["metadata"]["uid"], "Node": first})
            assert result["Error"] == ""
            live = sync.get_pod("default", pod["metadata"]["name"])
            res = reservation_from_annotation(live["metadata"]["annotations"][ANN_ASSIGNMENT])
            got = (res.node, tuple(sorted(g.index for g in res.grants())))
            assert live["spec"]["nodeName"] == node and got == (node, devs), f"arrival {n} ({p}): {got}"
            placed += 1
        # past the live mix's warm-up (16), with constrained pods and refusals
        assert placed > 30 and refused > 3, (placed, refused)
        assert sum(1 for i, node, _ in decisions if node and pods[i].models) > 5
    finally:
        for name in created:
            with contextlib.suppress(KubeError):
                rest.request("DELETE", f"/api/v1/namespaces/default/pods/{name}", query={"gracePeriodSeconds": "0"})
        for name, *_ in nodes:
            for path in (f"{CN_PATH}/{name}", f"/api/v1/nodes/{name}"):
                with contextlib.suppress(KubeError):
                    rest.request("DELETE", path)
