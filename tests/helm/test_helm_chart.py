"""The chart in helm/hcs, rendered by the real helm: lint, renders per values file and mode, invariants.

Skipped with a reason only when helm is absent locally; in CI (CI=true) a missing helm fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import (
    CHART,
    NAMESPACE,
    REPO_ROOT,
    HelmError,
    component_configs,
    container,
    find,
    helm,
    one,
    render,
)
from helm_chart_fixtures import Render

MODES = ("devicePlugin", "dra", "both")
VALUES_FILES = ((), ("values-prod.yaml",), ("values-dev.yaml",))
CORE_KINDS_WITH_NAMESPACE = {"ConfigMap", "Secret", "Service", "ServiceAccount", "Deployment", "DaemonSet",
                             "Role", "RoleBinding", "PodDisruptionBudget"}

def _values(*files: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}

    def merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    for f in ("values.yaml", *files):
        merge(merged, yaml.safe_load((CHART / f).read_text()))
    return merged


# ---------------------------------------------------------------- lint and render


@pytest.mark.parametrize("values_files", VALUES_FILES, ids=["default", "prod", "dev"])
def test_helm_lint_is_clean(helm_bin: str, values_files: tuple[str, ...]) -> None:
    args = ["lint", str(CHART), "--strict", "--namespace", NAMESPACE, "--kube-version", "1.37.2"]
    for f in values_files:
        args += ["-f", str(CHART / f)]
    result = helm(*args, helm_bin=helm_bin, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("mode", MODES)
def test_helm_lint_each_mode(helm_bin: str, mode: str) -> None:
    result = helm("lint", str(CHART), "--strict", "--set", f"mode={mode}", "--kube-version", "1.37.2",
                  helm_bin=helm_bin, check=False)
    assert result.returncode == 0 and "[WARNING]" not in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("values_files", VALUES_FILES, ids=["default", "prod", "dev"])
@pytest.mark.parametrize("mode", MODES)
def test_render_parses_into_well_formed_unique_objects(rendered: Render, values_files: tuple[str, ...],
                                                       mode: str) -> None:
    docs = rendered(values_files, mode=mode)
    assert docs, "nothing rendered"
    seen: set[tuple[str, str, str]] = set()
    for d in docs:
        assert isinstance(d.get("apiVersion"), str) and isinstance(d.get("kind"), str), d
        meta = d["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 253, meta
        if d["kind"] in CORE_KINDS_WITH_NAMESPACE:
            assert meta.get("namespace"), f"{d['kind']} {meta['name']} has no namespace"
        key = (d["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        for value in (meta.get("labels") or {}).values():
            assert isinstance(value, str), f"{d['kind']} {meta['name']}: label value {value!r} is not a string"
    for cm in find(docs, "ConfigMap"):
        for key, text in cm.get("data", {}).items():
            if key.endswith(".yaml"):
                assert isinstance(yaml.safe_load(text), dict), f"ConfigMap {cm['metadata']['name']} {key}"
            if key.endswith(".json"):
                json.loads(text)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "DaemonSet", "Deployment", "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration", "ClusterRole", "ValidatingAdmissionPolicy"} <= kinds


def test_bad_values_fail_with_a_message_naming_the_value(helm_bin: str) -> None:
    with pytest.raises(HelmError) as exc:
        render(set_values={"mode": "gpu"})
    assert "mode" in exc.value.stderr and "devicePlugin" in exc.value.stderr
    with pytest.raises(HelmError) as exc:
        render(set_values={"webhook.failurePolicy": "Never"})
    assert "failurePolicy" in exc.value.stderr
    with pytest.raises(HelmError) as exc:
        render(set_values={"scheduler.replicas": 2, "scheduler.leaderElection.enabled": False})
    assert "leaderElection" in exc.value.stderr
    with pytest.raises(HelmError) as exc:
        render(set_values={"nodeAgent.cpuAffinity": "fast"})
    assert "cpuAffinity" in exc.value.stderr
    with pytest.raises(HelmError) as exc:
        render(set_values={"scheduler.startBurstPerNode": -1})
    assert "startBurstPerNode" in exc.value.stderr


# ---------------------------------------------------------------- values keep the seed's keys and defaults


def test_values_keep_the_seed_defaults() -> None:
    v = _values()
    assert v["nodeAgent"]["enabled"] is True
    assert v["nodeAgent"]["logLevel"] == "info"
    assert v["nodeAgent"]["reportInterval"] == 30
    assert v["scheduler"]["enabled"] is True
    assert v["scheduler"]["replicas"] == 2  # issue 18: a leader and a hot standby
    assert v["scheduler"]["leaderElection"]["enabled"] is True
    assert v["webhook"]["enabled"] is True
    assert v["webhook"]["replicas"] == 2
    assert v["webhook"]["failurePolicy"] == "Fail"
    assert v["scheduler"]["exchangeRates"] == {"a100": 1.0, "a800": 0.95, "h100": 1.5, "910b": 0.85,
                                               "hygon-dcu": 0.6}
    assert v["mode"] in MODES
    assert v["image"]["repository"] and "tag" in v["image"]


def test_default_render_follows_the_seed_defaults(rendered: Render) -> None:
    docs = rendered()
    configs = component_configs(docs)
    agent = one(docs, "DaemonSet")
    assert "--log-level=info" in container(agent, "node-agent")["args"]
    assert configs["node"]["node"]["reportInterval"] == 30
    alloc = one(docs, "Deployment", "hcs-allocator")
    assert alloc["spec"]["replicas"] == 2
    assert configs["allocator"]["allocator"]["leaseName"] == "hcs-allocator"
    assert configs["kube-scheduler"]["leaderElection"]["leaderElect"] is True
    assert one(docs, "Deployment", "hcs-webhook")["spec"]["replicas"] == 2
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert {w["failurePolicy"] for w in one(docs, kind)["webhooks"]} == {"Fail"}
    rates = {"a100": 1.0, "a800": 0.95, "h100": 1.5, "910b": 0.85, "hygon-dcu": 0.6}
    assert configs["allocator"]["exchangeRates"] == rates
    assert configs["node"]["exchangeRates"] == rates


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
def test_webhook_failure_policy_follows_the_value(rendered: Render, policy: str) -> None:
    docs = rendered(webhook__failurePolicy=policy)
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert {w["failurePolicy"] for w in one(docs, kind)["webhooks"]} == {policy}


def test_components_can_be_switched_off(rendered: Render) -> None:
    docs = rendered(nodeAgent__enabled=False, scheduler__enabled=False, webhook__enabled=False)
    assert not find(docs, "DaemonSet") and not find(docs, "Deployment")
    assert not find(docs, "MutatingWebhookConfiguration") and not find(docs, "ServiceAccount")
    assert find(docs, "CustomResourceDefinition")


def test_exchange_rate_override_reaches_every_component(rendered: Render) -> None:
    configs = component_configs(rendered(scheduler__exchangeRates__h100=1.6))
    assert configs["allocator"]["exchangeRates"]["h100"] == 1.6
    assert configs["node"]["exchangeRates"]["h100"] == 1.6
    assert configs["node"]["exchangeRates"]["a100"] == 1.0


# ---------------------------------------------------------------- RBAC


@pytest.mark.parametrize("values_files", VALUES_FILES, ids=["default", "prod", "dev"])
@pytest.mark.parametrize("mode", MODES)
def test_rbac_has_no_wildcards(rendered: Render, values_files: tuple[str, ...], mode: str) -> None:
    docs = rendered(values_files, mode=mode, webhook__imageMap="hcs-system/images")
    rules = [(d["kind"], d["metadata"]["name"], r) for d in docs if d["kind"] in ("ClusterRole", "Role")
             for r in d.get("rules", [])]
    assert rules
    for kind, name, rule in rules:
        for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
            assert "*" not in rule.get(field, []), f"{kind} {name}: wildcard in {field}: {rule}"
        assert rule["verbs"], f"{kind} {name}: empty verbs"
        if "" in rule["apiGroups"]:
            assert not {"secrets", "escalate", "bind", "impersonate"} & set(rule["resources"] + rule["verbs"]), rule


def test_node_agent_writes_are_restricted_to_its_own_node(rendered: Render) -> None:
    docs = rendered(mode="both")
    sa = one(docs, "ServiceAccount", "hcs-node-agent")
    user = f"system:serviceaccount:{NAMESPACE}:{sa['metadata']['name']}"
    # node-restriction.yaml's policies (assignment-records.yaml and pod-writers.yaml are tested in
    # tests/security/test_sec_records_*)
    policies = {p["metadata"]["name"]: p for p in find(docs, "ValidatingAdmissionPolicy")
                if p["metadata"]["name"] in ("hcs-node-agent-computenodes", "hcs-node-agent-resourceslices")}
    bindings = {b["spec"]["policyName"]: b for b in find(docs, "ValidatingAdmissionPolicyBinding")}
    covered = set()
    for name, policy in policies.items():
        spec = policy["spec"]
        assert bindings[name]["spec"]["validationActions"] == ["Deny"]
        assert spec["failurePolicy"] == "Fail"
        assert user in spec["matchConditions"][0]["expression"]
        assert "authentication.kubernetes.io/node-name" in json.dumps(spec["variables"])
        for rule in spec["matchConstraints"]["resourceRules"]:
            assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
            covered.update(rule["resources"])
    assert {"computenodes", "computenodes/status", "resourceslices"} <= covered
    # Claim status: the API server itself ties status.devices writes to the claim's node through the
    # per-driver "associated-node:patch" verb on resourceclaims/driver (never "arbitrary-node").
    role = one(docs, "ClusterRole", "hcs-node-agent")
    driver_rules = [r for r in role["rules"] if "resourceclaims/driver" in r["resources"]]
    assert driver_rules == [{"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims/driver"],
                             "resourceNames": ["ai.compute"], "verbs": ["associated-node:patch"]}]
    covered |= {"resourceclaims/status", "resourceclaims/driver"}
    # RBAC lets the agent write exactly the resources the policies cover (and nothing else).
    role = one(docs, "ClusterRole", "hcs-node-agent")
    writes = {res for r in role["rules"] if {"create", "update", "patch", "delete"} & set(r["verbs"])
              for res in r["resources"] if res != "events"}
    assert writes <= covered, writes - covered
    # devicePlugin mode: no DRA rights, no slice policy.
    docs = rendered(mode="devicePlugin")
    role = one(docs, "ClusterRole", "hcs-node-agent")
    assert not any("resource.k8s.io" in r["apiGroups"] for r in role["rules"])
    assert [p["metadata"]["name"] for p in find(docs, "ValidatingAdmissionPolicy")
            if p["metadata"]["name"].startswith("hcs-node-agent-")] == [
        "hcs-node-agent-computenodes"]


# ---------------------------------------------------------------- CRDs, DeviceClasses, webhook shape


def test_chart_crds_are_byte_identical_copies_of_hcs_node_crds(rendered: Render) -> None:
    source_dir = REPO_ROOT / "hcs" / "node" / "crds"
    sources = sorted(p.name for p in source_dir.glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml"))
    assert sources and sources == copies, "sync with: make chart-crds"
    for name in sources:
        assert (CHART / "files" / "crds" / name).read_bytes() == (source_dir / name).read_bytes(), (
            f"helm/hcs/files/crds/{name} differs from hcs/node/crds/{name}; run: make chart-crds")
    docs = rendered()
    for name in sources:
        src = yaml.safe_load((source_dir / name).read_text())
        crd = one(docs, "CustomResourceDefinition", src["metadata"]["name"])
        assert crd["spec"] == src["spec"]
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not find(rendered(crds__install=False), "CustomResourceDefinition")


def test_device_classes_match_the_dra_examples(rendered: Render) -> None:
    examples = REPO_ROOT / "examples" / "dra" / "deviceclasses.yaml"
    if not examples.exists():
        pytest.skip("examples/dra/deviceclasses.yaml not present")
    expected = {d["metadata"]["name"]: d["spec"] for d in yaml.safe_load_all(examples.read_text()) if d}
    for mode in ("dra", "both"):
        got = {d["metadata"]["name"]: d["spec"] for d in find(rendered(mode=mode), "DeviceClass")}
        assert got == expected
    assert not find(rendered(mode="devicePlugin"), "DeviceClass")


def test_webhook_configurations_match_the_webhook_reference(rendered: Render) -> None:
    manifests = pytest.importorskip("hcs.webhook.manifests")
    docs = rendered()
    svc = one(docs, "Service", "hcs-webhook")
    port = svc["spec"]["ports"][0]["port"]
    expected = manifests.webhook_configurations(ca_bundle="CA", service=(NAMESPACE, "hcs-webhook", port),
                                                exclude_namespaces=("kube-system", NAMESPACE),
                                                record_writes=False)  # records.admissionPolicy guards them
    for ref in expected:
        got = one(docs, ref["kind"])
        assert got["metadata"]["name"] == ref["metadata"]["name"]
        assert len(got["webhooks"]) == len(ref["webhooks"])
        for g, r in zip(got["webhooks"], ref["webhooks"], strict=True):
            g = json.loads(json.dumps(g))
            g["clientConfig"]["caBundle"] = "CA"
            assert g == r


def test_webhook_mode_follows_the_chart_mode(rendered: Render) -> None:
    assert component_configs(rendered(mode="devicePlugin"))["webhook"]["webhook"]["mode"] == "device-plugin"
    assert component_configs(rendered(mode="both"))["webhook"]["webhook"]["mode"] == "device-plugin"
    dra = component_configs(rendered(mode="dra"))["webhook"]["webhook"]
    assert dra["mode"] == "dra" and dra["dra"]["deviceClass"] == "vram.ai.compute"
    docs = rendered(mode="dra")
    verbs = {v for r in one(docs, "ClusterRole", "hcs-webhook")["rules"] if "resourceclaimtemplates" in r["resources"]
             for v in r["verbs"]}
    assert "create" in verbs


# ---------------------------------------------------------------- node agent, scheduler


def _host_paths(ds: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"] if "hostPath" in v}


@pytest.mark.parametrize("mode", MODES)
def test_node_agent_mounts_follow_the_mode(rendered: Render, mode: str) -> None:
    docs = rendered(mode=mode)
    ds = one(docs, "DaemonSet")
    paths = set(_host_paths(ds).values())
    assert {"/var/run/cdi", "/dev", "/usr/local/hcs/lib", "/var/lib/hcs", "/run/hcs"} <= paths
    dp = {"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources"}
    dra = {"/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins"}
    assert (dp <= paths) == (mode != "dra")
    assert (dra <= paths) == (mode != "devicePlugin")
    mounts = {m["mountPath"] for c in ds["spec"]["template"]["spec"]["containers"] for m in c["volumeMounts"]}
    assert paths - {"/"} <= mounts, "every host path is mounted at the same path (CDI specs name host paths)"
    # ... except the host's root, read-only at /host: where the agent checks which driver dirs exist
    host_root = [m for c in ds["spec"]["template"]["spec"]["containers"] for m in c["volumeMounts"]
                 if m["mountPath"] == "/host"]
    assert host_root and all(m.get("readOnly") for m in host_root), host_root
    pod_spec = ds["spec"]["template"]["spec"]
    assert all({"name": "HCS_HOST_ROOT", "value": "/host"} in c["env"] for c in pod_spec["containers"])
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    names = [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]]
    assert names == (["node-agent"] if mode == "devicePlugin" else ["node-agent", "dra-plugin"])
    assert ("dra.yaml" in one(docs, "ConfigMap", "hcs-node-agent")["data"]) == (mode != "devicePlugin")
    node = component_configs(docs)["node"]["node"]
    assert node["devicePluginDir"] == "/var/lib/kubelet/device-plugins"
    assert node["cdiDir"] == "/var/run/cdi" and node["interceptorDir"] == "/usr/local/hcs/lib"
    init = ds["spec"]["template"]["spec"]["initContainers"][0]
    assert "libhcs_interceptor.so" in " ".join(init["command"])


def test_simulated_devices_and_driver_dirs(rendered: Render) -> None:
    docs = rendered(nodeAgent__simulated__enabled=True, nodeAgent__driverLibraryDirs=["/opt/vendor/lib"])
    ds = one(docs, "DaemonSet")
    env = {e["name"]: e.get("value") for e in container(ds, "node-agent")["env"]}
    assert env["HCS_SIM_PROFILE"] == "/opt/hcs/sim/profile.json"
    assert env["HCS_DRIVER_PATH"] == "/opt/hcs/driver/lib:/opt/vendor/lib"
    assert {"/opt/hcs/sim", "/opt/vendor/lib"} <= set(_host_paths(ds).values())
    assert component_configs(docs)["node"]["node"]["deviceIsolation"] is False
    env = {e["name"] for e in container(one(rendered(), "DaemonSet"), "node-agent")["env"]}
    assert "HCS_SIM_PROFILE" not in env and "HCS_DRIVER_PATH" not in env


def test_scheduler_profile_and_extender(rendered: Render) -> None:
    docs = rendered()
    cfg = component_configs(docs)["kube-scheduler"]
    assert cfg["apiVersion"] == "kubescheduler.config.k8s.io/v1" and cfg["kind"] == "KubeSchedulerConfiguration"
    assert [p["schedulerName"] for p in cfg["profiles"]] == ["hcs-scheduler"]
    (ext,) = cfg["extenders"]
    assert {m["name"]: m["ignoredByScheduler"] for m in ext["managedResources"]} == {
        "ai.compute/vram": True, "ai.compute/tflops-fp16": True}
    assert ext["nodeCacheCapable"] is True and ext["bindVerb"] and ext["filterVerb"] and ext["prioritizeVerb"]
    svc = one(docs, "Service", "hcs-allocator")
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "extender")
    assert ext["urlPrefix"].startswith(f"https://hcs-allocator-leader.{NAMESPACE}.svc.cluster.local:{port}/")
    reference = REPO_ROOT / "hcs" / "allocator" / "scheduler-config.yaml"
    if reference.exists():  # the allocator's own KubeSchedulerConfiguration, apart from where the extender is
        ref = yaml.safe_load(reference.read_text())
        (ref_ext,) = ref["extenders"]
        assert {k: v for k, v in ext.items() if k != "urlPrefix"} == {k: v for k, v in ref_ext.items()
                                                                       if k != "urlPrefix"}
        assert cfg["profiles"] == ref["profiles"]
        assert cfg["leaderElection"]["resourceName"] == ref["leaderElection"]["resourceName"]
    deploy = one(docs, "Deployment", "hcs-allocator")
    ks = container(deploy, "kube-scheduler")
    assert ks["image"] == "registry.k8s.io/kube-scheduler:v1.37.2"
    assert "--config=/etc/kube-scheduler/config.yaml" in ks["command"]
    node = component_configs(docs)["node"]["node"]
    grpc_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert node["allocatorAddress"] == f"hcs-allocator-leader.{NAMESPACE}.svc.cluster.local:{grpc_port}"


def test_images_are_values(rendered: Render) -> None:
    docs = rendered(image__repository="registry.example/hcs", image__tag="1.2.3",
                    scheduler__kubeScheduler__image__tag="v1.36.1")
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "DaemonSet")
              for c in d["spec"]["template"]["spec"]["containers"] + d["spec"]["template"]["spec"].get(
                  "initContainers", [])}
    assert images == {"registry.example/hcs:1.2.3", "registry.k8s.io/kube-scheduler:v1.36.1"}
    default = {c["image"] for d in rendered() if d["kind"] == "DaemonSet"
               for c in d["spec"]["template"]["spec"]["containers"]}
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert default == {f"ghcr.io/hetero-compute/hcs:{chart['appVersion']}"}


def test_non_root_except_the_node_agent(rendered: Render) -> None:
    docs = rendered()
    for d in find(docs, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False, (d["metadata"], c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["readOnlyRootFilesystem"] is True
    agent = container(one(docs, "DaemonSet"), "node-agent")
    assert agent["securityContext"]["privileged"] is True


# ---------------------------------------------------------------- prod / dev


def test_prod_values_add_pdbs_and_anti_affinity(rendered: Render) -> None:
    docs = rendered(("values-prod.yaml",))
    pdbs = {p["metadata"]["name"]: p for p in find(docs, "PodDisruptionBudget")}
    assert set(pdbs) == {"hcs-webhook"}, "a PDB on the single allocator replica would block node drains"
    for name, pdb in pdbs.items():
        deploy = one(docs, "Deployment", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"][
            "labels"].items()
        assert pdb["spec"]["minAvailable"] < deploy["spec"]["replicas"], "a PDB must leave room for one eviction"
        anti = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        term = anti["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"][
            "labels"].items()
    assert not find(rendered(), "PodDisruptionBudget")


def test_dev_values_log_debug(rendered: Render) -> None:
    docs = rendered(("values-dev.yaml",))
    for d in find(docs, "Deployment") + find(docs, "DaemonSet"):
        args = container(d, d["spec"]["template"]["spec"]["containers"][0]["name"])["args"]
        assert "--log-level=debug" in args, d["metadata"]["name"]


# ---------------------------------------------------------------- certificates


def _openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False, timeout=30)


def test_generated_certificate_serves_the_webhook_service(rendered: Render, tmp_path: Path) -> None:
    docs = rendered()
    secret = one(docs, "Secret", "hcs-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca = base64.b64decode(secret["data"]["ca.crt"])
    (tmp_path / "ca.pem").write_bytes(ca)
    (tmp_path / "tls.pem").write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in one(docs, kind)["webhooks"]:
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca
    verify = _openssl("verify", "-CAfile", str(tmp_path / "ca.pem"), "-verify_hostname",
                      f"hcs-webhook.{NAMESPACE}.svc", str(tmp_path / "tls.pem"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    wrong = _openssl("verify", "-CAfile", str(tmp_path / "ca.pem"), "-verify_hostname",
                     "hcs-webhook.other.svc", str(tmp_path / "tls.pem"))
    assert wrong.returncode != 0


def test_cert_manager_when_present(rendered: Render) -> None:
    docs = rendered(api_versions=("cert-manager.io/v1",))
    assert not find(docs, "Secret", "hcs-webhook-tls")  # (the allocator's gRPC Secret is chart-generated)
    assert "hcs-record-key" in [s["metadata"]["name"] for s in find(docs, "Secret")]
    cert = one(docs, "Certificate", "hcs-webhook")
    assert cert["spec"]["secretName"] == "hcs-webhook-tls"
    assert f"hcs-webhook.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        cfg = one(docs, kind)
        assert cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/hcs-webhook"
        assert all("caBundle" not in hook["clientConfig"] for hook in cfg["webhooks"])
    assert {i["metadata"]["name"] for i in find(docs, "Issuer")} == {
        "hcs-webhook-selfsigned", "hcs-webhook-ca", "hcs-allocator-extender-selfsigned", "hcs-allocator-extender-ca"}
    # explicit off wins over detection; explicit on works without detection
    assert find(rendered(api_versions=("cert-manager.io/v1",), webhook__certManager__autoDetect=False), "Secret",
                "hcs-webhook-tls")
    assert find(rendered(webhook__certManager__enabled=True), "Certificate")


# ---------------------------------------------------------------- monitoring


def test_service_monitors_and_dashboard(rendered: Render) -> None:
    assert not find(rendered(), "ServiceMonitor")
    docs = rendered(serviceMonitor__enabled=True, grafanaDashboard__enabled=True)
    monitors = find(docs, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"hcs-node-agent", "hcs-webhook", "hcs-allocator"}
    services = find(docs, "Service")
    for sm in monitors:
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if sel.items() <= s["metadata"]["labels"].items()]
        assert matched, f"ServiceMonitor {sm['metadata']['name']} selects no Service"
        port_names = {p["name"] for s in matched for p in s["spec"]["ports"]}
        assert sm["spec"]["endpoints"][0]["port"] in port_names
    dash = one(docs, "ConfigMap", "hcs-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dash["data"]["hcs-overview.json"])


def _exported_metric_names() -> set[str]:
    names: set[str] = set()
    for path in (REPO_ROOT / "hcs").rglob("*.py"):
        for m in re.finditer(r"""["'](hcs_[a-z0-9_]+)["']""", path.read_text()):
            names.add(re.sub(r"_total$", "", m.group(1)))
    return names


def test_dashboard_uses_only_metrics_the_components_export() -> None:
    dash = json.loads((CHART / "files" / "dashboards" / "hcs-overview.json").read_text())
    exported = _exported_metric_names()
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for m in re.finditer(r"\bhcs_[a-z0-9_]+", target["expr"]):
                used.add(re.sub(r"_(total|bucket|sum|count)$", "", m.group(0)))
    assert used, "the dashboard queries no hcs_ metric"
    assert used <= exported, f"dashboard metrics no component exports: {sorted(used - exported)}"


# ---------------------------------------------------------------- the rendered webhook config, served for real


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_webhook_serves_tls_with_the_rendered_config_and_certificate(rendered: Render, tmp_path: Path) -> None:
    """`hcs webhook` starts from the chart's ConfigMap and Secret; a client trusting only the rendered caBundle
    reaches it under the Service's DNS name, as the API server will."""
    pytest.importorskip("hcs.webhook.cli")
    docs = rendered()
    secret = one(docs, "Secret", "hcs-webhook-tls")["data"]
    tls = tmp_path / "tls"
    tls.mkdir()
    for key in ("tls.crt", "tls.key"):
        (tls / key).write_bytes(base64.b64decode(secret[key]))
    config = component_configs(docs)["webhook"]
    port = _free_port()
    config["webhook"].update(certFile=str(tls / "tls.crt"), keyFile=str(tls / "tls.key"), listen=f"127.0.0.1:{port}")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    ca_bundle = base64.b64decode(one(docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"])
    ctx = ssl.create_default_context(cadata=ca_bundle.decode())
    proc = subprocess.Popen([sys.executable, "-m", "hcs.cli", "webhook", "--config", str(tmp_path / "config.yaml"),
                             "--no-kube"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"hcs webhook exited ({proc.returncode}): {proc.stdout.read()}"  # type: ignore[union-attr]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, ctx.wrap_socket(
                        raw, server_hostname=f"hcs-webhook.{NAMESPACE}.svc") as conn:
                    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: hcs-webhook\r\nConnection: close\r\n\r\n")
                    reply = conn.recv(4096).decode(errors="replace")
                break
            except (ConnectionRefusedError, ConnectionResetError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert reply.startswith("HTTP/1.") and " 200 " in reply.split("\r\n", 1)[0], reply
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- rendered configs load in the components


@pytest.mark.parametrize("values_files", VALUES_FILES, ids=["default", "prod", "dev"])
@pytest.mark.parametrize("mode", MODES)
def test_rendered_configs_pass_the_components_own_validation(rendered: Render, values_files: tuple[str, ...],
                                                             mode: str, tmp_path: Path) -> None:
    """Each component's loader accepts what the chart renders (unknown keys are errors there)."""
    from hcs.config import section

    docs = rendered(values_files, mode=mode, nodeAgent__simulated__enabled=True)
    configs = component_configs(docs)
    node_cm = one(docs, "ConfigMap", "hcs-node-agent")["data"]
    node_mod = pytest.importorskip("hcs.node.config")
    cfg = node_mod.node_config(section(configs["node"], "node"), source="chart", nodeName="node-1")
    assert cfg.deviceIsolation is False and cfg.reportInterval == _values(*values_files)["nodeAgent"]["reportInterval"]
    assert cfg.devicePlugin == (mode != "dra")  # DRA-only nodes neither mount nor serve the device plugin
    if mode == "devicePlugin":
        assert "dra.yaml" not in node_cm
    else:
        dra_mod = pytest.importorskip("hcs.node.dra.config")
        dra_raw = yaml.safe_load(node_cm["dra.yaml"])
        dra = dra_mod.DraConfig.from_mapping(section(section(dra_raw, "node"), "dra"), node_name="node-1")
        assert dra.driver_name == "ai.compute" and dra.device_isolation is False
        assert str(dra.registration_socket) == "/var/lib/kubelet/plugins_registry/ai.compute-reg.sock"
        ds = one(docs, "DaemonSet")
        dra_container = container(ds, "dra-plugin")
        assert "--simulated" in dra_container["command"]
        assert {m["mountPath"] for m in dra_container["volumeMounts"]} >= {
            "/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins", "/var/run/cdi"}
    cli = pytest.importorskip("hcs.allocator.cli")
    (tmp_path / "allocator.yaml").write_text(yaml.safe_dump(configs["allocator"]))
    flags = argparse.Namespace(grpc_address=None, extender_address=None, namespace=None, kubeconfig=None)
    alloc, rates = cli.load_allocator_config(str(tmp_path / "allocator.yaml"), flags)
    svc_ports = {p["name"]: p["port"] for p in one(docs, "Service", "hcs-allocator")["spec"]["ports"]}
    assert alloc.grpc_address.endswith(f":{svc_ports['grpc']}") and alloc.namespace == NAMESPACE
    assert alloc.extender_address.endswith(f":{svc_ports['extender']}")
    assert cfg.allocatorAddress.endswith(f".svc.cluster.local:{svc_ports['grpc']}")
    assert rates == _values(*values_files)["scheduler"]["exchangeRates"]
    webhook_mod = pytest.importorskip("hcs.webhook.config")
    wh = webhook_mod.webhook_config(section(configs["webhook"], "webhook"), source="chart")
    assert wh.port == one(docs, "Deployment", "hcs-webhook")["spec"]["template"]["spec"]["containers"][0][
        "ports"][0]["containerPort"]
    assert wh.scheduler_name == configs["kube-scheduler"]["profiles"][0]["schedulerName"]
    assert wh.slot_resource == cfg.resourceName
    if wh.allocator_address:  # the island check asks the allocator's GetCapacity
        from hcs.webhook.capacity import AllocatorCapacity

        assert AllocatorCapacity(wh.allocator_address).address == wh.allocator_address


def test_webhook_skips_its_own_namespace_but_never_default(helm_bin: str) -> None:
    def excluded(namespace: str) -> list[str]:
        docs = render(namespace=namespace)
        sel = one(docs, "ValidatingWebhookConfiguration")["webhooks"][0]["namespaceSelector"]
        return list(sel["matchExpressions"][0]["values"])

    assert excluded("hcs-system") == ["kube-system", "hcs-system"]
    assert excluded("default") == ["kube-system"]


@pytest.mark.parametrize("mode", MODES)
def test_rendered_command_lines_parse_with_the_real_clis(rendered: Render, mode: str) -> None:
    """Every flag the chart passes exists in the component's CLI (argparse exits 2 on an unknown flag)."""
    from hcs.cli import build_parser

    docs = rendered(("values-dev.yaml",), mode=mode, nodeAgent__simulated__enabled=True, global__logJson=True)
    parser = build_parser()
    seen = set()
    for workload in find(docs, "Deployment") + find(docs, "DaemonSet"):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            argv = [a.replace("$(NODE_NAME)", "node-1").replace("$(POD_NAME)", "pod-1") for a in c.get("args", [])]
            if c["image"].startswith("registry.k8s.io/kube-scheduler"):
                continue  # checked against the real kube-scheduler in test_helm_cluster.py
            if c["name"] == "dra-plugin":
                dra_main = pytest.importorskip("hcs.node.dra.__main__")
                command = [a.replace("$(NODE_NAME)", "node-1") for a in c["command"]]
                assert command[:3] == ["python", "-m", "hcs.node.dra"]
                ns = dra_main.build_parser().parse_args(command[3:])
                assert ns.config == "/etc/hcs/dra.yaml" and ns.simulated and ns.log_level == "debug"
                seen.add("dra")
                continue
            ns = parser.parse_args(argv)
            assert ns.log_level == "debug" and ns.log_json and ns.config.startswith("/etc/hcs/")
            seen.add(ns.command)
    assert {"node", "allocator", "webhook"} <= seen
    assert ("dra" in seen) == (mode != "devicePlugin")


# ---------------------------------------------------------------- DRA rolling updates and device metadata


def _dra_section(docs: list[dict[str, Any]]) -> dict[str, Any]:
    text = one(docs, "ConfigMap", "hcs-node-agent")["data"]["dra.yaml"]
    section: dict[str, Any] = yaml.safe_load(text)["node"]["dra"]
    return section


def test_dra_rolling_update_surges_the_daemonset_in_dra_mode(rendered: Render) -> None:
    from hcs.errors import ConfigError
    from hcs.node.dra.config import DraConfig

    docs = rendered(mode="dra", nodeAgent__dra__rollingUpdate=True)
    ds = one(docs, "DaemonSet")
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    env = {e["name"]: e for e in container(ds, "dra-plugin")["env"]}
    assert env["POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    section = _dra_section(docs)
    assert section["rollingUpdate"] is True and section["deviceMetadata"] is False
    # what the plugin makes of it, with the env the pod gets (and a clear error without it)
    cfg = DraConfig.from_mapping(section, node_name="node-1", environ={"POD_UID": "0b9e0e6e-1f4d"})
    assert str(cfg.registration_socket) == "/var/lib/kubelet/plugins_registry/ai.compute-0b9e0e6e-1f4d-reg.sock"
    assert str(cfg.dra_socket) == "/var/lib/kubelet/plugins/ai.compute/dra-0b9e0e6e-1f4d.sock"
    with pytest.raises(ConfigError, match="POD_UID"):
        DraConfig.from_mapping(section, node_name="node-1", environ={})


@pytest.mark.parametrize("mode", MODES)
def test_dra_rolling_update_off_keeps_todays_strategy_and_sockets(rendered: Render, mode: str) -> None:
    from hcs.node.dra.config import DraConfig

    docs = rendered(mode=mode)
    ds = one(docs, "DaemonSet")
    assert ds["spec"]["updateStrategy"] == _values()["nodeAgent"]["updateStrategy"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1}
    if mode == "devicePlugin":
        return
    section = _dra_section(docs)
    assert section["rollingUpdate"] is False and section["deviceMetadata"] is False
    cfg = DraConfig.from_mapping(section, node_name="node-1", environ={"POD_UID": "u-1"})
    assert cfg.registration_socket.name == "ai.compute-reg.sock" and cfg.dra_socket.name == "dra.sock"


@pytest.mark.parametrize("mode", ["devicePlugin", "both"])
def test_dra_rolling_update_with_the_device_plugin_fails_the_render(helm_bin: str, mode: str) -> None:
    with pytest.raises(HelmError) as exc:
        render(set_values={"mode": mode, "nodeAgent.dra.rollingUpdate": True})
    assert "nodeAgent.dra.rollingUpdate" in exc.value.stderr and "mode=dra" in exc.value.stderr
    assert "device plugin" in exc.value.stderr


def test_dra_device_metadata_reaches_the_plugin_config(rendered: Render) -> None:
    from hcs.node.dra.config import DraConfig

    docs = rendered(mode="both", nodeAgent__dra__deviceMetadata=True)
    section = _dra_section(docs)
    assert section["deviceMetadata"] is True and section["rollingUpdate"] is False
    assert DraConfig.from_mapping(section, node_name="node-1", environ={}).device_metadata is True
    assert one(docs, "DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1}


def test_dra_options_are_typed_in_the_schema(helm_bin: str) -> None:
    for key in ("nodeAgent.dra.rollingUpdate", "nodeAgent.dra.deviceMetadata"):
        with pytest.raises(HelmError) as exc:
            render(set_values={"mode": "dra", key: "yes"})  # a string: --set-string
        assert key.rsplit(".", 1)[1] in exc.value.stderr, exc.value.stderr
    lint = helm("lint", str(CHART), "--strict", "--set", "mode=dra", "--set", "nodeAgent.dra.rollingUpdate=true",
                "--set", "nodeAgent.dra.deviceMetadata=true", "--kube-version", "1.37.2", helm_bin=helm_bin,
                check=False)
    assert lint.returncode == 0 and "[WARNING]" not in lint.stdout, lint.stdout + lint.stderr


def test_node_agent_cpu_affinity_reaches_its_config(rendered: Render) -> None:
    from hcs.config import section
    from hcs.node.config import node_config

    for value, expected in (("", ""), ("auto", "auto"), (1, "1")):
        docs = rendered((), nodeAgent__cpuAffinity=value)
        cfg = node_config(section(component_configs(docs)["node"], "node"), source="chart", nodeName="n")
        assert cfg.cpuAffinity == expected


def test_start_burst_per_node_reaches_the_allocator_and_its_loader_checks_it(rendered: Render,
                                                                             tmp_path: Path) -> None:
    from hcs.allocator.cli import load_allocator_config
    from hcs.errors import ConfigError

    flags = argparse.Namespace(grpc_address=None, extender_address=None, namespace=None, kubeconfig=None)
    for value in (4, 0, 3):
        docs = rendered((), **({} if value == 4 else {"scheduler__startBurstPerNode": value}))  # 4: the default
        section_ = component_configs(docs)["allocator"]
        assert section_["allocator"]["startBurstPerNode"] == value
        (tmp_path / "a.yaml").write_text(yaml.safe_dump(section_))
        assert load_allocator_config(str(tmp_path / "a.yaml"), flags)[0].start_burst_per_node == value
    for bad in ("8", 2.5, True, -1):
        (tmp_path / "a.yaml").write_text(yaml.safe_dump({"allocator": {"startBurstPerNode": bad}}))
        with pytest.raises(ConfigError, match="startBurstPerNode must be a whole number"):
            load_allocator_config(str(tmp_path / "a.yaml"), flags)


def test_uninstall_hook_releases_the_leases_with_the_least_rbac(rendered: Render) -> None:
    """helm uninstall's pre-delete hook stops the allocator while its RBAC exists and deletes the two
    leader-election Leases (tests/e2e test_zz_helm_uninstall_leaves_only_the_crds runs it for real)."""
    docs = rendered()
    hooked = {(d["kind"], d["metadata"]["name"]) for d in docs
              if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "pre-delete"}
    assert hooked == {(k, "hcs-uninstall") for k in ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job")}
    job = one(docs, "Job", "hcs-uninstall")
    env = {e["name"]: e["value"] for e in container(job, "uninstall")["env"]}
    assert env["DEPLOYMENT"] == "hcs-allocator" and env["LEASES"] == "hcs-allocator,hcs-scheduler"
    rules = one(docs, "Role", "hcs-uninstall")["rules"]
    assert {(tuple(r["resources"]), tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in rules} == {
        (("deployments/scale",), ("patch",), ("hcs-allocator",)),
        (("pods",), ("list",), ()),
        (("leases",), ("delete",), ("hcs-allocator", "hcs-scheduler")),
    }
    script = one(docs, "ConfigMap", "hcs-uninstall")["data"]["uninstall-hook.py"]
    assert script == (CHART / "files" / "uninstall-hook.py").read_text()
    assert not find(rendered(scheduler__enabled=False), "Job")
