"""Sub-health end to end on the local cluster: a failing device's DRA taint evicts a pod, which is re-placed.

The whole chain in one test, with real parts: the simulated NVML (a private copy of the 8-GPU A100
profile and its fault file) → HealthMonitor's graded verdict → the DRA plugin's ResourceSlice device
taint (``ai.compute/failing``, effect NoExecute) on the real kube-apiserver → kube-controller-manager's
device-taint eviction of the pod whose claim does not tolerate it → the ReplicaSet's replacement pod,
allocated by the real kube-scheduler on a healthy device → Events on the Node and on the evicted pod.

As in tests/dra/test_dra_cluster.py the node is kubelet-less (created here), so the test plays the
kubelet's part once: it confirms the evicted pod's deletion (a kubelet would, after stopping it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dra_helpers import pod_with_claim  # noqa: E402

from hcs.devices.health import HealthMonitor  # noqa: E402
from hcs.devices.inventory import discover  # noqa: E402
from hcs.kube import RESOURCE_API, KubeError, KubeRest  # noqa: E402
from hcs.kubeletsim.dra import DraKubeletSim  # noqa: E402
from hcs.node.dra.config import DraConfig  # noqa: E402
from hcs.node.dra.plugin import DraPlugin  # noqa: E402
from hcs.node.subhealth_events import EventingHealthSource  # noqa: E402
from hcs.testing.kube_objects import (  # noqa: E402
    delete_namespace,
    delete_node,
    ensure_fake_node,
    ensure_namespace,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "driver/build/lib/libnvidia-ml.so.1").exists(),
    reason="simulated drivers not built (run `make dev`)")]

ROOT = Path(__file__).resolve().parents[2]
NODE = f"hcs-subhealth-node-{os.getpid()}"
NS = f"hcs-subhealth-{os.getpid()}"
DRIVER = "ai.compute"


def _claim_device(rest: KubeRest, pod: dict[str, Any]) -> str | None:
    statuses = (pod.get("status") or {}).get("resourceClaimStatuses") or []
    name = statuses[0].get("resourceClaimName") if statuses else None
    if not name:
        return None
    claim = rest.request("GET", f"{RESOURCE_API}/namespaces/{NS}/resourceclaims/{name}")
    results = (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or []
    return str(results[0]["device"]) if results else None


def _pods(rest: KubeRest) -> list[dict[str, Any]]:
    return rest.request("GET", f"/api/v1/namespaces/{NS}/pods", query={"labelSelector": "app=subhealth-e2e"}
                        ).get("items") or []


def _slice_device(rest: KubeRest, name: str) -> dict[str, Any]:
    items = rest.request("GET", f"{RESOURCE_API}/resourceslices",
                         query={"fieldSelector": f"spec.nodeName={NODE},spec.driver={DRIVER}"}).get("items") or []
    return next(d for s in items for d in s["spec"].get("devices") or [] if d["name"] == name)


def _events(rest: KubeRest, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    sel = f"involvedObject.kind={kind},involvedObject.name={name}"
    return rest.request("GET", f"/api/v1/namespaces/{namespace}/events", query={"fieldSelector": sel}
                        ).get("items") or []


@pytest.fixture
def sim_node(tmp_path: Path) -> Any:
    profile = tmp_path / "a100.json"
    shutil.copy(ROOT / "driver/profiles/a100-80g-nvlink-8.json", profile)
    faults = tmp_path / "a100.faults"
    faults.write_text("")
    saved = {k: os.environ.get(k) for k in ("HCS_SIM_PROFILE", "HCS_SIM_FAULTS", "HCS_SIM_CLOCK")}
    os.environ.update(HCS_SIM_PROFILE=str(profile), HCS_SIM_FAULTS=str(faults))
    os.environ.pop("HCS_SIM_CLOCK", None)
    try:
        yield discover(), faults
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_failing_device_taint_evicts_pod_and_it_is_replaced_on_a_healthy_device(api_client, sim_node, tmp_path):
    rest = KubeRest(api_client)
    inventory, faults = sim_node
    ensure_fake_node(rest, NODE)
    ensure_namespace(rest, NS)
    cfg = DraConfig(node_name=NODE, plugins_registry=str(tmp_path / "registry"), plugin_dir=str(tmp_path / "plugin"),
                    cdi_dir=str(tmp_path / "cdi"), interceptor_host_dir=str(tmp_path / "lib"))
    (tmp_path / "lib").mkdir()
    monitor = HealthMonitor(inventory, poll_interval_s=0.2)
    source = EventingHealthSource(monitor, rest, NODE, DRIVER, {d.key: d.uuid for d in inventory.devices})
    plugin = DraPlugin(cfg, inventory.devices, api_client, health_source=source)
    plugin.start()
    kubelet = DraKubeletSim(tmp_path / "registry")
    kubelet.register()
    rs_path = f"/apis/apps/v1/namespaces/{NS}/replicasets"
    try:
        assert plugin.slices is not None and plugin.slices.wait_synced(30), plugin.slices.last_error
        for _kind, path, body in _objects():
            try:
                rest.request("POST", path.format(ns=NS), body=body)
            except KubeError as exc:
                if exc.status != 409:
                    raise
        template = pod_with_claim("unused", NODE, template="subhealth-16gi")
        template["metadata"] = {"labels": {"app": "subhealth-e2e"}}
        rest.request("POST", rs_path, body={
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "subhealth-e2e"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "subhealth-e2e"}}, "template": template}})

        # 1. the scheduler allocates the pod's claim on some device
        first = wait_for(lambda: next(((p, d) for p in _pods(rest) if (d := _claim_device(rest, p))), None), 90)
        assert first, "kube-scheduler did not allocate the first pod's claim"
        pod0, dev0 = first
        assert not _slice_device(rest, dev0).get("taints")

        # 2. that device fails (a double-bit ECC error in the simulated NVML) → graded failing
        index = int(dev0.rsplit("-", 1)[1])
        with faults.open("a") as f:
            f.write(f"nvidia {index} ecc double 1\n")
        taint = wait_for(lambda: _slice_device(rest, dev0).get("taints"), 30)
        assert taint, "no device taint on the failing device"
        assert taint[0]["effect"] == "NoExecute" and taint[0]["key"] == f"{DRIVER}/failing"
        assert "double-bit" in taint[0]["value"]
        assert monitor.verdicts()[dev0].grade.label == "failing"

        # 3. kube-controller-manager evicts the pod (its claim does not tolerate the taint)
        name0 = pod0["metadata"]["name"]

        def evicted() -> bool:
            try:
                p = rest.request("GET", f"/api/v1/namespaces/{NS}/pods/{name0}")
            except KubeError as exc:
                return exc.status == 404
            return bool(p["metadata"].get("deletionTimestamp"))

        assert wait_for(evicted, 90), "the pod on the failing device was not evicted"
        try:  # the kubelet's part on a kubelet-less node: confirm the deletion
            rest.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name0}", query={"gracePeriodSeconds": "0"})
        except KubeError as exc:
            if exc.status != 404:
                raise

        # 4. the ReplicaSet's replacement is allocated on a healthy device
        second = wait_for(lambda: next(((p, d) for p in _pods(rest) if p["metadata"]["name"] != name0
                                        and not p["metadata"].get("deletionTimestamp")
                                        and (d := _claim_device(rest, p))), None), 90)
        assert second, "the replacement pod was not allocated"
        _, dev1 = second
        assert dev1 != dev0
        assert not _slice_device(rest, dev1).get("taints")

        # 5. Events: on the Node and on the evicted pod, with the reason
        node_events = wait_for(lambda: [e for e in _events(rest, "default", "Node", NODE)
                                        if e["reason"] == "DeviceFailing"], 30)
        assert node_events and dev0 in node_events[0]["message"] and "double-bit" in node_events[0]["message"]
        pod_events = wait_for(lambda: [e for e in _events(rest, NS, "Pod", name0) if e["reason"] == "DeviceFailing"],
                              30)
        assert pod_events, "no DeviceFailing event on the evicted pod"
    finally:
        kubelet.close()
        plugin.stop()
        if plugin.slices is not None:
            plugin.slices.delete_all()
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"{rs_path}/subhealth-e2e", query={"propagationPolicy": "Background"})
        for p in _pods(rest):
            with contextlib.suppress(KubeError):
                rest.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{p['metadata']['name']}",
                             query={"gracePeriodSeconds": "0"})
        for e in _events(rest, "default", "Node", NODE):
            with contextlib.suppress(KubeError):
                rest.request("DELETE", f"/api/v1/namespaces/default/events/{e['metadata']['name']}")
        delete_namespace(rest, NS)
        delete_node(rest, NODE)


def _objects() -> list[tuple[str, str, dict[str, Any]]]:
    import yaml

    out: list[tuple[str, str, dict[str, Any]]] = []
    for d in yaml.safe_load_all((ROOT / "examples/dra/deviceclasses.yaml").read_text()):
        if d and d.get("kind") == "DeviceClass":
            out.append(("DeviceClass", f"{RESOURCE_API}/deviceclasses", d))
    out.append(("ResourceClaimTemplate", f"{RESOURCE_API}/namespaces/{{ns}}/resourceclaimtemplates", {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": "subhealth-16gi"},
        "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": "vram.ai.compute", "capacity": {"requests": {"memory": "16Gi"}}}}]}}}}))
    return out
