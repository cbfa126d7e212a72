"""A kubelet simulator that speaks the real protocols over real unix sockets.

- serves ``v1beta1.Registration`` on ``<device-plugins dir>/kubelet.sock``;
- on Register: dials the plugin's socket, calls ``GetDevicePluginOptions``, keeps a ``ListAndWatch``
  stream open and tracks device health like the kubelet's device manager;
- serves ``v1.PodResourcesLister`` on its own socket from its checkpoint (pod → container → IDs);
- admits pods serially per node: ``GetPreferredAllocation`` (when offered) → ``Allocate`` per
  container → checkpoint; ``start_container`` calls ``PreStartContainer`` when the plugin asks for it;
- ``restart()`` deletes every socket in the device-plugins dir, like a new kubelet does, and serves
  again (the checkpoint survives, as the real kubelet's does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from hcs.api.gen.deviceplugin.v1beta1 import api_pb2 as dp
from hcs.api.gen.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from hcs.api.gen.podresources.v1 import api_pb2 as pr
from hcs.api.gen.podresources.v1 import api_pb2_grpc as pr_grpc
from hcs.uds import listen_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimPod:
    namespace: str
    name: str
    uid: str
    #: (container name, number of device IDs of the plugin's resource it requests)
    containers: tuple[tuple[str, int], ...]


@dataclass
class PluginConn:
    resource: str
    endpoint: str
    options: dp.DevicePluginOptions
    channel: grpc.Channel
    stub: dp_grpc.DevicePluginStub
    devices: dict[str, str] = field(default_factory=dict)  # id -> health
    numa: dict[str, list[int]] = field(default_factory=dict)
    updates: int = 0
    last_update: float = 0.0
    stream_error: str = ""


class AdmissionError(Exception):
    """The pod was rejected (the kubelet's UnexpectedAdmissionError)."""


class KubeletSim:
    def __init__(self, plugin_dir: str | Path, pod_resources_socket: str | Path) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.pod_resources_socket = Path(pod_resources_socket)
        self._cond = threading.Condition()
        self._admit = threading.Lock()
        self.plugins: dict[str, PluginConn] = {}
        self.registrations: list[tuple[float, str, str]] = []  # (time, resource, endpoint)
        #: checkpoint: (namespace, pod, container) -> (resource, ids)
        self.checkpoint: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]] = {}
        self.pods: dict[tuple[str, str], SimPod] = {}
        self._servers: list[grpc.Server] = []
        self._streams: list[threading.Thread] = []
        self._generation = 0

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KubeletSim:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.pod_resources_socket.parent.mkdir(parents=True, exist_ok=True)
        reg = grpc.server(ThreadPoolExecutor(max_workers=4))
        dp_grpc.add_RegistrationServicer_to_server(_Registration(self), reg)  # type: ignore[no-untyped-call]
        sock = self.plugin_dir / "kubelet.sock"
        _unlink(sock)
        reg.add_insecure_port(listen_address(sock))
        podres = grpc.server(ThreadPoolExecutor(max_workers=4))
        pr_grpc.add_PodResourcesListerServicer_to_server(_PodResources(self), podres)  # type: ignore[no-untyped-call]
        _unlink(self.pod_resources_socket)
        podres.add_insecure_port(listen_address(self.pod_resources_socket))
        reg.start()
        podres.start()
        self._servers = [reg, podres]
        return self

    def stop(self) -> None:
        with self._cond:
            self._generation += 1
            plugins = list(self.plugins.values())
            self.plugins.clear()
            self._cond.notify_all()
        for p in plugins:
            p.channel.close()
        for s in self._servers:
            s.stop(grace=0.2).wait()
        self._servers = []

    def restart(self, downtime_s: float = 0.1) -> None:
        """Stop, delete every socket in the device-plugins dir (as a starting kubelet does), start."""
        self.stop()
        for p in self.plugin_dir.iterdir():
            if p.is_socket():
                _unlink(p)
        time.sleep(downtime_s)
        self.start()

    # ---- registration & ListAndWatch -----------------------------------------------------------

    def _register(self, req: dp.RegisterRequest) -> None:
        if req.version != "v1beta1":
            raise ValueError(f"unsupported device plugin API version {req.version!r}")
        endpoint = self.plugin_dir / req.endpoint
        channel = grpc.insecure_channel(f"unix://{endpoint}")
        stub = dp_grpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
        options = stub.GetDevicePluginOptions(dp.Empty(), timeout=5)
        conn = PluginConn(req.resource_name, req.endpoint, options, channel, stub)
        with self._cond:
            old = self.plugins.get(req.resource_name)
            self.plugins[req.resource_name] = conn
            self.registrations.append((time.monotonic(), req.resource_name, req.endpoint))
            gen = self._generation
            self._cond.notify_all()
        if old is not None:
            old.channel.close()
        t = threading.Thread(target=self._watch, args=(conn, gen), daemon=True, name="kubelet-sim-law")
        t.start()
        self._streams.append(t)

    def _watch(self, conn: PluginConn, gen: int) -> None:
        try:
            for resp in conn.stub.ListAndWatch(dp.Empty()):
                with self._cond:
                    conn.devices = {d.ID: d.health for d in resp.devices}
                    conn.numa = {d.ID: [n.ID for n in d.topology.nodes] for d in resp.devices}
                    conn.updates += 1
                    conn.last_update = time.monotonic()
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            with self._cond:
                conn.stream_error = f"{exc.code().name}: {exc.details()}"
                # The kubelet marks a vanished plugin's devices unhealthy.
                if self.plugins.get(conn.resource) is conn and self._generation == gen:
                    conn.devices = dict.fromkeys(conn.devices, "Unhealthy")
                self._cond.notify_all()

    def wait_registered(self, resource: str, count: int = 1, timeout_s: float = 10.0) -> PluginConn:
        """Wait until ``resource`` registered ``count`` times in total and sent its device list."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                n = sum(1 for _, r, _ in self.registrations if r == resource)
                conn = self.plugins.get(resource)
                if n >= count and conn is not None and conn.updates > 0:
                    return conn
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{resource}: {n} registrations (wanted {count}) within {timeout_s}s")
                self._cond.wait(left)

    def wait_health(self, resource: str, device_id: str, health: str, timeout_s: float = 5.0) -> float:
        """Wait until ListAndWatch reported ``health`` for ``device_id``; returns monotonic time seen."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                conn = self.plugins.get(resource)
                if conn is not None and conn.devices.get(device_id) == health:
                    return conn.last_update
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = conn.devices.get(device_id) if conn else None
                    raise TimeoutError(f"{resource} {device_id}: still {seen!r}, wanted {health!r}")
                self._cond.wait(left)

    def devices(self, resource: str) -> dict[str, str]:
        with self._cond:
            conn = self.plugins.get(resource)
            return dict(conn.devices) if conn else {}

    # ---- admission -----------------------------------------------------------------------------

    def admit(self, pod: SimPod, resource: str) -> list[dp.ContainerAllocateResponse]:
        """Admit ``pod`` (serially, like the kubelet): preferred allocation, Allocate per container."""
        with self._admit:
            with self._cond:
                conn = self.plugins.get(resource)
                if conn is None:
                    raise AdmissionError(f"no device plugin registered for {resource}")
                self.pods[(pod.namespace, pod.name)] = pod
                used = {i for (r, ids) in self.checkpoint.values() if r == resource for i in ids}
                free = sorted(i for i, h in conn.devices.items() if h == "Healthy" and i not in used)
            out = []
            for cname, count in pod.containers:
                if count <= 0:
                    continue
                if len(free) < count:
                    raise AdmissionError(f"{pod.namespace}/{pod.name}: {count} {resource} wanted, {len(free)} free")
                ids = free[:count]
                if conn.options.get_preferred_allocation_available:
                    pref = conn.stub.GetPreferredAllocation(dp.PreferredAllocationRequest(container_requests=[
                        dp.ContainerPreferredAllocationRequest(available_deviceIDs=free, allocation_size=count)]),
                        timeout=10)
                    chosen = list(pref.container_responses[0].deviceIDs)
                    if len(chosen) == count and set(chosen) <= set(free):
                        ids = chosen
                try:
                    resp = conn.stub.Allocate(dp.AllocateRequest(container_requests=[
                        dp.ContainerAllocateRequest(devices_ids=ids)]), timeout=10)
                except grpc.RpcError as exc:
                    raise AdmissionError(f"Allocate {ids} for {pod.namespace}/{pod.name}/{cname}: "
                                         f"{exc.code().name}: {exc.details()}") from exc
                with self._cond:
                    self.checkpoint[(pod.namespace, pod.name, cname)] = (resource, tuple(ids))
                free = [i for i in free if i not in ids]
                out.append(resp.container_responses[0])
            return out

    def start_container(self, namespace: str, pod: str, container: str) -> None:
        """What the kubelet does before CreateContainer: PreStartContainer when the plugin wants it."""
        with self._cond:
            entry = self.checkpoint.get((namespace, pod, container))
            conn = self.plugins.get(entry[0]) if entry else None
        if entry is None or conn is None:
            return
        if conn.options.pre_start_required:
            try:
                conn.stub.PreStartContainer(dp.PreStartContainerRequest(devices_ids=list(entry[1])), timeout=30)
            except grpc.RpcError as exc:
                raise AdmissionError(f"PreStartContainer {namespace}/{pod}/{container}: "
                                     f"{exc.code().name}: {exc.details()}") from exc

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._cond:
            self.pods.pop((namespace, name), None)
            for key in [k for k in self.checkpoint if k[:2] == (namespace, name)]:
                del self.checkpoint[key]

    def allocate_raw(self, resource: str, ids: Sequence[str]) -> dp.AllocateResponse:
        """Call Allocate directly (bad-input tests)."""
        conn = self.plugins[resource]
        req = dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=list(ids))])
        resp: dp.AllocateResponse = conn.stub.Allocate(req, timeout=10)
        return resp

    # ---- pod-resources -------------------------------------------------------------------------

    def _list(self) -> pr.ListPodResourcesResponse:
        with self._cond:
            resp = pr.ListPodResourcesResponse()
            for (ns, name), pod in self.pods.items():
                pres = resp.pod_resources.add(name=name, namespace=ns)
                for cname, _ in pod.containers:
                    c = pres.containers.add(name=cname)
                    entry = self.checkpoint.get((ns, name, cname))
                    if entry:
                        c.devices.add(resource_name=entry[0], device_ids=list(entry[1]))
            return resp


class _Registration(dp_grpc.RegistrationServicer):
    def __init__(self, sim: KubeletSim) -> None:
        self.sim = sim

    def Register(self, request: dp.RegisterRequest, context: grpc.ServicerContext) -> dp.Empty:
        try:
            self.sim._register(request)
        except Exception as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"registration failed: {exc}")
        return dp.Empty()


class _PodResources(pr_grpc.PodResourcesListerServicer):
    def __init__(self, sim: KubeletSim) -> None:
        self.sim = sim

    def List(self, request: pr.ListPodResourcesRequest, context: grpc.ServicerContext) -> pr.ListPodResourcesResponse:
        return self.sim._list()

    def Get(self, request: pr.GetPodResourcesRequest, context: grpc.ServicerContext) -> pr.GetPodResourcesResponse:
        for p in self.sim._list().pod_resources:
            if (p.namespace, p.name) == (request.pod_namespace, request.pod_name):
                return pr.GetPodResourcesResponse(pod_resources=p)
        context.abort(grpc.StatusCode.NOT_FOUND,
                      f"pod {request.pod_name} in namespace {request.pod_namespace} not found")
        raise AssertionError("unreachable")

    def GetAllocatableResources(self, request: pr.AllocatableResourcesRequest,
                                context: grpc.ServicerContext) -> pr.AllocatableResourcesResponse:
        resp = pr.AllocatableResourcesResponse()
        with self.sim._cond:
            for conn in self.sim.plugins.values():
                ids = [i for i, h in conn.devices.items() if h == "Healthy"]
                if ids:
                    resp.devices.add(resource_name=conn.resource, device_ids=ids)
        return resp


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
