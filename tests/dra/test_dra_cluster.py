"""The DRA driver against the local cluster's real kube-apiserver and real kube-scheduler.

Our devices are published for kubelet-less Node objects (created here, like kwok does), so the
real scheduler allocates claims onto them while no real kubelet tries to run the pods; the
DRA-kubelet simulator drives NodePrepare/NodeUnprepare over real unix sockets. The real kubelet
calling the plugin is covered by the e2e suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from dra_helpers import GiB, make_device, new_uid, pod_with_claim  # noqa: E402

from hcs.devices.model import Health, Vendor  # noqa: E402
from hcs.kube import RESOURCE_API, KubeError, KubeRest  # noqa: E402
from hcs.kubeletsim.dra import DraKubeletSim, wipe_node_slices  # noqa: E402
from hcs.node import cdi  # noqa: E402
from hcs.node.dra.config import DraConfig  # noqa: E402
from hcs.node.dra.plugin import DraPlugin  # noqa: E402
from hcs.testing.kube_objects import (  # noqa: E402
    create_allocated_claim,
    delete_namespace,
    delete_node,
    ensure_fake_node,
    ensure_namespace,
    wait_for,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "dra"
NODE = f"hcs-dra-test-node-{os.getpid()}"
NS = f"hcs-dra-test-{os.getpid()}"
DRIVER = "ai.compute"
SLICES = f"{RESOURCE_API}/resourceslices"


def apply(rest: KubeRest, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    kind = obj["kind"]
    plural = {"DeviceClass": "deviceclasses", "ResourceClaimTemplate": "resourceclaimtemplates",
              "ResourceClaim": "resourceclaims", "Pod": "pods"}[kind]
    base = "/api/v1" if kind == "Pod" else RESOURCE_API
    coll = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    try:
        return rest.request("POST", coll, body=obj)
    except KubeError as exc:
        if exc.status != 409:
            raise
        cur = rest.request("GET", f"{coll}/{obj['metadata']['name']}")
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": cur["metadata"]["resourceVersion"]}}
        return rest.request("PUT", f"{coll}/{obj['metadata']['name']}", body=obj)


def example(name: str) -> list[dict[str, Any]]:
    """The example's DeviceClasses / claim templates. Its sample Pod (for users; the e2e suite runs it) is
    left out: these tests bring their own pods, and the sample's would hold the same devices."""
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d and d.get("kind") != "Pod"]


def node_slices(rest: KubeRest, node: str = NODE) -> list[dict[str, Any]]:
    sel = f"spec.nodeName={node},spec.driver={DRIVER}"
    return rest.request("GET", SLICES, query={"fieldSelector": sel}).get("items") or []


def slice_devices(rest: KubeRest, node: str = NODE) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in node_slices(rest, node) for d in s["spec"].get("devices") or []}


def claim_of_pod(rest: KubeRest, pod: str, ns: str = NS) -> dict[str, Any] | None:
    p = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{pod}")
    statuses = p.get("status", {}).get("resourceClaimStatuses") or []
    name = statuses[0].get("resourceClaimName") if statuses else p["spec"]["resourceClaims"][0].get(
        "resourceClaimName")
    if not name:
        return None
    return rest.request("GET", f"{RESOURCE_API}/namespaces/{ns}/resourceclaims/{name}")


def allocated(rest: KubeRest, pod: str, ns: str = NS) -> dict[str, Any] | None:
    c = claim_of_pod(rest, pod, ns)
    return c if c and (c.get("status") or {}).get("allocation") else None


def unschedulable(rest: KubeRest, pod: str) -> bool:
    p = rest.request("GET", f"/api/v1/namespaces/{NS}/pods/{pod}")
    return any(c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
               for c in p.get("status", {}).get("conditions") or [])


def force_delete_pods(rest: KubeRest, names: list[str], ns: str = NS) -> None:
    claims = []
    for n in names:
        try:
            c = claim_of_pod(rest, n, ns)
            if c and c["metadata"].get("ownerReferences"):
                claims.append(c["metadata"]["name"])
            rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{n}", query={"gracePeriodSeconds": "0"})
        except KubeError as exc:
            if exc.status != 404:
                raise
    for c in claims:  # the resourceclaim controller deletes generated claims once their pod is gone

        def gone(c: str = c) -> bool:
            try:
                rest.request("GET", f"{RESOURCE_API}/namespaces/{ns}/resourceclaims/{c}")
                return False
            except KubeError as exc:
                return exc.status == 404

        assert wait_for(gone, 60), f"generated claim {c} was not deleted after its pod"


@pytest.fixture(scope="module")
def rest(api_client: Any) -> KubeRest:
    return KubeRest(api_client)


@pytest.fixture(scope="module")
def dra(rest: KubeRest, api_client: Any, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("dra")
    ensure_fake_node(rest, NODE)
    ensure_namespace(rest, NS)
    for obj in example("deviceclasses.yaml"):
        apply(rest, obj)
    devices = [make_device(Vendor.NVIDIA, i, vram_gib=80, island="nvidia-nvlink-0") for i in range(4)]
    devices.append(make_device(Vendor.ASCEND, 0, vram_gib=64, model="910b", rate=0.85))
    (tmp / "lib").mkdir()
    cfg = DraConfig(node_name=NODE, plugins_registry=str(tmp / "registry"), plugin_dir=str(tmp / "plugin"),
                    cdi_dir=str(tmp / "cdi"), interceptor_host_dir=str(tmp / "lib"))
    plugin = DraPlugin(cfg, devices, api_client)
    plugin.start()
    sim = DraKubeletSim(tmp / "registry")
    sim.register()
    assert plugin.slices is not None and plugin.slices.wait_synced(30), plugin.slices.last_error
    yield plugin, sim, cfg, devices
    sim.close()
    plugin.stop()
    plugin.slices.delete_all()
    delete_namespace(rest, NS)
    delete_node(rest, NODE)


def test_slices_appear_with_capacity_and_owner(rest, dra):
    plugin, _, _, devices = dra
    (s,) = node_slices(rest)
    node = rest.request("GET", f"/api/v1/nodes/{NODE}")
    assert s["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    assert s["spec"]["pool"] == {"name": NODE, "generation": plugin.slices.generation, "resourceSliceCount": 1}
    devs = slice_devices(rest)
    assert sorted(devs) == ["ascend-0", "nvidia-0", "nvidia-1", "nvidia-2", "nvidia-3"]
    assert devs["nvidia-0"]["capacity"]["memory"]["value"] == "80Gi"
    assert devs["nvidia-0"]["capacity"]["tflopsFP16"]["value"] == "312"
    assert devs["ascend-0"]["capacity"]["memory"]["value"] == "64Gi"
    assert devs["ascend-0"]["capacity"]["tflopsFP16"]["value"] == "265200m"
    assert devs["nvidia-0"]["allowMultipleAllocations"] is True, "DRAConsumableCapacity off in the apiserver?"
    assert devs["nvidia-0"]["capacity"]["memory"]["requestPolicy"] == {
        "default": "80Gi", "validRange": {"min": "1Gi", "step": "1Gi"}}
    assert devs["nvidia-1"]["attributes"]["uuid"]["string"] == devices[1].uuid


def test_scheduler_allocates_16gi_template_and_prepare_writes_cdi(rest, dra):
    plugin, sim, cfg, _ = dra
    for obj in example("claimtemplate-16gi.yaml"):
        if obj["kind"] == "ResourceClaimTemplate":
            apply(rest, obj, NS)
    apply(rest, pod_with_claim("p16", NODE, template="vram-16gi"), NS)
    try:
        claim = wait_for(lambda: allocated(rest, "p16"), 60)
        assert claim, "kube-scheduler did not allocate the 16Gi claim"
        (res,) = claim["status"]["allocation"]["devices"]["results"]
        assert res["driver"] == DRIVER and res["pool"] == NODE and res["device"] in slice_devices(rest)
        assert res["consumedCapacity"]["memory"] == "16Gi"
        p = rest.request("GET", f"/api/v1/namespaces/{NS}/pods/p16")
        assert p["spec"].get("nodeName") == NODE
        meta = claim["metadata"]
        out = sim.prepare(DRIVER, [(NS, meta["uid"], meta["name"])])[meta["uid"]]
        assert out.error == ""
        assert out.devices[0].device_name == res["device"] and out.devices[0].share_id == res.get("shareID", "")
        spec_path = Path(cfg.cdi_dir) / f"ai.compute-device_{meta['uid']}.json"
        spec = json.loads(spec_path.read_text())
        assert cdi.validate_spec(spec) == []
        edits = spec["devices"][0]["containerEdits"]
        quota = next(m for m in edits["mounts"] if m["containerPath"] == "/var/run/hcs/quota")
        assert Path(quota["hostPath"]).read_text() == f"0 {16 * GiB}\n"

        def status_published() -> bool:
            c = rest.request("GET", f"{RESOURCE_API}/namespaces/{NS}/resourceclaims/{meta['name']}")
            return any(d["device"] == res["device"] and d["driver"] == DRIVER
                       for d in (c.get("status") or {}).get("devices") or [])

        assert wait_for(status_published, 20), "claim status.devices was not published"
        assert sim.unprepare(DRIVER, [(NS, meta["uid"], meta["name"])])[meta["uid"]].error == ""
        assert not spec_path.exists()
    finally:
        force_delete_pods(rest, ["p16"])


def test_two_40gi_claims_share_one_80gi_device_third_does_not_fit(rest, dra):
    _, _, _, devices = dra
    target = devices[3]
    names = []
    for i in range(3):
        apply(rest, {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": f"half-{i}"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": "vram.ai.compute",
                "selectors": [{"cel": {"expression": f'device.attributes["ai.compute"].uuid == "{target.uuid}"'}}],
                "capacity": {"requests": {"memory": "40Gi"}}}}]}},
        }, NS)
        names.append(f"share-{i}")
    try:
        for i in range(2):
            apply(rest, pod_with_claim(f"share-{i}", NODE, claim=f"half-{i}"), NS)
            claim = wait_for(lambda i=i: allocated(rest, f"share-{i}"), 60)
            assert claim, f"claim half-{i} was not allocated"
            (res,) = claim["status"]["allocation"]["devices"]["results"]
            assert res["device"] == target.key and res["consumedCapacity"]["memory"] == "40Gi"
            assert res.get("shareID")
        apply(rest, pod_with_claim("share-2", NODE, claim="half-2"), NS)
        assert wait_for(lambda: unschedulable(rest, "share-2"), 60), "third 40Gi claim should not fit"
        third = rest.request("GET", f"{RESOURCE_API}/namespaces/{NS}/resourceclaims/half-2")
        assert not (third.get("status") or {}).get("allocation")
    finally:
        force_delete_pods(rest, names)
        for i in range(3):
            rest.request("DELETE", f"{RESOURCE_API}/namespaces/{NS}/resourceclaims/half-{i}")


def test_first_available_takes_whole_80gi_device(rest, dra):
    for obj in example("claimtemplate-first-available.yaml"):
        apply(rest, obj, NS)
    apply(rest, pod_with_claim("fa", NODE, template="vram-80gi-or-2x40gi"), NS)
    try:
        claim = wait_for(lambda: allocated(rest, "fa"), 60)
        assert claim, "firstAvailable claim not allocated"
        results = claim["status"]["allocation"]["devices"]["results"]
        assert [r["request"] for r in results] == ["gpu/one-80gi"]
        assert results[0]["consumedCapacity"]["memory"] == "80Gi" and results[0]["device"].startswith("nvidia-")
    finally:
        force_delete_pods(rest, ["fa"])


def test_island_template_keeps_devices_on_one_island(rest, dra):
    for obj in example("claimtemplate-island.yaml"):
        apply(rest, obj, NS)
    apply(rest, pod_with_claim("isl", NODE, template="nvlink-island-4x80gi"), NS)
    try:
        claim = wait_for(lambda: allocated(rest, "isl"), 60)
        assert claim, "island claim not allocated"
        results = claim["status"]["allocation"]["devices"]["results"]
        assert sorted(r["device"] for r in results) == ["nvidia-0", "nvidia-1", "nvidia-2", "nvidia-3"]
    finally:
        force_delete_pods(rest, ["isl"])


def test_prepare_rejects_foreign_and_replaced_claims(rest, dra):
    _, sim, cfg, _ = dra
    other = create_allocated_claim(rest, NS, "other-node", [
        {"request": "gpu", "driver": DRIVER, "pool": "some-other-node", "device": "nvidia-0"}])
    foreign = create_allocated_claim(rest, NS, "other-driver", [
        {"request": "gpu", "driver": "gpu.example.com", "pool": NODE, "device": "gpu-0"}])
    ok = create_allocated_claim(rest, NS, "fine", [{"request": "gpu", "driver": DRIVER, "pool": NODE,
                                                     "device": "nvidia-2"}])
    refs = [(NS, other["metadata"]["uid"], "other-node"), (NS, foreign["metadata"]["uid"], "other-driver"),
            (NS, new_uid(), "fine"), (NS, new_uid(), "no-such-claim"), (NS, ok["metadata"]["uid"], "fine")]
    out = sim.prepare(DRIVER, refs)
    errs = [out[uid].error for _, uid, _ in refs]
    assert "another node" in errs[0] and "no devices allocated by driver" in errs[1]
    assert "re-created" in errs[2] and "not found" in errs[3] and errs[4] == ""
    assert len(list(Path(cfg.cdi_dir).glob("*.json"))) == 1
    sim.unprepare(DRIVER, [refs[4]])
    for n in ("other-node", "other-driver", "fine"):
        rest.request("DELETE", f"{RESOURCE_API}/namespaces/{NS}/resourceclaims/{n}")


def test_batch_prepare_reads_many_claims_with_one_list(rest, dra):
    _, sim, cfg, _ = dra
    refs = []
    for i in range(10):
        c = create_allocated_claim(rest, NS, f"batch-{i}", [
            {"request": "gpu", "driver": DRIVER, "pool": NODE, "device": f"nvidia-{i % 4}"}])
        refs.append((NS, c["metadata"]["uid"], f"batch-{i}"))
    refs.append((NS, new_uid(), "batch-missing"))
    out = sim.prepare(DRIVER, refs)
    assert [out[r[1]].error for r in refs[:10]] == [""] * 10
    assert "not found" in out[refs[10][1]].error
    assert len(list(Path(cfg.cdi_dir).glob("*.json"))) == 10
    assert all(o.error == "" for o in sim.unprepare(DRIVER, refs).values())
    for i in range(10):
        rest.request("DELETE", f"{RESOURCE_API}/namespaces/{NS}/resourceclaims/batch-{i}")


def test_wiped_slices_are_recreated_with_new_generation(rest, dra):
    plugin, _, _, _ = dra
    before = plugin.slices.generation
    assert wipe_node_slices(rest, NODE, DRIVER) >= 1
    back = wait_for(lambda: node_slices(rest), 30, interval_s=0.05)
    assert back, "slices were not re-created after a wipe"
    assert back[0]["spec"]["pool"]["generation"] > before


def test_200_devices_split_into_two_slices_accepted_by_the_apiserver(rest, api_client):
    from hcs.node.dra.slice_controller import SliceController
    from hcs.node.dra.slices import build_slices

    node = f"hcs-dra-test-node-{os.getpid()}-c"
    cfg = DraConfig(node_name=node)
    ctl = SliceController(rest, cfg)
    devs = [make_device(Vendor.NVIDIA, i, vram_gib=16) for i in range(200)]
    devs[7] = replace(devs[7], health=Health(score=0))
    try:
        ctl.update(build_slices(devs, cfg))
        assert ctl.reconcile_once()
        slices = node_slices(rest, node)
        assert sorted(len(s["spec"]["devices"]) for s in slices) == [8, 64, 64, 64]  # a taint: 64 per slice
        assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {4}
        devs[7] = replace(devs[7], health=Health())
        ctl.update(build_slices(devs, cfg))
        assert ctl.reconcile_once()
        slices = node_slices(rest, node)
        assert sorted(len(s["spec"]["devices"]) for s in slices) == [72, 128]
        assert {s["spec"]["pool"]["generation"] for s in slices} == {ctl.generation} and ctl.generation >= 2
        assert not ctl.reconcile_once()  # in sync: nothing written
    finally:
        ctl.delete_all()


def test_partitioned_mode_slices_and_scheduler_allocation(rest, api_client, tmp_path):
    """Shared counters + partitions (DRAPartitionableDevices): the scheduler takes a 20Gi partition."""
    node = f"hcs-dra-test-node-{os.getpid()}-p"
    ensure_fake_node(rest, node)
    ns = f"{NS}-p"
    ensure_namespace(rest, ns)
    for obj in example("deviceclasses.yaml"):
        apply(rest, obj)
    cfg = DraConfig(node_name=node, mode="partitioned", partition_bytes=(20 * GiB,),
                    plugins_registry=str(tmp_path / "r"), plugin_dir=str(tmp_path / "p"), cdi_dir=str(tmp_path / "c"))
    plugin = DraPlugin(cfg, [make_device(Vendor.NVIDIA, 0, vram_gib=80)], api_client)
    plugin.start()
    try:
        assert plugin.slices is not None and plugin.slices.wait_synced(30), plugin.slices.last_error
        slices = node_slices(rest, node)
        assert sum(1 for s in slices if s["spec"].get("sharedCounters")) == 1
        devs = slice_devices(rest, node)
        assert len(devs) == 5, "counters or partitions dropped: DRAPartitionableDevices off in the apiserver?"
        assert devs["nvidia-0-20gi-0"]["consumesCounters"][0]["counterSet"] == "nvidia-0-counters"
        apply(rest, {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": "part"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": "vram.ai.compute",
                "selectors": [{"cel": {"expression": 'device.attributes["ai.compute"].partition == true'}}]}}]}},
        }, ns)
        apply(rest, pod_with_claim("part", node, claim="part"), ns)
        claim = wait_for(lambda: allocated(rest, "part", ns), 60)
        assert claim, "partition claim not allocated"
        (res,) = claim["status"]["allocation"]["devices"]["results"]
        assert res["device"].startswith("nvidia-0-20gi-") and res["pool"] == node
    finally:
        force_delete_pods(rest, ["part"], ns)
        delete_namespace(rest, ns)
        plugin.stop()
        if plugin.slices is not None:
            plugin.slices.delete_all()
        delete_node(rest, node)


def test_unhealthy_device_is_tainted_in_the_slice(rest, dra):
    plugin, _, _, _ = dra
    plugin.set_health("nvidia-2", Health(score=0, reasons=("xid 79",)))
    try:
        tainted = wait_for(lambda: slice_devices(rest)["nvidia-2"].get("taints"), 30)
        assert tainted and tainted[0]["effect"] == "NoSchedule" and tainted[0]["key"] == "ai.compute/unhealthy"
        assert not slice_devices(rest)["nvidia-1"].get("taints")
    finally:
        plugin.set_health("nvidia-2", Health())
    assert wait_for(lambda: not slice_devices(rest)["nvidia-2"].get("taints"), 30)


def test_agent_process_restart_keeps_checkpoint_and_health_taint(rest, kube_cluster, tmp_path):
    """The standalone runner with the simulated NVML: SIGKILL between prepare and unprepare."""
    node = f"hcs-dra-test-node-{os.getpid()}-b"
    ensure_fake_node(rest, node)
    ns = f"{NS}-r"
    ensure_namespace(rest, ns)
    profile = tmp_path / "profile.json"
    profile.write_text((REPO / "driver" / "profiles" / "a100-80g-nvlink-8.json").read_text())
    faults = tmp_path / "faults"
    faults.write_text("")
    env = {**os.environ, "HCS_SIM_PROFILE": str(profile), "HCS_SIM_FAULTS": str(faults)}
    args = [sys.executable, "-m", "hcs.node.dra", "--node-name", node, "--kubeconfig", str(kube_cluster.kubeconfig),
            "--plugins-registry", str(tmp_path / "registry"), "--plugin-dir", str(tmp_path / "plugin"),
            "--cdi-dir", str(tmp_path / "cdi"), "--simulated"]

    def launch() -> subprocess.Popen[str]:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready"), "runner did not start"
        return proc

    sim = DraKubeletSim(tmp_path / "registry")
    proc = launch()
    try:
        sim.register()
        assert wait_for(lambda: len(slice_devices(rest, node)) == 8, 30), "8 devices not published"
        claim = create_allocated_claim(rest, ns, "restart", [
            {"request": "gpu", "driver": DRIVER, "pool": node, "device": "nvidia-5"}])
        ref = (ns, claim["metadata"]["uid"], "restart")
        out = sim.prepare(DRIVER, [ref])[ref[1]]
        assert out.error == "" and out.devices[0].device_name == "nvidia-5"
        spec = tmp_path / "cdi" / f"ai.compute-device_{ref[1]}.json"
        env_vars = json.loads(spec.read_text())["devices"][0]["containerEdits"]["env"]
        assert "CUDA_VISIBLE_DEVICES=GPU-" in " ".join(env_vars)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        rest.request("DELETE", f"{RESOURCE_API}/namespaces/{ns}/resourceclaims/restart")  # claim gone meanwhile
        proc = launch()
        sim.close()
        sim.register()
        assert sim.unprepare(DRIVER, [ref])[ref[1]].error == ""
        assert not spec.exists()
        faults.write_text("nvidia 2 health critical\n")
        taint = wait_for(lambda: slice_devices(rest, node)["nvidia-2"].get("taints"), 30)
        # the simulated NVML answers a critical device as lost: graded lost, a NoExecute taint (sub-health)
        assert taint and (taint[0]["key"], taint[0]["effect"]) == ("ai.compute/lost", "NoExecute")
    finally:
        sim.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        for s in node_slices(rest, node):
            rest.request("DELETE", f"{SLICES}/{s['metadata']['name']}")
        delete_node(rest, node)
        delete_namespace(rest, ns)
