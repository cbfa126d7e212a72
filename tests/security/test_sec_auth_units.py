"""Issue 16, attack 1 (allocator gRPC), the parts that need no API server: the client's credentials
(token file re-read on rotation, never a token in clear), the caches, the metadata parsing, and — as
the control for tests/security/test_sec_auth_cluster.py — the attack itself succeeding against an
allocator without caller authentication (what ``--insecure-dev`` serves)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from hcs.allocator.auth import (
    VERBS,
    AllowAll,
    Caller,
    Denied,
    TTLCache,
    bearer_token,
    server_credentials,
    token_expiry,
)
from hcs.allocator.service import AllocatorService, serve
from hcs.allocator.state import AllocatorState
from hcs.allocator_client import channel
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import DeviceInfo, NodeInventory
from hcs.errors import ConfigError
from hcs.webhook.certs import generate_certs

GI = 2**30


def _request(uid: str, vram_gib: int) -> pb.PodRequest:
    return pb.PodRequest(pod=pb.PodRef(uid=uid, namespace="t", name=f"pod-{uid}", creation_time_unix_ms=1),
                         containers=[pb.ContainerRequest(container="main", vram_bytes=vram_gib * GI)])


def _two_device_state() -> AllocatorState:
    state = AllocatorState()
    state.set_node(NodeInventory("node-a", tuple(
        DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, 312_000, "nvl0") for i in range(2))))
    return state


def _uuids(a: pb.Assignment) -> set[str]:
    return {d.uuid for c in a.containers for d in c.devices}


def test_without_caller_authentication_the_release_attack_double_allocates(tmp_path: Path) -> None:
    """The control: this is what an allocator with AllowAll (``--insecure-dev``) lets any client do. The
    same steps against the authenticated daemon fail (test_sec_auth_cluster)."""
    state = _two_device_state()
    server = serve(AllocatorService(state), f"unix://{tmp_path / 'a.sock'}")
    try:
        with grpc.insecure_channel(f"unix://{tmp_path / 'a.sock'}") as ch:
            s = pbg.AllocatorStub(ch)
            victim = s.Reserve(pb.ReserveRequest(request=_request("victim", 60), node="node-a")).assignment
            listed = s.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="node-a")).assignments
            assert [a.pod.uid for a in listed] == ["victim"]  # anyone lists every pod on the node
            assert s.Release(pb.ReleaseRequest(pod_uid="victim")).released  # anyone frees it
            # two more 60Gi pods fit on two 80Gi devices only because the victim's 60Gi was freed: one of them
            # now shares the victim's device while the victim's container still runs there (double allocation)
            a = s.Reserve(pb.ReserveRequest(request=_request("next-1", 60), node="node-a")).assignment
            b = s.Reserve(pb.ReserveRequest(request=_request("next-2", 60), node="node-a")).assignment
            assert _uuids(victim) & (_uuids(a) | _uuids(b))
    finally:
        server.stop(None)


class _Recorder:
    """A CallAuthorizer that records the bearer token of each call (and refuses calls without one)."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def authorize(self, metadata: Sequence[tuple[str, Any]], rpc: str, node: str | None) -> Caller | None:
        self.tokens.append(bearer_token(metadata))
        return Caller("recorded")


def test_client_sends_the_token_file_and_rereads_it_when_rotated(tmp_path: Path) -> None:
    rec = _Recorder()
    state = _two_device_state()
    address = f"unix://{tmp_path / 'a.sock'}"
    server = serve(AllocatorService(state, auth=rec), address, credentials=server_credentials(address, "", ""))
    token = tmp_path / "token"
    token.write_text("first-token\n")
    try:
        with channel(address, token_file=str(token)) as ch:
            s = pbg.AllocatorStub(ch)
            s.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="node-a"), timeout=5)
            # the kubelet swaps the projected file atomically; a new mtime means a re-read
            tmp = tmp_path / "token.new"
            tmp.write_text("second-token")
            os.utime(tmp, (os.stat(token).st_mtime + 5,) * 2)
            os.replace(tmp, token)
            s.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="node-a"), timeout=5)
        with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as err:
            # a plaintext client without a token gets through the socket, not past the authorizer
            pbg.AllocatorStub(ch).GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="node-a"), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(None)
    assert rec.tokens == ["first-token", "second-token"]


def test_missing_token_is_unauthenticated_before_anything_runs(tmp_path: Path) -> None:
    rec = _Recorder()
    state = _two_device_state()
    address = f"unix://{tmp_path / 'a.sock'}"
    server = serve(AllocatorService(state, auth=rec), address, credentials=server_credentials(address, "", ""))
    try:
        local = grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
        with grpc.secure_channel(address, local) as ch, pytest.raises(grpc.RpcError) as err:
            pbg.AllocatorStub(ch).Reserve(pb.ReserveRequest(request=_request("x", 1)), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in (err.value.details() or "")
        assert state.reservations() == []  # refused before the state was touched
    finally:
        server.stop(None)


def test_token_is_never_sent_in_clear(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    with pytest.raises(ConfigError, match="in clear"):
        channel("127.0.0.1:50051", token_file=str(token))
    with pytest.raises(ConfigError, match="CA file"):
        channel("127.0.0.1:50051", token_file=str(token), ca_file=str(tmp_path / "missing.crt"))


def test_tls_server_needs_its_certificate_unless_unix_socket(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--insecure-dev"):
        server_credentials("0.0.0.0:50051", "", "")
    with pytest.raises(ConfigError, match="does not exist"):
        server_credentials("0.0.0.0:50051", str(tmp_path / "x.crt"), str(tmp_path / "x.key"))
    assert server_credentials("unix:///tmp/x.sock", "", "") is not None


def test_tls_channel_verifies_the_allocator_certificate(tmp_path: Path) -> None:
    """A client with the right CA gets through; one trusting another CA does not (no token sent)."""
    good = generate_certs(tmp_path / "good", ("127.0.0.1",), name="allocator")
    other = generate_certs(tmp_path / "other", ("127.0.0.1",), name="allocator")
    rec = _Recorder()
    server = grpc.server(ThreadPoolExecutor(2))
    pbg.add_AllocatorServicer_to_server(AllocatorService(_two_device_state(), auth=rec), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials("127.0.0.1:1", str(good.cert), str(good.key)))
    server.start()
    token = tmp_path / "token"
    token.write_text("tls-token")
    try:
        with channel(f"127.0.0.1:{port}", token_file=str(token), ca_file=str(good.ca)) as ch:
            pbg.AllocatorStub(ch).GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="node-a"), timeout=5)
        with (channel(f"127.0.0.1:{port}", token_file=str(token), ca_file=str(other.ca)) as ch,
              pytest.raises(grpc.RpcError) as err):
            pbg.AllocatorStub(ch).GetNodeAssignments(pb.GetNodeAssignmentsRequest(node="node-a"), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
    assert rec.tokens == ["tls-token"]


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("x", "y"), ("authorization", "bearer  abc ")]) == "abc"
    for bad in ([], [("authorization", "Basic abc")], [("authorization", "Bearer ")],
                [("authorization", "Bearer " + "x" * 20000)]):
        with pytest.raises(Denied) as err:
            bearer_token(bad)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_ttl_cache_is_bounded_and_expires() -> None:
    now = [0.0]
    cache: TTLCache[int, str] = TTLCache(3, clock=lambda: now[0])
    for i in range(5):
        cache.put(i, str(i), 10)
    assert len(cache) == 3 and cache.get(0) is None and cache.get(4) == "4"
    cache.get(2)  # recently used: survives the next insert
    cache.put(9, "9", 10)
    assert cache.get(2) == "2" and cache.get(3) is None
    now[0] = 11
    assert cache.get(2) is None
    cache.put(7, "7", 0)  # a zero TTL (e.g. an already expired token) is never cached
    assert cache.get(7) is None


def test_token_expiry_is_read_from_the_jwt() -> None:
    import base64
    import json

    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1234}).encode()).rstrip(b"=").decode()
    assert token_expiry(f"h.{payload}.s") == 1234.0
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.!!!.c") is None


def test_every_rpc_has_an_authorisation_rule() -> None:
    rpcs = {m.name for m in pb.DESCRIPTOR.services_by_name["Allocator"].methods}
    assert rpcs == set(VERBS)
    assert {v.rpc for v in VERBS.values() if v.node_scoped} == {"GetNodeAssignments", "Confirm", "Release"}
    assert AllowAll().authorize([], "Reserve", None) is None


def _run_allocator(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    cfg = tmp_path / "a.yaml"
    cfg.write_text("allocator:\n  namespace: default\n")
    return subprocess.run([sys.executable, "-m", "hcs.cli", "allocator", "--config", str(cfg),
                           "--grpc-address", "127.0.0.1:0", *flags], capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def test_plaintext_needs_the_explicit_insecure_dev_flag(tmp_path: Path) -> None:
    """Without TLS files and without --insecure-dev the daemon refuses to start, saying how to fix it.
    (With a cluster: tests/security/test_sec_auth_cluster.py starts both variants for real.)"""
    out = _run_allocator(tmp_path)
    assert out.returncode == 1
    assert "allocator.tls.certFile" in out.stderr and "--insecure-dev" in out.stderr
    assert "WITHOUT caller authentication" not in out.stderr


def test_insecure_dev_logs_a_warning_at_start(tmp_path: Path) -> None:
    out = _run_allocator(tmp_path, "--insecure-dev")  # stops later: no API server configured here
    assert "WARNING" in out.stderr and "--insecure-dev" in out.stderr
    assert "WITHOUT TLS and WITHOUT caller authentication" in out.stderr
    assert "no kubeconfig" in out.stderr and out.returncode == 1
