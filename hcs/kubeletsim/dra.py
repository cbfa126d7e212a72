"""A DRA-kubelet simulator: what the kubelet's plugin watcher and DRA manager do, over real unix sockets.

- discovers ``*.sock`` files in a plugins_registry directory (names starting with '.' ignored),
  calls ``GetInfo``, validates type ``DRAPlugin``, picks the first advertised service the kubelet
  supports (``v1.DRAPlugin``, then ``v1beta1.DRAPlugin``) and calls ``NotifyRegistrationStatus``;
- keeps every registration of a driver (rolling updates, kubelet >= 1.33: two plugin pods, each with
  its own ``<driver>-<podUID>-reg.sock``), calls the newest and falls back to the previous one when
  the newest's socket goes (``forget_removed``);
- prepares/unprepares claims in one batch per driver, checks every claim UID got an entry;
- opens the ``v1alpha1.DRAResourceHealth/NodeWatchResources`` stream;
- optionally wipes the node's ResourceSlices like a starting kubelet does.
Used by tests and bench/dra.py (:mod:`hcs.kubeletsim`); the real kubelet is exercised in the e2e suite.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hcs.api.gen.dra.v1 import api_pb2 as v1
from hcs.api.gen.dra.v1 import api_pb2_grpc as v1_grpc
from hcs.api.gen.dra.v1beta1 import api_pb2 as v1beta1
from hcs.api.gen.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from hcs.api.gen.drahealth.v1alpha1 import api_pb2 as hv1alpha1
from hcs.api.gen.drahealth.v1alpha1 import api_pb2_grpc as hv1alpha1_grpc
from hcs.api.gen.pluginregistration.v1 import api_pb2 as reg
from hcs.api.gen.pluginregistration.v1 import api_pb2_grpc as reg_grpc

log = logging.getLogger(__name__)

# generated stubs are untyped: construct them through Any
_V1Stub: Any = v1_grpc.DRAPluginStub
_V1beta1Stub: Any = v1beta1_grpc.DRAPluginStub
_RegStub: Any = reg_grpc.RegistrationStub
_HealthStub: Any = hv1alpha1_grpc.DRAResourceHealthStub

KUBELET_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")


class SimError(Exception):
    pass


@dataclass
class RegisteredPlugin:
    name: str
    endpoint: str
    service: str
    supported: tuple[str, ...]
    channel: grpc.Channel
    health_stream: bool
    #: the registration socket it came through
    socket: str = ""

    def stub(self) -> Any:
        if self.service == "v1.DRAPlugin":
            return _V1Stub(self.channel)
        return _V1beta1Stub(self.channel)

    def pb(self) -> Any:
        return v1 if self.service == "v1.DRAPlugin" else v1beta1


@dataclass
class DraKubeletSim:
    plugins_registry: Path
    timeout_s: float = 45.0
    #: driver name -> the registration the kubelet uses (the newest)
    plugins: dict[str, RegisteredPlugin] = field(default_factory=dict)
    #: registration socket path -> its registration, oldest first
    registrations: dict[str, RegisteredPlugin] = field(default_factory=dict)
    #: services the simulated kubelet knows, in its preference order of the plugin's list
    known_services: tuple[str, ...] = KUBELET_SERVICES

    def register(self, socket_name: str | None = None, *, timeout_s: float = 10.0) -> RegisteredPlugin:
        """Wait for a registration socket, then run the plugin-watcher handshake with it."""
        deadline = time.monotonic() + timeout_s
        while True:
            socks = sorted(p for p in self.plugins_registry.glob("*.sock")
                           if not p.name.startswith(".") and (socket_name is None or p.name == socket_name))
            if socks:
                return self._register(socks[0])
            if time.monotonic() > deadline:
                raise SimError(f"no registration socket appeared in {self.plugins_registry} within {timeout_s}s")
            time.sleep(0.05)

    def register_new(self) -> list[RegisteredPlugin]:
        """Run the handshake with every registration socket not registered yet (the watcher's create events)."""
        socks = sorted(p for p in self.plugins_registry.glob("*.sock")
                       if not p.name.startswith(".") and str(p) not in self.registrations)
        return [self._register(p) for p in socks]

    def forget_removed(self) -> list[str]:
        """Deregister plugins whose registration socket is gone (the watcher's delete events); a driver
        falls back to its newest remaining registration. Returns the removed sockets' names."""
        gone = [sock for sock in self.registrations if not Path(sock).exists()]
        for sock in gone:
            reg_ = self.registrations.pop(sock)
            reg_.channel.close()
            if self.plugins.get(reg_.name) is reg_:
                del self.plugins[reg_.name]
                left = [r for r in self.registrations.values() if r.name == reg_.name]
                if left:
                    self.plugins[reg_.name] = left[-1]
        return [Path(s).name for s in gone]

    def _register(self, sock: Path) -> RegisteredPlugin:
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            stub = _RegStub(ch)
            info = stub.GetInfo(reg.InfoRequest(), timeout=5)
            error = ""
            service = ""
            if info.type != "DRAPlugin":
                error = f"plugin type {info.type!r} is not DRAPlugin"
            else:
                for s in info.supported_versions:  # the plugin's order decides, like validateSupportedServices
                    if s in self.known_services:
                        service = s
                        break
                if not service:
                    error = f"none of {list(info.supported_versions)} is supported by this kubelet"
            if not error and not info.endpoint:
                error = "empty endpoint"
            stub.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=not error, error=error), timeout=5)
            if error:
                raise SimError(f"registration of {sock.name} failed: {error}")
        old = self.registrations.pop(str(sock), None)  # the same socket registering again
        if old is not None:
            old.channel.close()
        plugin = RegisteredPlugin(
            name=info.name, endpoint=info.endpoint, service=service, supported=tuple(info.supported_versions),
            channel=grpc.insecure_channel(f"unix://{info.endpoint}"),
            health_stream="v1alpha1.DRAResourceHealth" in info.supported_versions,
            socket=str(sock),
        )
        self.registrations[str(sock)] = plugin
        self.plugins[info.name] = plugin
        return plugin

    def _plugin(self, driver: str) -> RegisteredPlugin:
        p = self.plugins.get(driver)
        if p is None:
            raise SimError(f"driver {driver} is not registered")
        return p

    def prepare(self, driver: str, claims: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
        """NodePrepareResources for (namespace, uid, name) triples; returns the response's claim map."""
        p = self._plugin(driver)
        pb = p.pb()
        req = pb.NodePrepareResourcesRequest(claims=[pb.Claim(namespace=ns, uid=uid, name=n) for ns, uid, n in claims])
        resp = p.stub().NodePrepareResources(req, timeout=self.timeout_s)
        missing = [uid for _, uid, _ in claims if uid not in resp.claims]
        if missing:
            raise SimError(f"plugin {driver} returned no entry for claim(s) {missing}")
        return dict(resp.claims)

    def unprepare(self, driver: str, claims: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
        p = self._plugin(driver)
        pb = p.pb()
        req = pb.NodeUnprepareResourcesRequest(
            claims=[pb.Claim(namespace=ns, uid=uid, name=n) for ns, uid, n in claims])
        resp = p.stub().NodeUnprepareResources(req, timeout=self.timeout_s)
        missing = [uid for _, uid, _ in claims if uid not in resp.claims]
        if missing:
            raise SimError(f"plugin {driver} returned no entry for claim(s) {missing}")
        return dict(resp.claims)

    def watch_health(self, driver: str, timeout_s: float = 30.0) -> Iterator[hv1alpha1.NodeWatchResourcesResponse]:
        p = self._plugin(driver)
        stub = _HealthStub(p.channel)
        yield from stub.NodeWatchResources(hv1alpha1.NodeWatchResourcesRequest(), timeout=timeout_s)

    def close(self) -> None:
        for p in {id(p): p for p in (*self.plugins.values(), *self.registrations.values())}.values():
            p.channel.close()
        self.plugins.clear()
        self.registrations.clear()


def wipe_node_slices(rest: Any, node_name: str, driver: str | None = None) -> int:
    """Delete the node's ResourceSlices as a (re)starting kubelet does. Returns how many."""
    sel = f"spec.nodeName={node_name}" + (f",spec.driver={driver}" if driver else "")
    path = "/apis/resource.k8s.io/v1/resourceslices"
    items = rest.request("GET", path, query={"fieldSelector": sel}).get("items") or []
    for s in items:
        rest.request("DELETE", f"/apis/resource.k8s.io/v1/resourceslices/{s['metadata']['name']}")
    return len(items)
