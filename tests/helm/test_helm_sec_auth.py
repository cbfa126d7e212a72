"""The chart's side of issue 16, attack 1: the allocator's gRPC API is TLS-served with a certificate for
its Service, callers get projected tokens for its audience and its CA, RBAC grants exactly the verbs
hcs/allocator/auth.py checks, and a NetworkPolicy lets only HCS's own pods reach its ports."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import NAMESPACE, component_configs, find, helm, one, template_args
from helm_chart_fixtures import Render

from hcs.allocator.auth import API_GROUP, VERBS

HOST = f"hcs-allocator-leader.{NAMESPACE}.svc.cluster.local"  # the leader Service: what callers dial


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in _pod(doc)["containers"] if c["name"] == name)


def _mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def _volumes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in _pod(doc).get("volumes", [])}


def _granted(role: dict[str, Any]) -> set[tuple[str, str]]:
    return {(res, verb) for r in role["rules"] if API_GROUP in r["apiGroups"] for res in r["resources"]
            for verb in r["verbs"]}


def test_allocator_serves_tls_with_a_certificate_for_its_service(rendered: Render, tmp_path: Path) -> None:
    """A real gRPC handshake with the rendered key pair: a client trusting the Secret's ca.crt reaches the
    allocator under its Service name (what node agents and the webhook dial), with a token."""
    import grpc

    from hcs.allocator.auth import Caller, server_credentials
    from hcs.allocator.service import AllocatorService, serve
    from hcs.allocator.state import AllocatorState
    from hcs.allocator_client import channel
    from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
    from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg

    docs = rendered()
    secret = one(docs, "Secret", "hcs-allocator-tls")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    deploy = one(docs, "Deployment", "hcs-allocator")
    assert _volumes(deploy)["tls"]["secret"]["secretName"] == "hcs-allocator-tls"
    cfg = component_configs(docs)["allocator"]["allocator"]
    assert _mounts(_container(deploy, "allocator"))["tls"]["mountPath"] == "/etc/hcs/tls"
    assert cfg["tls"] == {"certFile": "/etc/hcs/tls/tls.crt", "keyFile": "/etc/hcs/tls/tls.key"}
    san = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "tls.crt"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True, check=True).stdout
    assert f"DNS:{HOST}" in san and f"DNS:hcs-allocator.{NAMESPACE}.svc" in san

    seen: list[str] = []

    class Record:
        def authorize(self, metadata: Any, rpc: str, node: str | None) -> Caller:
            seen.append(dict(metadata)["authorization"])
            return Caller("x")

    creds = server_credentials("127.0.0.1:0", str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    server = serve(AllocatorService(AllocatorState(), auth=Record()), f"127.0.0.1:{free}", credentials=creds)
    (tmp_path / "token").write_text("projected")
    try:
        with channel(f"127.0.0.1:{free}", token_file=str(tmp_path / "token"), ca_file=str(tmp_path / "ca.crt"),
                     server_name=HOST) as ch:
            pbg.AllocatorStub(ch).GetCapacity(pb.GetCapacityRequest(), timeout=5)  # type: ignore[no-untyped-call]
        with channel(f"127.0.0.1:{free}", token_file=str(tmp_path / "token"), ca_file=str(tmp_path / "ca.crt"),
                     server_name="evil.example.com") as ch, pytest.raises(grpc.RpcError):
            pbg.AllocatorStub(ch).GetCapacity(pb.GetCapacityRequest(), timeout=3)  # type: ignore[no-untyped-call]
    finally:
        server.stop(None)
    assert seen == ["Bearer projected"]


@pytest.mark.parametrize("capacity_source", ["computeNodes", "allocator"])
def test_callers_get_a_projected_token_for_the_allocator_audience_and_only_its_ca(
        rendered: Render, capacity_source: str) -> None:
    docs = rendered(webhook__capacitySource=capacity_source)
    configs = component_configs(docs)
    audience = configs["allocator"]["allocator"]["auth"]["audience"]
    assert audience == "hcs-allocator"
    callers = [(one(docs, "DaemonSet"), "node-agent", configs["node"]["node"])]
    webhook = one(docs, "Deployment", "hcs-webhook")
    if capacity_source == "allocator":
        callers.append((webhook, "webhook", configs["webhook"]["webhook"]))
    else:
        assert "allocator-auth" not in _volumes(webhook)
        assert "allocatorTokenFile" not in configs["webhook"]["webhook"]
    for doc, container, cfg in callers:
        vol = _volumes(doc)["allocator-auth"]["projected"]["sources"]
        token = next(s["serviceAccountToken"] for s in vol if "serviceAccountToken" in s)
        assert token["audience"] == audience and 600 <= token["expirationSeconds"] <= 86400
        secret = next(s["secret"] for s in vol if "secret" in s)
        assert secret["name"] == "hcs-allocator-tls"
        assert secret["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # never the allocator's private key
        mount = _mounts(_container(doc, container))["allocator-auth"]
        assert mount["readOnly"] is True
        assert cfg["allocatorTokenFile"] == f"{mount['mountPath']}/{token['path']}"
        assert cfg["allocatorCAFile"] == f"{mount['mountPath']}/ca.crt"
        assert cfg["allocatorAddress"] == f"{HOST}:50051"
    # the DRA plugin container never talks to the allocator: no token there
    ds = one(docs, "DaemonSet")
    for c in _pod(ds)["containers"]:
        if c["name"] != "node-agent":
            assert "allocator-auth" not in _mounts(c)


def test_the_node_restriction_names_the_node_agents_service_account(rendered: Render) -> None:
    docs = rendered(serviceAccount__create=True)
    users = component_configs(docs)["allocator"]["allocator"]["auth"]["nodeAgentUsers"]
    sa = _pod(one(docs, "DaemonSet"))["serviceAccountName"]
    assert users == [f"system:serviceaccount:{NAMESPACE}:{sa}"]


def test_rbac_grants_exactly_the_verbs_the_allocator_checks(rendered: Render) -> None:
    docs = rendered(webhook__capacitySource="allocator")
    allocator = one(docs, "ClusterRole", "hcs-allocator")
    granted = {(res, verb) for r in allocator["rules"] for res in r["resources"] for verb in r["verbs"]
               if r["apiGroups"] in (["authentication.k8s.io"], ["authorization.k8s.io"])}
    assert granted == {("tokenreviews", "create"), ("subjectaccessreviews", "create")}
    node_verbs = {(v.resource, v.verb) for v in VERBS.values() if v.node_scoped}
    assert _granted(one(docs, "ClusterRole", "hcs-allocator-api-node")) == node_verbs
    assert _granted(one(docs, "ClusterRole", "hcs-allocator-api-capacity")) == {("capacity", "get")}
    assert _granted(one(docs, "ClusterRole", "hcs-allocator-api-admin")) >= {(v.resource, v.verb) for v in
                                                                            VERBS.values()}
    for binding, sa_of in (("hcs-allocator-api-node", one(docs, "DaemonSet")),
                           ("hcs-allocator-api-capacity", one(docs, "Deployment", "hcs-webhook"))):
        b = one(docs, "ClusterRoleBinding", binding)
        assert b["roleRef"]["name"] == binding
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": _pod(sa_of)["serviceAccountName"],
                                  "namespace": NAMESPACE}]
    # nobody else is bound: the admin role is for operators to bind; the webhook only when it asks
    assert not find(docs, "ClusterRoleBinding", "hcs-allocator-api-admin")
    assert not find(rendered(), "ClusterRoleBinding", "hcs-allocator-api-capacity")
    # the cluster security test grants the same rules (tests/security/test_sec_auth_cluster.py)
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sec_auth_cluster", Path(__file__).parents[1] / "security" / "test_sec_auth_cluster.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    assert mod.RULES["node-api"] == one(docs, "ClusterRole", "hcs-allocator-api-node")["rules"]
    assert mod.RULES["capacity"] == one(docs, "ClusterRole", "hcs-allocator-api-capacity")["rules"]


def _labels(doc: dict[str, Any]) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def _admits(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    sel = peer.get("podSelector", {}).get("matchLabels", {})
    return "namespaceSelector" not in peer and bool(sel) and all(labels.get(k) == v for k, v in sel.items())


def test_network_policy_lets_only_hcs_pods_reach_the_allocator(rendered: Render) -> None:
    docs = rendered()
    policy = one(docs, "NetworkPolicy", "hcs-allocator")
    allocator = one(docs, "Deployment", "hcs-allocator")
    assert all(_labels(allocator).get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {p["name"] for p in _container(allocator, "allocator")["ports"]}
    by_port = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(by_port) == ports == {"grpc", "extender"}
    agents, webhook = _labels(one(docs, "DaemonSet")), _labels(one(docs, "Deployment", "hcs-webhook"))
    tenant = {"app": "anything", "app.kubernetes.io/name": "hcs"}  # a tenant pod, even one mimicking a label
    assert [p for p in by_port["grpc"] if _admits(p, agents)] and [p for p in by_port["grpc"] if _admits(p, webhook)]
    assert not [p for p in by_port["grpc"] if _admits(p, tenant)]
    assert [p for p in by_port["extender"] if _admits(p, _labels(allocator))]
    assert not [p for p in by_port["extender"] if _admits(p, agents) or _admits(p, webhook) or _admits(p, tenant)]
    # extra peers are added, the policy can be switched off
    extra = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    docs = rendered(networkPolicy__extraExtenderFrom=extra)
    rules = {r["ports"][0]["port"]: r["from"] for r in one(docs, "NetworkPolicy")["spec"]["ingress"]}
    assert extra[0] in rules["extender"] and extra[0] not in rules["grpc"]
    assert not find(rendered(networkPolicy__enabled=False), "NetworkPolicy")
    assert not find(rendered(scheduler__enabled=False), "NetworkPolicy")


@pytest.mark.parametrize(("key", "value"), [("networkPolicy.enabled", "yes"),
                                            ("scheduler.auth.tokenExpirationSeconds", 60),
                                            ("scheduler.auth.audience", ""),
                                            ("scheduler.auth.unknown", 1)])
def test_schema_rejects_bad_auth_values(helm_bin: str, key: str, value: Any) -> None:
    args = template_args(set_values={key: value})
    out = helm(*args, helm_bin=helm_bin, check=False)
    assert out.returncode != 0 and "values" in (out.stderr + out.stdout).lower(), out.stdout[-500:]


def test_rendered_allocator_config_loads_with_auth(rendered: Render, tmp_path: Path) -> None:
    import argparse

    from hcs.allocator.cli import load_allocator_config

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(component_configs(rendered())["allocator"]))
    flags = argparse.Namespace(grpc_address=None, extender_address=None, namespace=None, kubeconfig=None)
    cfg, _ = load_allocator_config(str(tmp_path / "a.yaml"), flags)
    assert cfg.tls_cert_file == "/etc/hcs/tls/tls.crt" and cfg.auth_audience == "hcs-allocator"
    assert cfg.node_agent_users == (f"system:serviceaccount:{NAMESPACE}:hcs-node-agent",)
    assert cfg.auth_cache_ttl_s == 60
