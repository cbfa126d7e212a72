"""ComputeNode CRD and reporter against the real kube-apiserver of the local cluster."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import contextlib

from node_helpers import GiB, device  # noqa: E402

from hcs.devices.model import Health, Vendor  # noqa: E402
from hcs.kube import KubeError, KubeRest  # noqa: E402
from hcs.node.computenode import BASE, ComputeNodeReporter, IslandInfo, install_crd  # noqa: E402
from hcs.node.metrics import NodeMetrics  # noqa: E402
from hcs.node.sources import KubePodLister  # noqa: E402

pytestmark = pytest.mark.cluster


def _wait(pred: Any, timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def rest(api_client: Any) -> KubeRest:
    r = KubeRest(api_client)
    install_crd(r)

    def established() -> bool:
        crd = r.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/computenodes.hetero.zrs.io")
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in crd.get("status", {}).get("conditions", []))

    _wait(established, what="CRD established")
    _wait(lambda: _can_list(r), what="computenodes served")
    return r


def _can_list(r: KubeRest) -> bool:
    try:
        r.request("GET", BASE)
        return True
    except KubeError:
        return False


@pytest.fixture
def fake_node(rest: KubeRest) -> Any:
    name = f"hcs-test-{uuid.uuid4().hex[:8]}"
    node = rest.request("POST", "/api/v1/nodes", body={"apiVersion": "v1", "kind": "Node",
                                                       "metadata": {"name": name}})
    yield node
    for path in (f"{BASE}/{name}", f"/api/v1/nodes/{name}"):
        with contextlib.suppress(KubeError):
            rest.request("DELETE", path)


def test_reporter_creates_updates_and_survives_api_outage(rest: KubeRest, fake_node: Any, kube_cluster: Any) -> None:
    name = fake_node["metadata"]["name"]
    devices = [device(Vendor.NVIDIA, i, 80, numa=i // 2) for i in range(4)]
    state: dict[str, Any] = {"devices": devices, "alloc": {"nvidia-0": (16 * GiB, 1)}}
    islands = [IslandInfo("nvidia-nvlink-0", "nvidia", "nvlink", tuple(d.key for d in devices), 300.0)]
    # first with an unreachable API server: no exception, reported as failed
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = "https://127.0.0.1:1"
    down = KubeRest(client.ApiClient(cfg), timeout_s=1.0)
    metrics = NodeMetrics()
    rep = ComputeNodeReporter(down, name, lambda: (state["devices"], islands, state["alloc"]), 3600, metrics)
    assert rep.report() is False
    # the API server is back: catch up
    rep.rest = rest
    assert rep.report() is True
    obj = rest.request("GET", f"{BASE}/{name}")
    assert obj["spec"]["vendor"] == "nvidia" and obj["spec"]["nodeName"] == name
    assert len(obj["spec"]["devices"]) == 4
    assert obj["spec"]["devices"][0]["topology"]["island"] == ""
    assert obj["spec"]["islands"][0]["members"] == ["nvidia-0", "nvidia-1", "nvidia-2", "nvidia-3"]
    [owner] = obj["metadata"]["ownerReferences"]
    assert owner["kind"] == "Node" and owner["uid"] == fake_node["metadata"]["uid"]
    assert obj["status"]["phase"] == "Ready"
    assert obj["status"]["vramAllocatedBytes"] == 16 * GiB
    assert obj["status"]["vramAllocatableBytes"] == 4 * 80 * GiB - 16 * GiB
    assert obj["status"]["vram"] == "304Gi/320Gi"
    # a device turns unhealthy: marked in spec and status
    from dataclasses import replace

    state["devices"] = [replace(devices[0], health=Health(0, ("Xid 79 reported by the driver",))), *devices[1:]]
    assert rep.report() is True
    obj = rest.request("GET", f"{BASE}/{name}")
    assert obj["status"]["phase"] == "Degraded"
    assert obj["spec"]["devices"][0]["healthy"] is False
    assert "Xid 79" in obj["status"]["conditions"][0]["message"]
    assert obj["status"]["vramAllocatableBytes"] == 3 * 80 * GiB
    # printer columns
    out = kube_cluster.kubectl("get", "computenodes", name).stdout
    header, row = out.strip().splitlines()[:2]
    assert header.split() == ["NAME", "VENDOR", "NODE", "PHASE", "VRAM", "AGE"]
    assert row.split()[:5] == [name, "nvidia", name, "Degraded", "240Gi/320Gi"]
    # recovery reported too
    state["devices"] = devices
    assert rep.report() is True
    assert rest.request("GET", f"{BASE}/{name}")["status"]["phase"] == "Ready"


def test_schema_validation_rejects_bad_objects(rest: KubeRest) -> None:
    name = f"hcs-bad-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNode", "metadata": {"name": name},
            "spec": {"nodeName": name, "vendor": "intel", "devices": []}}
    with pytest.raises(KubeError) as err:
        rest.request("POST", BASE, body=body)
    assert err.value.status == 422 and "vendor" in str(err.value)


def test_local_policy_reads_pods_bound_to_the_node(rest: KubeRest, fake_node: Any) -> None:
    name = fake_node["metadata"]["name"]
    ns = "default"
    pod_name = f"hcs-vram-{uuid.uuid4().hex[:6]}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": ns},
           "spec": {"nodeName": name, "containers": [
               {"name": "main", "image": "busybox", "imagePullPolicy": "Never",
                "resources": {"requests": {"ai.compute/vram": "16Gi"}, "limits": {"ai.compute/vram": "16Gi"}}},
               {"name": "sidecar", "image": "busybox", "imagePullPolicy": "Never"}]}}
    rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)
    try:
        demands = KubePodLister(rest, name)()
        [d] = [x for x in demands if x.pod.name == pod_name]
        assert d.containers == (("main", 16 * GiB),)
        assert d.pod.uid and d.pod.created_ms > 0
    finally:
        rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{pod_name}", query={"gracePeriodSeconds": "0"})


RESOURCE = "test.hcs.io/slot"


def _real_kubelet_config(kube_cluster: Any, root: Path, **extra: Any) -> Any:
    from hcs.node.config import node_config

    return node_config({
        "nodeName": kube_cluster.node_name,
        "devicePluginDir": str(Path(kube_cluster.kubelet_dir) / "device-plugins"),
        "podResourcesSocket": str(Path(kube_cluster.kubelet_dir) / "pod-resources" / "kubelet.sock"),
        "resourceName": RESOURCE, "socketName": f"hcs-test-{uuid.uuid4().hex[:6]}.sock",
        "stateDir": str(root / "state"), "quotaDir": str(root / "quota"), "shmDir": str(root / "shm"),
        "cdiDir": str(root / "cdi"), "interceptorDir": "", "slotsPerDevice": 2, "metricsPort": 0,
        "reportInterval": 3600, **extra,
    })


def _run_pod(rest: KubeRest, kube_cluster: Any, pod_name: str, vram: str,
             allocated: Any) -> tuple[dict[str, Any], str]:
    """Create the pod on the real node; wait for the agent to allocate it, then for it to finish."""
    node, ns = kube_cluster.node_name, "default"

    def capacity() -> bool:
        n = rest.request("GET", f"/api/v1/nodes/{node}")
        return n["status"].get("allocatable", {}).get(RESOURCE) == "4"

    _wait(capacity, 60, f"{RESOURCE} allocatable on {node}")
    limits = {"ai.compute/vram": vram, RESOURCE: "1"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": ns},
           "spec": {"nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": kube_cluster.busybox_image,
                                    "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", "env | sort; echo ==QUOTA==; cat $HCS_QUOTA_FILE"],
                                    "resources": {"requests": limits, "limits": limits}}]}}
    rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)
    # the kubelet admitted it and called Allocate
    _wait(allocated, 60, f"the kubelet to call Allocate for {pod_name}")

    def finished() -> Any:
        p = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{pod_name}")
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    try:
        p = _wait(finished, 120, f"pod {pod_name} to finish")
    except TimeoutError:
        events = rest.request("GET", f"/api/v1/namespaces/{ns}/events",
                              query={"fieldSelector": f"involvedObject.name={pod_name}"})
        sandbox = [e["message"] for e in events.get("items", []) if e.get("reason") == "FailedCreatePodSandBox"]
        if sandbox:  # the local cluster's container runtime, not the device plugin
            pytest.skip(f"the local cluster cannot start pod sandboxes: {sandbox[-1][:300]}")
        raise
    logs = kube_cluster.kubectl("logs", "-n", ns, pod_name).stdout
    assert p["status"]["phase"] == "Succeeded", (p["status"], logs)
    return p, logs


def test_real_kubelet_registers_and_allocates(rest: KubeRest, kube_cluster: Any) -> None:
    """The real kubelet of the local cluster: registration, ListAndWatch, Allocate, PreStartContainer,
    pod-resources; the container sees the assignment's env and quota file."""
    import tempfile

    from hcs.node.agent import NodeAgent

    root = Path(tempfile.mkdtemp(prefix="hcsk", dir="/tmp"))
    cfg = _real_kubelet_config(kube_cluster, root)
    devices = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 40)]
    agent = NodeAgent(cfg, devices, kube=rest).start()
    pod_name = f"hcs-dp-{uuid.uuid4().hex[:6]}"
    ns = "default"
    try:
        p, logs = _run_pod(rest, kube_cluster, pod_name, "8Gi",
                           lambda: any(a.pod.name == pod_name for a in agent.core.allocations()))
        assert "NVIDIA_VISIBLE_DEVICES=NVIDIA-UUID-0001" in logs  # best fit: the 40 GiB device
        assert "HCS_QUOTA_FILE=/var/run/hcs/quota" in logs
        assert logs.split("==QUOTA==", 1)[1].split() == ["0", str(8 * GiB)]
        ann = p["metadata"].get("annotations", {}).get("hcs.io/assignment")
        if ann is None:  # confirm/annotate is asynchronous
            ann = _wait(lambda: rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{pod_name}")["metadata"]
                        .get("annotations", {}).get("hcs.io/assignment"), 10, "assignment annotation")
        assert '"ASSIGNMENT_STATE_CONFIRMED"' in ann
        assert agent.core.vram_allocated() == {"nvidia-1": (8 * GiB, 1)}
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{pod_name}", query={"gracePeriodSeconds": "0"})
        agent.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_real_kubelet_deferred_match_through_cdi(rest: KubeRest, kube_cluster: Any) -> None:
    """Two candidate pods (a never-created one stands in for a second pending pod): Allocate answers a
    CDI name, PreStartContainer resolves the owner from the real kubelet's pod-resources and writes the
    spec, containerd injects it."""
    import shutil
    import tempfile

    from hcs.node.agent import NodeAgent
    from hcs.node.assignments import PodDemand, PodRef
    from hcs.node.sources import KubePodLister

    root = Path(tempfile.mkdtemp(prefix="hcsk", dir="/tmp"))
    kind = "test.hcs.io/slot"
    cfg = _real_kubelet_config(kube_cluster, root, cdiDir="/var/run/cdi", cdiKind=kind)
    devices = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 40)]
    ghost = PodDemand(PodRef("uid-ghost", "default", "ghost-never-created", 0), (("main", 30 * GiB),))
    lister = KubePodLister(rest, kube_cluster.node_name)
    agent = NodeAgent(cfg, devices, kube=rest, pod_lister=lambda: [ghost, *lister()]).start()
    pod_name = f"hcs-cdi-{uuid.uuid4().hex[:6]}"
    try:
        deferred = agent.metrics.allocate_total.labels("deferred")
        _, logs = _run_pod(rest, kube_cluster, pod_name, "30Gi", lambda: deferred._value.get() == 1)
        # the ghost (older) took the 40 GiB device by best fit; the real pod got the 80 GiB one
        assert "NVIDIA_VISIBLE_DEVICES=NVIDIA-UUID-0000" in logs, logs
        assert logs.split("==QUOTA==", 1)[1].split() == ["0", str(30 * GiB)]
        assert any(a.pod.name == pod_name for a in agent.core.allocations())  # resolved at PreStart
        specs = list(Path("/var/run/cdi").glob("test.hcs.io-slot-*.json"))
        assert specs, "the CDI spec was not written"
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/default/pods/{pod_name}", query={"gracePeriodSeconds": "0"})
        agent.stop()
        for spec in Path("/var/run/cdi").glob("test.hcs.io-slot-*.json"):
            spec.unlink()
        shutil.rmtree(root, ignore_errors=True)
