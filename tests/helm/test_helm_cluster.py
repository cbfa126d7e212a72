"""The rendered chart against the local cluster's real API server and a real kube-scheduler.

* every rendered manifest (default, prod, dev, each mode) is accepted by a server-side dry run with
  strict field validation (CEL in the admission policies and webhook matchConditions is compiled by
  the server); the CRDs are applied for real first;
* the rendered KubeSchedulerConfiguration starts the real kube-scheduler, which takes its Lease and
  sends a pod asking for ai.compute/vram to the extender at the allocator Service.

Objects of API groups the local cluster does not serve (cert-manager.io, monitoring.coreos.com: their
CRDs are not installed there) are left out of the dry run; their shape is checked in test_helm_chart.py.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import container, render
from helm_chart_fixtures import Render

from hcs.kube import KubeError, KubeRest
from hcs.testing.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

TEST_NAMESPACE = "hcs-helm-test"
TRANSIENT = re.compile(r"connection refused|timeout|Timeout|ServiceUnavailable|TooManyRequests|etcdserver|EOF")
NOT_SERVED = ("cert-manager.io/", "monitoring.coreos.com/")
RENDERS = {
    "default": ((), {}),
    "prod": (("values-prod.yaml",), {}),
    "dev": (("values-dev.yaml",), {}),
    "devicePlugin": ((), {"mode": "devicePlugin"}),
    "dra": ((), {"mode": "dra"}),
    "both-all-options": ((), {"mode": "both", "webhook.imageMap": f"{TEST_NAMESPACE}/images",
                              "nodeAgent.simulated.enabled": True, "grafanaDashboard.enabled": True,
                              "nodeAgent.driverLibraryDirs": ["/opt/vendor/lib"]}),
}


def _kubectl(cluster: Cluster, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[
        str]:
    return cluster.kubectl(*args, input_text=stdin, check=check, timeout=180)


@pytest.fixture(scope="module")
def test_namespace(kube_cluster: Cluster) -> str:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEST_NAMESPACE}}
    _kubectl(kube_cluster, "apply", "-f", "-", stdin=json.dumps(ns))
    return TEST_NAMESPACE


def _apply_crds_for_real(cluster: Cluster, docs: list[dict[str, Any]]) -> None:
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crds
    _kubectl(cluster, "apply", "--server-side", "--force-conflicts", "--field-manager=hcs-helm-test", "-f", "-",
             stdin=yaml.safe_dump_all(crds))
    for crd in crds:
        _kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")


@pytest.mark.parametrize("name", list(RENDERS))
def test_rendered_manifests_pass_a_server_side_dry_run(kube_cluster: Cluster, helm_bin: str, test_namespace: str,
                                                       name: str) -> None:
    files, values = RENDERS[name]
    docs = render(files, values, namespace=test_namespace)
    _apply_crds_for_real(kube_cluster, docs)
    checked = [d for d in docs if d["kind"] != "CustomResourceDefinition"
               and not d["apiVersion"].startswith(NOT_SERVED)]
    assert len(checked) >= 20
    for _attempt in range(3):  # the shared cluster may be restarting or overloaded: retry only those errors
        result = _kubectl(kube_cluster, "apply", "--dry-run=server", "--server-side", "--force-conflicts",
                          "--validate=strict", "--field-manager=hcs-helm-test", "-f", "-",
                          stdin=yaml.safe_dump_all(checked), check=False)
        if result.returncode == 0 or not TRANSIENT.search(result.stderr):
            break
        time.sleep(3)
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(checked), result.stdout
    assert all("(server dry run)" in ln for ln in lines), result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rendered_scheduler_config_runs_the_real_kube_scheduler(kube_cluster: Cluster, helm_bin: str,
                                                                 test_namespace: str, tmp_path: Path,
                                                                 rendered: Render) -> None:
    scheduler_name = f"hcs-helm-test-{uuid.uuid4().hex[:6]}"
    docs = render((), {"scheduler.schedulerName": scheduler_name}, namespace=test_namespace)
    cm = next(d for d in docs if d["kind"] == "ConfigMap"
              and d["metadata"]["labels"].get("hcs.io/component-config") == "kube-scheduler")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    config["clientConnection"] = {"kubeconfig": str(kube_cluster.kubeconfig)}
    # the extender's client pair (mTLS, issue 16) as the pod mounts it, from the chart-generated Secret
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-extender-tls"))
    client_dir = tmp_path / "extender-client"
    client_dir.mkdir()
    for item in ("ca.crt", "client.crt", "client.key"):
        (client_dir / item).write_bytes(base64.b64decode(secret["data"][item]))
    for ext in config.get("extenders") or []:
        tls = ext.get("tlsConfig") or {}
        for key in ("certFile", "keyFile", "caFile"):
            if key in tls:
                tls[key] = str(client_dir / Path(tls[key]).name)
    (tmp_path / "scheduler.yaml").write_text(yaml.safe_dump(config))
    deploy = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-allocator"))
    flags = [a for a in container(deploy, "kube-scheduler")["command"][1:] if not a.startswith(("--config=",
                                                                                                "--cert-dir="))]
    kubeconfig = str(kube_cluster.kubeconfig)
    log = (tmp_path / "kube-scheduler.log").open("w")
    proc = subprocess.Popen([str(kube_cluster.tool("kube-scheduler")), f"--config={tmp_path / 'scheduler.yaml'}",
                             f"--cert-dir={tmp_path / 'certs'}", "--bind-address=127.0.0.1",
                             f"--secure-port={_free_port()}", f"--authentication-kubeconfig={kubeconfig}",
                             f"--authorization-kubeconfig={kubeconfig}", *flags],
                            stdout=log, stderr=subprocess.STDOUT)
    pod_name = f"asks-vram-{uuid.uuid4().hex[:6]}"
    try:
        def leader() -> str:
            assert proc.poll() is None, "kube-scheduler exited:\n" + (tmp_path / "kube-scheduler.log").read_text()
            r = _kubectl(kube_cluster, "-n", test_namespace, "get", "lease", scheduler_name, "-o",
                         "jsonpath={.spec.holderIdentity}", check=False)
            return r.stdout.strip() if r.returncode == 0 else ""

        wait_for(leader, timeout=90, what=f"Lease {test_namespace}/{scheduler_name} held by the kube-scheduler")
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": test_namespace},
            "spec": {"schedulerName": scheduler_name, "restartPolicy": "Never", "containers": [{
                "name": "main", "image": kube_cluster.busybox_image, "imagePullPolicy": "Never",
                "command": ["true"], "resources": {"requests": {"ai.compute/vram": "1Gi"},
                                                    "limits": {"ai.compute/vram": "1Gi"}}}]},
        }
        _kubectl(kube_cluster, "apply", "-f", "-", stdin=json.dumps(pod))
        service_host = f"hcs-allocator-leader.{test_namespace}.svc"  # the extender URL names the leader Service

        def extender_event() -> str:
            assert proc.poll() is None, "kube-scheduler exited:\n" + (tmp_path / "kube-scheduler.log").read_text()
            r = _kubectl(kube_cluster, "-n", test_namespace, "get", "events", "--field-selector",
                         f"involvedObject.name={pod_name}", "-o", "json")
            messages = [e.get("message") or e.get("note") or "" for e in json.loads(r.stdout)["items"]]
            return next((m for m in messages if service_host in m), "")

        # The allocator is not running: the scheduler's call to the extender at the Service fails, which
        # shows the rendered extender (URL, managed resource) is the one in use.
        message = wait_for(extender_event, timeout=90, what=f"a scheduling event naming {service_host}")
        assert f"{service_host}.cluster.local:8888/scheduler/filter" in message, message
        phase = _kubectl(kube_cluster, "-n", test_namespace, "get", "pod", pod_name, "-o",
                         "jsonpath={.status.phase}").stdout
        assert phase == "Pending"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        _kubectl(kube_cluster, "-n", test_namespace, "delete", "pod", pod_name, "--ignore-not-found", "--wait=false",
                 check=False)
        _kubectl(kube_cluster, "-n", test_namespace, "delete", "lease", scheduler_name, "--ignore-not-found",
                 check=False)


def _token_kubeconfig(admin_kubeconfig: Path, token: str, out: Path) -> Path:
    """A kubeconfig for the same API server that authenticates with ``token`` only."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = dict(admin["clusters"][0]["cluster"])
    ca = cluster.get("certificate-authority")
    if ca and not Path(ca).is_absolute():
        cluster["certificate-authority"] = str((admin_kubeconfig.parent / ca).resolve())
    out.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "agent",
        "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [{"name": "agent", "context": {"cluster": "c", "user": "agent"}}],
    }))
    return out


def test_node_agent_can_write_only_its_own_nodes_objects(kube_cluster: Cluster, helm_bin: str,
                                                         test_namespace: str, tmp_path: Path) -> None:
    """The chart's RBAC + ValidatingAdmissionPolicies, applied for real, with a token bound to a pod on the node:
    the agent may create its own node's ComputeNode and ResourceSlice and publish device status on its own
    node's claims, and is denied another node's."""
    release = "hcs-helm-test"
    docs = render((), {"mode": "both"}, namespace=test_namespace, release=release)
    _apply_crds_for_real(kube_cluster, docs)
    sa = next(d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("-node-agent"))
    kinds = ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    wanted = [d for d in docs if d is sa or (
        d["kind"] in kinds and d["metadata"]["name"].startswith(f"{release}-node-agent"))]
    assert len(wanted) == 7, [d["metadata"]["name"] for d in wanted]
    node = kube_cluster.node_name
    pod_name = f"agent-{uuid.uuid4().hex[:6]}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": test_namespace},
           "spec": {"nodeName": node, "serviceAccountName": sa["metadata"]["name"], "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "main", "image": kube_cluster.busybox_image, "imagePullPolicy": "Never",
                                    "command": ["sleep", "600"]}]}}
    try:
        _kubectl(kube_cluster, "apply", "--server-side", "--force-conflicts", "--field-manager=hcs-helm-test", "-f",
                 "-", stdin=yaml.safe_dump_all(wanted))
        _kubectl(kube_cluster, "apply", "-f", "-", stdin=json.dumps(pod))
        token = _kubectl(kube_cluster, "-n", test_namespace, "create", "token", sa["metadata"]["name"],
                         "--bound-object-kind=Pod", f"--bound-object-name={pod_name}", "--duration=10m").stdout.strip()
        agent_kubeconfig = _token_kubeconfig(kube_cluster.kubeconfig, token, tmp_path / "agent.kubeconfig")

        def as_agent(obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(kube_cluster.tool("kubectl")), f"--kubeconfig={agent_kubeconfig}", "create",
                                   "--dry-run=server", "-o", "name", "-f", "-"], input=json.dumps(obj),
                                  capture_output=True, text=True, timeout=60, check=False)

        def computenode(on: str) -> dict[str, Any]:  # the policy looks at spec.nodeName, not at the name
            return {"apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNode",
                    "metadata": {"name": f"{on}-helm-test-{uuid.uuid4().hex[:4]}"},
                    "spec": {"nodeName": on, "vendor": "none", "devices": []}}

        def slice_(on: str) -> dict[str, Any]:
            return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                    "metadata": {"name": f"{on}-helm-test-{uuid.uuid4().hex[:4]}"},
                    "spec": {"driver": "ai.compute", "nodeName": on, "devices": [],
                             "pool": {"name": on, "generation": 1, "resourceSliceCount": 1}}}

        other = f"not-{node}"
        # Policies load asynchronously after creation: wait until the other node's object is denied by them.
        wait_for(lambda: "its own node" in as_agent(computenode(other)).stderr, timeout=60,
                 what="the ComputeNode policy to deny another node's object")
        wait_for(lambda: "its own node" in as_agent(slice_(other)).stderr, timeout=60,
                 what="the ResourceSlice policy to deny another node's slice")
        own = as_agent(computenode(node))
        assert own.returncode == 0, own.stderr
        own_slice = as_agent(slice_(node))
        assert own_slice.returncode == 0, own_slice.stderr
        denied = as_agent(computenode(other))
        assert denied.returncode != 0 and f"node '{node}' may only write ComputeNode" in denied.stderr, denied.stderr
        # Claim status (status.devices after prepare): only on claims allocated from its own node's pool.
        from kubernetes import config as kube_config

        admin = KubeRest(kube_config.new_client_from_config(config_file=str(kube_cluster.kubeconfig)))
        claim_of = {}
        for on in (node, other):  # allocated as the scheduler does: results + the node it selects
            name = f"claim-{uuid.uuid4().hex[:6]}"
            claim = admin.request("POST", f"/apis/resource.k8s.io/v1/namespaces/{test_namespace}/resourceclaims",
                                  body={"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                                        "metadata": {"name": name}, "spec": {"devices": {"requests": [
                                            {"name": "gpu", "exactly": {"deviceClassName": "vram.ai.compute"}}]}}})
            claim["status"] = {"allocation": {
                "devices": {"results": [{"request": "gpu", "driver": "ai.compute", "pool": on, "device": "nvidia-0"}]},
                "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [on]}]}]}}}
            admin.request("PUT", f"/apis/resource.k8s.io/v1/namespaces/{test_namespace}/resourceclaims/{name}/status",
                          body=claim)
            claim_of[on] = name

        agent = KubeRest(kube_config.new_client_from_config(config_file=str(agent_kubeconfig)))

        def patch_status(on: str) -> str:
            """"" when the agent may patch the claim's status, else the API server's refusal."""
            body = {"status": {"devices": [{"driver": "ai.compute", "pool": on, "device": "nvidia-0",
                                            "data": {"vendor": "nvidia"}}]}}
            try:  # PATCH only, as the DRA plugin does (no GET of the status subresource)
                agent.request("PATCH", f"/apis/resource.k8s.io/v1/namespaces/{test_namespace}/resourceclaims/"
                              f"{claim_of[on]}/status", body=body, content_type="application/merge-patch+json")
            except KubeError as exc:
                return str(exc)
            return ""

        assert "arbitrary-node:patch" in patch_status(other)  # the API server's node authorization
        assert patch_status(node) == ""
        # RBAC: no rights beyond the chart's rules, e.g. no Secrets.
        secrets = subprocess.run([str(kube_cluster.tool("kubectl")), f"--kubeconfig={agent_kubeconfig}", "auth",
                                  "can-i", "list", "secrets", "-A"], capture_output=True, text=True, timeout=60,
                                 check=False)
        assert secrets.stdout.strip() == "no"
    finally:
        _kubectl(kube_cluster, "-n", test_namespace, "delete", "pod", pod_name, "--ignore-not-found", "--wait=false",
                 check=False)
        _kubectl(kube_cluster, "delete", "--ignore-not-found", "--wait=false", "-f", "-",
                 stdin=yaml.safe_dump_all(wanted), check=False)
        # the claims made "allocated" above hold real devices of the local node's pool (nvidia-0): left behind,
        # they starve later DRA tests on this long-lived cluster (an island of 4 could no longer be found)
        _kubectl(kube_cluster, "-n", test_namespace, "delete", "resourceclaims", "--all", "--ignore-not-found",
                 "--wait=false", check=False)
