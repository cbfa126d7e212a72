"""Scenarios only an installed chart can show (issue 15): HCS as `helm install` puts it on a multi-node
cluster (e2e/chart/run: the local cluster with 3 kubelets, one simulated vendor profile each; or kind).

Runs after test_e2e_scenarios.py (file order); the last test uninstalls the release. Every check reads
the cluster from outside (API, kubectl, helm, the nodes' host directories), as a user would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import GiB, accel_pod, create, delete_pod, get_pod, name, run_to_completion, wait_phase
from e2e_helpers import wait_for as _wait

from hcs.kube import KubeError

pytestmark = [pytest.mark.e2e, pytest.mark.chart_only]

SEED = {"requests": {"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "100"}}
SLEEP = "echo started; sleep 3600"
COMPUTENODES = "/apis/hetero.zrs.io/v1alpha1/computenodes"



def _assignment(h: Any, pod_name: str, timeout: float = 30) -> dict[str, Any]:
    def ann() -> str:
        return str((get_pod(h, pod_name)["metadata"].get("annotations") or {}).get("hcs.io/assignment", ""))

    return dict(json.loads(_wait(ann, timeout, f"hcs.io/assignment on {pod_name}")))


def _devices(assignment: dict[str, Any]) -> list[str]:
    return sorted(d.get("uuid") or f"{d['vendor']}-{d.get('index', 0)}"
                  for c in assignment.get("containers", []) for d in c.get("devices", []))


def _hcs_image(h: Any) -> str:
    ds = h.rest.request("GET", f"/apis/apps/v1/namespaces/{h.release_namespace}/daemonsets/{h.release}-node-agent")
    return str(ds["spec"]["template"]["spec"]["containers"][0]["image"])


# ---------------------------------------------------------------------------------------------- install
def test_every_component_running_and_ready(hcs_e2e: Any) -> None:
    h = hcs_e2e
    nodes = h.nodes
    assert len(nodes) >= 3, nodes
    agents = h.pods("node-agent")
    assert sorted(p["spec"]["nodeName"] for p in agents if h.pod_ready(p)) == nodes, [
        (p["metadata"]["name"], p["spec"].get("nodeName"), p["status"].get("phase")) for p in agents]
    for p in agents:  # the init container ran to completion: it installed the interceptor on the host
        [init] = p["status"]["initContainerStatuses"]
        assert init["name"] == "install-interceptor" and init["state"]["terminated"]["exitCode"] == 0, init
    allocators = [p for p in h.pods("allocator") if h.pod_ready(p)]
    assert len(allocators) == 2, [p["metadata"]["name"] for p in h.pods("allocator")]
    for p in allocators:  # allocator + the hcs-scheduler's kube-scheduler, both Ready
        assert {c["name"] for c in p["status"]["containerStatuses"] if c["ready"]} == {"allocator", "kube-scheduler"}
    leaders = [p["metadata"]["name"] for p in allocators
               if (p["metadata"].get("labels") or {}).get("hcs.io/allocator-leader") == "true"]
    lease = h.rest.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{h.release_namespace}/leases/"
                                  f"{h.release}-allocator")
    assert leaders == [lease["spec"]["holderIdentity"]], (leaders, lease["spec"])
    # the hcs-scheduler leads from a Ready pod of this release (wait_ready waited for it: a Lease left by
    # the previous release's scheduler names a pod that is gone)
    sched = h.rest.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{h.release_namespace}/leases/"
                                  "hcs-scheduler")
    assert h.scheduler_leader() in {p["metadata"]["name"] for p in allocators}, sched["spec"]
    webhooks = [p for p in h.pods("webhook") if h.pod_ready(p)]
    dep = h.rest.request("GET", f"/apis/apps/v1/namespaces/{h.release_namespace}/deployments/{h.release}-webhook")
    assert len(webhooks) == dep["spec"]["replicas"] >= 2, (len(webhooks), dep["spec"]["replicas"])
    # TLS from the chart: the webhook configurations trust the CA in the chart-generated Secret
    secret = h.rest.request("GET", f"/api/v1/namespaces/{h.release_namespace}/secrets/{h.release}-webhook-tls")
    mwc = h.rest.request("GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"
                                f"{h.release}-webhook-mutate")
    assert {w["clientConfig"]["caBundle"] for w in mwc["webhooks"]} == {secret["data"]["ca.crt"]}


def test_interceptor_installed_on_every_node_by_the_init_container(hcs_e2e: Any) -> None:
    h = hcs_e2e
    image = _hcs_image(h)
    probe = accel_pod(name("lib"), image, {}, command="sha256sum /opt/hcs/lib/libhcs_interceptor.so")
    probe["spec"]["containers"][0]["command"] = ["sh", "-c", "sha256sum /opt/hcs/lib/libhcs_interceptor.so"]
    del probe["spec"]["containers"][0]["resources"]
    out = run_to_completion(h, probe)
    want = out.log.split()[0]
    for n in h.nodes:
        lib = h.read_node_file(n, "/usr/local/hcs/lib/libhcs_interceptor.so")
        assert hashlib.sha256(lib).hexdigest() == want, n


def test_kubectl_get_computenodes_shows_every_node_with_the_seed_columns(hcs_e2e: Any) -> None:
    h = hcs_e2e
    out = h.kubectl("get", "computenodes").stdout.splitlines()
    assert out[0].split() == ["NAME", "VENDOR", "NODE", "PHASE", "VRAM", "AGE"], out[0]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    for n in h.nodes:
        assert n in rows, (n, out)
        row = rows[n]
        assert row[2] == n and row[3] == "Ready", row
        assert row[1] == h.computenode(n)["spec"]["vendor"], row
        assert "/" in row[4], row  # allocatable / total VRAM


def test_seed_pods_spread_over_vendors_and_nodes(hcs_e2e: Any) -> None:
    """The seed's pod shape with a vendor preference each: placed on nodes of that vendor, on different nodes."""
    h = hcs_e2e
    placed: dict[str, str] = {}
    for vendor in ("nvidia", "ascend"):
        out = run_to_completion(h, accel_pod(name(vendor), h.cluster.busybox_image, SEED,
                                             annotations={"hcs.io/vendor": vendor}))
        node = out.pod["spec"]["nodeName"]
        devs = [d for c in out.assignment["containers"] for d in c["devices"]]
        assert {d["vendor"] for d in devs} == {vendor}, devs
        assert vendor in {d["vendor"] for d in h.computenode(node)["spec"]["devices"]}
        placed[vendor] = node
    assert set(placed.values()) <= set(h.nodes), placed


# ---------------------------------------------------------------------------------------------- quota
PROBE = r"""
import ctypes, os, sys
cuda = ctypes.CDLL("/opt/hcs/driver/lib/libcuda.so.1")
def ok(rc, what):
    if rc != 0:
        print("FAIL", what, rc); sys.exit(3)
ok(cuda.cuInit(0), "cuInit")
dev = ctypes.c_int(); ok(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ctx = ctypes.c_void_p(); ok(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
quota = int(open(os.environ["HCS_QUOTA_FILE"]).read().split()[1])
p1, p2 = ctypes.c_uint64(), ctypes.c_uint64()
at = cuda.cuMemAlloc_v2(ctypes.byref(p1), ctypes.c_size_t(quota))
past = cuda.cuMemAlloc_v2(ctypes.byref(p2), ctypes.c_size_t(1))
free, total = ctypes.c_size_t(), ctypes.c_size_t()
cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
print("RESULT", quota, at, past, total.value, os.environ.get("LD_PRELOAD", ""))
"""


def test_container_is_held_to_its_quota_by_the_daemonset_installed_interceptor(hcs_e2e: Any) -> None:
    h = hcs_e2e
    pod = accel_pod(name("quota"), _hcs_image(h), {"requests": {"ai.compute/vram": "16Gi"}},
                    annotations={"hcs.io/vendor": "nvidia"})
    c = pod["spec"]["containers"][0]
    c["command"] = ["python", "-c", PROBE]
    # the simulated CUDA runtime reads the node's profile (a real node has the driver instead)
    c["env"] = [{"name": "HCS_SIM_PROFILE", "value": "/sim/profile.json"}]
    c["volumeMounts"] = [{"name": "sim", "mountPath": "/sim", "readOnly": True}]
    pod["spec"]["volumes"] = [{"name": "sim", "hostPath": {"path": "/opt/hcs/sim", "type": "Directory"}}]
    out = run_to_completion(h, pod)
    line = next((ln for ln in out.log.splitlines() if ln.startswith("RESULT")), "")
    assert line, out.log
    _, quota, at, past, total, preload = line.split(maxsplit=5)
    assert int(quota) == 16 * GiB
    assert preload.endswith("libhcs_interceptor.so"), preload  # LD_PRELOAD from the node agent
    assert int(at) == 0, f"allocating exactly the quota failed: {line}"
    assert int(past) == 2, f"one byte past the quota must fail with CUDA_ERROR_OUT_OF_MEMORY (2): {line}"
    assert int(total) == 16 * GiB, f"cuMemGetInfo reports the quota, not the card: {line}"


# ---------------------------------------------------------------------------------------------- faults
def test_allocator_leader_killed_standby_takes_over_without_losing_reservations(hcs_e2e: Any) -> None:
    from hcs.kube import KubeError

    h = hcs_e2e
    keep = name("keep")
    create(h, accel_pod(keep, h.cluster.busybox_image, SEED, command=SLEEP))
    before = wait_phase(h, keep, ("Running",), timeout=120)
    held = _devices(_assignment(h, keep))
    old = h.leader()
    assert old
    h.rest.request("DELETE", f"/api/v1/namespaces/{h.release_namespace}/pods/{old}",
                   query={"gracePeriodSeconds": "0"})
    new = _wait(lambda: (lambda n: n if n and n != old else "")(h.leader()), 90, "a new allocator leader")
    # the new leader rebuilt its state from the API server: it still holds `keep`'s reservation
    node = before["spec"]["nodeName"]
    def holds() -> bool:
        import grpc

        try:
            return keep in h.allocator_holds(node)
        except grpc.RpcError:  # the leader Service still routes to the killed pod for a moment
            return False

    _wait(holds, 60, f"the new leader to hold {keep}'s reservation")
    # pods keep being placed
    after = [name("after") for _ in range(2)]
    try:
        for p in after:
            out = run_to_completion(h, accel_pod(p, h.cluster.busybox_image, SEED), timeout=120)
            assert out.assignment, out.pod["metadata"]
        cur = get_pod(h, keep)
        assert cur["status"]["phase"] == "Running"
        assert cur["status"]["containerStatuses"][0]["restartCount"] == 0
        assert _devices(_assignment(h, keep)) == held
        assert keep in h.allocator_holds(node)
    finally:
        delete_pod(h, keep)
    with contextlib.suppress(KubeError):
        assert h.leader() == new


def test_node_agent_pod_killed_daemonset_restarts_it_running_pods_undisturbed(hcs_e2e: Any) -> None:
    h = hcs_e2e
    keep = name("keep")
    create(h, accel_pod(keep, h.cluster.busybox_image, SEED, command=SLEEP))
    pod = wait_phase(h, keep, ("Running",), timeout=120)
    node = pod["spec"]["nodeName"]
    cid = pod["status"]["containerStatuses"][0]["containerID"]
    [agent] = [p for p in h.pods("node-agent") if p["spec"]["nodeName"] == node]
    old = agent["metadata"]["name"]
    try:
        h.rest.request("DELETE", f"/api/v1/namespaces/{h.release_namespace}/pods/{old}",
                       query={"gracePeriodSeconds": "0"})

        def replaced() -> bool:
            # a DaemonSet pod is created before it is bound: no spec.nodeName yet
            return any(p["spec"].get("nodeName") == node and p["metadata"]["name"] != old and h.pod_ready(p)
                       for p in h.pods("node-agent"))

        _wait(replaced, 120, f"the DaemonSet to restart the node agent on {node}")
        cur = get_pod(h, keep)
        cs = cur["status"]["containerStatuses"][0]
        assert cur["status"]["phase"] == "Running" and cs["containerID"] == cid and cs["restartCount"] == 0, cs
        # the new agent registered its device plugin, and the kubelet published that in a node status update
        # (until then the kubelet still counts the old plugin's slots as allocatable but has no endpoint:
        # a pod admitted in that window fails with UnexpectedAdmissionError, device-plugin semantics)
        def registered() -> bool:
            [cur_agent] = [p for p in h.pods("node-agent") if p["spec"].get("nodeName") == node and h.pod_ready(p)]
            r = h.kubectl("logs", "-n", h.release_namespace, cur_agent["metadata"]["name"], "-c", "node-agent",
                          check=False)
            return "registered ai.compute/slot with the kubelet" in r.stdout

        _wait(registered, 90, f"the new node agent on {node} to register its device plugin")
        time.sleep(11)  # > the kubelet's nodeStatusUpdateFrequency (10 s)
        _wait(lambda: h.slot_allocatable(node) > 0, 30, f"{node} to report allocatable slots")
        pinned = accel_pod(name("pinned"), h.cluster.busybox_image, SEED)
        pinned["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        out = run_to_completion(h, pinned, timeout=120)
        assert out.pod["spec"]["nodeName"] == node
    finally:
        delete_pod(h, keep)


def test_broken_simulated_profile_shows_a_computenode_with_a_reason(hcs_e2e: Any) -> None:
    h = hcs_e2e
    node = h.nodes[-1]
    profile = "/opt/hcs/sim/profile.json"
    good = h.read_node_file(node, profile)
    [agent] = [p for p in h.pods("node-agent") if p["spec"]["nodeName"] == node]
    try:
        h.write_node_file(node, profile, b'{"devices": [{"vendor": "nvidia", "memory_mib": "lots"}]')  # not JSON
        h.rest.request("DELETE", f"/api/v1/namespaces/{h.release_namespace}/pods/{agent['metadata']['name']}")

        def reason() -> str:
            cn = h.computenode(node)
            st = cn.get("status", {})
            conds = {c.get("type"): c for c in st.get("conditions") or []}
            text = json.dumps(st)
            flagged = "profile" in text.lower() or any(c.get("reason") for c in conds.values())
            return text if st.get("phase") not in (None, "Ready") and flagged else ""

        status = _wait(reason, 120, f"ComputeNode {node} to report the broken profile")
        assert "profile" in status.lower(), status
    finally:
        h.write_node_file(node, profile, good)
        for p in h.pods("node-agent"):
            if p["spec"]["nodeName"] == node:
                h.rest.request("DELETE", f"/api/v1/namespaces/{h.release_namespace}/pods/{p['metadata']['name']}")
    _wait(lambda: h.computenode(node).get("status", {}).get("phase") == "Ready", 180, f"{node} Ready again")
    _wait(lambda: h.slot_allocatable(node) > 0, 120, f"the device plugin on {node}")


# ---------------------------------------------------------------------------------------------- lifecycle
def test_helm_upgrade_rolls_without_failing_an_admission(hcs_e2e: Any) -> None:
    h = hcs_e2e
    attempts: list[tuple[float, int, str]] = []
    stop = threading.Event()
    manifest = accel_pod("dry-run", h.cluster.busybox_image, SEED)

    def admit() -> None:
        while not stop.is_set():
            manifest["metadata"]["name"] = name("dry")
            r = h.kubectl("create", "--dry-run=server", "-o", "json", "-n", h.namespace, "-f", "-",
                          input_text=json.dumps(manifest), check=False)
            mutated = r.returncode == 0 and json.loads(r.stdout)["spec"].get("schedulerName") == h.scheduler_name
            attempts.append((time.monotonic(), r.returncode if mutated or r.returncode else 99, r.stderr.strip()))
            time.sleep(0.2)

    t = threading.Thread(target=admit, daemon=True)
    t.start()
    try:
        time.sleep(2)
        h.helm("upgrade", h.release, str(Path(__file__).resolve().parents[2] / "helm" / "hcs"), "-n",
               h.release_namespace, "--reuse-values", "--set", "nodeAgent.reportInterval=7",
               "--set", "webhook.replicas=3", "--wait", "--timeout", "5m")
        time.sleep(3)
    finally:
        stop.set()
        t.join(30)
    failed = [a for a in attempts if a[1] != 0]
    assert len(attempts) >= 10, attempts
    assert not failed, f"{len(failed)} of {len(attempts)} admissions failed during the upgrade: {failed[:5]}"
    cm = h.rest.request("GET", f"/api/v1/namespaces/{h.release_namespace}/configmaps/{h.release}-node-agent")
    assert "reportInterval: 7" in cm["data"]["config.yaml"]
    dep = h.rest.request("GET", f"/apis/apps/v1/namespaces/{h.release_namespace}/deployments/{h.release}-webhook")
    assert dep["spec"]["replicas"] == 3 and dep["status"].get("readyReplicas") == 3, dep["status"]
    h.wait_ready()


@pytest.mark.parametrize("bad", [["--set-string", "nodeAgent.reportInterval=fast"],
                                 ["--set", "deviceClasses.vendors={nvidia,tpu}"],
                                 ["--set", "webhook.replicas=two"]])
def test_bad_values_fail_helm_install_with_a_schema_error(hcs_e2e: Any, bad: list[str]) -> None:
    """A wrong type or an unknown vendor stops `helm install` itself (values.schema.json): nothing is created."""
    h = hcs_e2e
    r = h.helm("install", "hcs-bad", str(Path(__file__).resolve().parents[2] / "helm" / "hcs"), "-n",
               "hcs-bad", "--create-namespace", *bad, check=False)
    assert r.returncode != 0, r.stdout
    assert "values don't meet the specifications of the schema" in r.stderr, r.stderr
    assert h.helm("status", "hcs-bad", "-n", "hcs-bad", check=False).returncode != 0


def test_zz_helm_uninstall_leaves_only_the_crds(hcs_e2e: Any) -> None:
    """Last: uninstalls the release. What stays is what the chart documents (helm/hcs/README.md,
    "Uninstall"): the ComputeNode CRD (crds.keep) with its ComputeNodes, and on each node the host
    directories the node agent owns (interceptorDir, stateDir), which running containers may still use."""
    h = hcs_e2e
    h.helm("uninstall", h.release, "-n", h.release_namespace, "--wait", "--timeout", "3m")
    sel = {"labelSelector": f"app.kubernetes.io/instance={h.release}"}
    checks = {
        "pods": f"/api/v1/namespaces/{h.release_namespace}/pods",
        "services": f"/api/v1/namespaces/{h.release_namespace}/services",
        "configmaps": f"/api/v1/namespaces/{h.release_namespace}/configmaps",
        "secrets": f"/api/v1/namespaces/{h.release_namespace}/secrets",
        "serviceaccounts": f"/api/v1/namespaces/{h.release_namespace}/serviceaccounts",
        "roles": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{h.release_namespace}/roles",
        "rolebindings": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{h.release_namespace}/rolebindings",
        "jobs": f"/apis/batch/v1/namespaces/{h.release_namespace}/jobs",  # the pre-delete hook's, once done
        "clusterroles": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "clusterrolebindings": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "mutating": "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        "validating": "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        "policies": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
        "deviceclasses": "/apis/resource.k8s.io/v1/deviceclasses",
    }

    # what the chart documents it keeps (docs/operations.md, "Assignment records"): the records' HMAC key, so a
    # reinstall still verifies the records running pods carry (the CRDs are kept too, as Helm does)
    kept = {"secrets": {f"{h.release}-record-key"}}

    def leftovers() -> dict[str, list[str]]:
        out = {}
        for what, path in checks.items():
            items = h.rest.request("GET", path, query=sel).get("items") or []
            names = [i["metadata"]["name"] for i in items if i["metadata"]["name"] not in kept.get(what, set())]
            if names:
                out[what] = names
        hooks = [w["metadata"]["name"] for kind in ("mutating", "validating")
                 for w in h.rest.request("GET", checks[kind]).get("items") or []
                 if any(x["name"].endswith("webhook.ai.compute") for x in w.get("webhooks") or [])]
        if hooks:
            out["webhook-configurations"] = hooks
        slices = [s["metadata"]["name"] for s in h.rest.request("GET", "/apis/resource.k8s.io/v1/resourceslices")
                  .get("items") or [] if s["spec"].get("driver") == "ai.compute"]
        if slices:
            out["resourceslices"] = slices
        # the leader-election Leases carry no release label: the pre-delete hook (templates/uninstall-hook.yaml)
        # stops the allocator pods while their RBAC exists and deletes both, so none names a pod that is gone
        leases = []
        for lease in (f"{h.release}-allocator", h.scheduler_name):
            try:
                h.rest.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{h.release_namespace}/leases/{lease}")
                leases.append(lease)
            except KubeError as exc:
                if exc.status != 404:
                    raise
        if leases:
            out["leases"] = leases
        return out

    deadline = time.monotonic() + 120
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(2)
    assert not left, f"left behind by helm uninstall: {left}"
    crd = h.rest.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/computenodes.hetero.zrs.io")
    assert crd["metadata"]["name"] == "computenodes.hetero.zrs.io"  # documented: crds.keep
    if h.target == "chart":  # host files: only the documented directories
        for n in h.nodes:
            root = h.node_root(n)
            plugins = sorted(p.name for p in (root / "var-lib-kubelet" / "device-plugins").iterdir()
                             if p.name != "kubelet.sock" and not p.name.startswith("kubelet_internal"))
            assert plugins == [], (n, plugins)
            cdi = sorted(p.name for d in ("etc-cdi", "run-cdi") for p in (root / d).iterdir())
            assert cdi == [], (n, cdi)
            assert not (root / "var-lib-kubelet" / "plugins_registry").exists() or not [
                p for p in (root / "var-lib-kubelet" / "plugins_registry").iterdir() if "ai.compute" in p.name], n
