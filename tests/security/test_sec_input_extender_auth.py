"""Attack 1, extender part (issue 16): any pod could call the scheduler extender's verbs, and
``POST /scheduler/bind`` bound an arbitrary pending pod (a kube-system pod without an accelerator
request) with the allocator's rights.

Now the extender serves HTTPS and only a client certificate signed by the extender CA with an allowed
subject (CN hcs-scheduler) may call filter/prioritize/bind; plain HTTP needs ``--insecure-dev``; bind
refuses pods that ask for no ai.compute resources. Each test performs the attack against the real
extender and checks that the scheduler's own certificate still works.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from sec_input_helpers import REPO, extender_filter_args, extender_process

from hcs.allocator.extender import Extender, ExtenderTLS, serve_http
from hcs.allocator.service import AllocatorService, serve
from hcs.allocator.state import AllocatorState
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import DeviceInfo, NodeInventory
from hcs.errors import ConfigError

GI = 2**30


def test_extender_verbs_need_the_schedulers_certificate(tmp_path: Path) -> None:
    with extender_process(tmp_path) as ext:
        certs = ext.extra["certs"]
        body = extender_filter_args("16Gi")
        bind = json.dumps({"PodName": "coredns", "PodNamespace": "kube-system", "PodUID": "", "Node": "big"}).encode()
        for path, payload in (("/scheduler/filter", body), ("/scheduler/prioritize", body), ("/scheduler/bind", bind)):
            # no client certificate: 401
            status, out = ext.request("POST", path, payload)
            assert status == 401 and b"client certificate" in out, (path, status, out)
            # a certificate from the right CA but another subject: 403
            status, out = ext.request("POST", path, payload, cert=certs.wrong_cn)
            assert status == 403 and b"tenant" in out, (path, status, out)
            # a certificate from another CA (forged CN hcs-scheduler): the TLS handshake fails
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                ext.request("POST", path, payload, cert=certs.other_ca)
        # an unauthenticated caller announcing a 7 MiB body is refused from its headers: the body is never read
        ctx = ssl.create_default_context(cafile=str(ext.ca))
        with socket.create_connection(("127.0.0.1", ext.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"POST /scheduler/bind HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{" % (7 * 2**20))
            assert tls.recv(100).startswith(b"HTTP/1.1 401")
        # plain HTTP to the extender port gets nothing
        with socket.create_connection(("127.0.0.1", ext.port), timeout=5) as s:
            s.sendall(b"POST /scheduler/bind HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            s.settimeout(5)
            try:
                answer = s.recv(100)
            except OSError:
                answer = b""
            assert b"HTTP/1.1 200" not in answer
        # probes need no certificate
        assert ext.request("GET", "/healthz")[0] == 200
        # the scheduler's certificate works
        status, out = ext.request("POST", "/scheduler/filter", body, cert=ext.client_cert)
        assert status == 200 and json.loads(out)["NodeNames"] == ["big"]
        status, out = ext.request("POST", "/scheduler/prioritize", body, cert=ext.client_cert)
        assert status == 200 and json.loads(out)[0]["Host"] == "big"
        assert ext.alive()


def test_plain_http_only_with_insecure_dev(tmp_path: Path) -> None:
    state = AllocatorState()
    with pytest.raises(ConfigError, match="--insecure-dev"):
        serve_http(Extender(state), "127.0.0.1", 0)
    cfg = tmp_path / "alloc.yaml"
    cfg.write_text("allocator:\n  namespace: default\n")
    proc = subprocess.run([sys.executable, "-m", "hcs.cli", "allocator", "--config", str(cfg),
                           "--kubeconfig", str(tmp_path / "none")], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0 and "allocator.extender.tls is required" in proc.stderr + proc.stdout
    assert "--insecure-dev" in proc.stderr + proc.stdout


def _grpc_request(device_count: int) -> pb.PodRequest:
    return pb.PodRequest(pod=pb.PodRef(uid="u-1", namespace="t", name="p"), containers=[
        pb.ContainerRequest(container="c", vram_bytes=16 * GI, device_count=device_count)])


def test_grpc_device_count_out_of_range_is_invalid_argument(tmp_path: Path) -> None:
    """Attack 9, gRPC part: device_count 2**31-1 or -5 was accepted."""
    state = AllocatorState()
    state.set_node(NodeInventory("big", tuple(
        DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, 312_000, "nvl0") for i in range(2))))
    sock = tmp_path / "alloc.sock"
    server = serve(AllocatorService(state), f"unix://{sock}")
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        stub = pbg.AllocatorStub(channel)
        for bad in (2**31 - 1, -5, 65):
            with pytest.raises(grpc.RpcError) as err:
                stub.Reserve(pb.ReserveRequest(request=_grpc_request(bad), node="big"), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "device_count" in (err.value.details() or "")
        # the largest int64 amounts used to overflow the placement arithmetic (INTERNAL): now refused up front
        for field, value in (("tflops_milli", 2**63 - 1), ("vram_bytes", 2**63 - 1)):
            req = _grpc_request(0)
            setattr(req.containers[0], field, value)
            with pytest.raises(grpc.RpcError) as err:
                stub.Reserve(pb.ReserveRequest(request=req, node="big"), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.value.details())
        assert state.reservation("u-1") is None
        ok = stub.Reserve(pb.ReserveRequest(request=_grpc_request(1), node="big"), timeout=10)
        assert ok.assignment.node == "big"
    finally:
        channel.close()
        server.stop(None)


@pytest.mark.cluster
def test_bind_refuses_a_pod_without_an_accelerator_request(api_client: Any, tmp_path: Path) -> None:
    """With the scheduler's own certificate, bind of a kube-system pod asking no ai.compute is refused
    (the pod stays unbound); a pod asking ai.compute is bound."""
    import contextlib
    import uuid

    from sec_input_helpers import Daemon, extender_certs

    from hcs.allocator.kube import KubeSync
    from hcs.kube import KubeError, KubeRest

    rest = KubeRest(api_client)
    certs = extender_certs(tmp_path)
    state = AllocatorState()
    state.set_node(NodeInventory("hcs-sec-node", tuple(
        DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, 312_000, "nvl0") for i in range(2))))
    sync = KubeSync(rest, state)
    server = serve_http(Extender(state, sync), "127.0.0.1", 0,
                        tls=ExtenderTLS(str(certs.server.cert), str(certs.server.key), str(certs.server.ca)))
    d = Daemon(proc=None, port=server.port, ca=certs.server.ca, log=tmp_path / "x")  # type: ignore[arg-type]
    made: list[tuple[str, str]] = []

    def create(ns: str, requests: dict[str, str]) -> dict[str, Any]:
        name = f"hcs-sec-{uuid.uuid4().hex[:6]}"
        pod = rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body={
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"schedulerName": "hcs-nobody", "containers": [{
                "name": "main", "image": "busybox", "resources": {"requests": requests, "limits": requests}}]}})
        made.append((ns, name))
        return pod

    try:
        victim = create("kube-system", {"cpu": "10m"})
        args = {"PodName": victim["metadata"]["name"], "PodNamespace": "kube-system",
                "PodUID": victim["metadata"]["uid"], "Node": "hcs-sec-node"}
        status, out = d.request("POST", "/scheduler/bind", json.dumps(args).encode(), cert=certs.scheduler)
        assert status == 200 and "asks for no ai.compute" in json.loads(out)["Error"]
        live = rest.request("GET", f"/api/v1/namespaces/kube-system/pods/{victim['metadata']['name']}")
        assert not live["spec"].get("nodeName")
        legit = create("default", {"ai.compute/vram": "16Gi"})
        meta = legit["metadata"]
        filter_args = json.dumps({"Pod": legit, "NodeNames": ["hcs-sec-node"]}).encode()
        status, out = d.request("POST", "/scheduler/filter", filter_args, cert=certs.scheduler)
        assert status == 200 and json.loads(out)["NodeNames"] == ["hcs-sec-node"]
        args = {"PodName": meta["name"], "PodNamespace": "default", "PodUID": meta["uid"], "Node": "hcs-sec-node"}
        status, out = d.request("POST", "/scheduler/bind", json.dumps(args).encode(), cert=certs.scheduler, timeout=30)
        assert status == 200 and json.loads(out)["Error"] == "", out
        live = rest.request("GET", f"/api/v1/namespaces/default/pods/{meta['name']}")
        assert live["spec"]["nodeName"] == "hcs-sec-node"
    finally:
        server.shutdown()
        for ns, name in made:
            with contextlib.suppress(KubeError):
                rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}?gracePeriodSeconds=0")


@pytest.mark.parametrize(("sec", "message"), [
    ({"tls": {"certFile": "c", "keyFile": "k"}}, "clientCAFile is required"),
    ({"tls": {"certFile": "c", "keyFile": "k", "clientCAFile": "a", "allowedSubjects": "hcs-scheduler"}},
     "non-empty list"),
    ({"tls": {"certFile": "c", "keyFile": "k", "clientCAFile": "a", "allowedSubjects": []}}, "non-empty list"),
    ({"tls": {"certFile": "c", "keyFile": "k", "clientCAFile": "a", "verify": False}}, "tls.verify is not a known"),
    ({"plain": True}, "extender.plain is not a known field"),
    ({}, "--insecure-dev"),
])
def test_extender_tls_config_errors_say_what_to_fix(sec: dict[str, Any], message: str) -> None:
    from hcs.allocator.extender import extender_tls_from_config

    with pytest.raises(ConfigError, match=message):
        extender_tls_from_config(sec, insecure_dev=False)


def test_extender_tls_config_reads_subjects() -> None:
    from hcs.allocator.extender import extender_tls_from_config

    tls = extender_tls_from_config({"tls": {"certFile": "c", "keyFile": "k", "clientCAFile": "a",
                                            "allowedSubjects": ["CN=hcs-scheduler", "backup"]}}, insecure_dev=False)
    assert tls is not None and tls.allowed_subjects == ("hcs-scheduler", "backup")
    assert extender_tls_from_config(None, insecure_dev=True) is None
