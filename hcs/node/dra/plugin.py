"""The DRA kubelet plugin: a Python port of k8s.io/dynamic-resource-allocation/kubeletplugin.

``DraPlugin(config, inventory, kube_api_client)`` serves on two unix sockets:
- ``<plugin_dir>/dra.sock``: DRAPlugin v1 and v1beta1 (NodePrepareResources/NodeUnprepareResources)
  and DRAResourceHealth v1alpha1 (NodeWatchResources), started first;
- ``<plugins_registry>/<driver>-reg.sock``: pluginregistration.Registration, started second, so the
  kubelet only learns about the plugin once it is serving.
With ``rolling_update`` both names carry the pod UID (``dra-<podUID>.sock``,
``<driver>-<podUID>-reg.sock``): the old and the new pod of a DaemonSet surge serve side by side, the
kubelet (>= 1.33) calls the newest registration and falls back to the other when its socket goes.
Each instance only ever removes or re-creates its own socket names; ``serialize.lock`` (flock) keeps
prepare/unprepare one at a time across both pods and the checkpoint is re-read when the other pod
changed it.
It publishes the node's ResourceSlices (slice_controller.py), keeps prepared claims in a checkpoint
(state.py), turns device health into the health stream and a NoSchedule taint, and records the
prepared devices in the claim's ``status.devices`` (best effort, in the background).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import grpc

from hcs.api.gen.dra.v1 import api_pb2 as v1
from hcs.api.gen.dra.v1 import api_pb2_grpc as v1_grpc
from hcs.api.gen.dra.v1beta1 import api_pb2 as v1beta1
from hcs.api.gen.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from hcs.api.gen.drahealth.v1alpha1 import api_pb2 as hv1alpha1
from hcs.api.gen.drahealth.v1alpha1 import api_pb2_grpc as hv1alpha1_grpc
from hcs.api.gen.pluginregistration.v1 import api_pb2 as reg
from hcs.api.gen.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from hcs.devices.model import Device, Health
from hcs.kube import RESOURCE_API, KubeError, KubeRest
from hcs.node.dra.checkpoint import PreparedDevice
from hcs.node.dra.claims import ClaimCache
from hcs.node.dra.config import DraConfig
from hcs.node.dra.slice_controller import SliceController
from hcs.node.dra.slices import PublishedDevice, build_slices, published_attributes, published_devices
from hcs.node.dra.state import ClaimRef, ClaimSource, ClaimState, Outcome
from hcs.uds import listen_address

log = logging.getLogger(__name__)

# generated registration helpers are untyped: call them through Any
_add_v1: Any = v1_grpc.add_DRAPluginServicer_to_server
_add_v1beta1: Any = v1beta1_grpc.add_DRAPluginServicer_to_server
_add_health: Any = hv1alpha1_grpc.add_DRAResourceHealthServicer_to_server
_add_registration: Any = reg_grpc.add_RegistrationServicer_to_server

SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin", "v1alpha1.DRAResourceHealth")

#: claim status patches wait until prepare/unprepare calls have paused this long (on a small node
#: the patch and the API server's work for it otherwise land on the next prepare's CPU time)...
STATUS_QUIET_S = 0.05
#: ...but no longer than this after the prepare
STATUS_MAX_DELAY_S = 1.0


class HasDevices(Protocol):
    @property
    def devices(self) -> tuple[Device, ...]: ...


class HealthSource(Protocol):
    def wait(self, timeout_s: float) -> list[Any]:
        """Block up to ``timeout_s``; HealthChange(device_key, old, new) items."""


class ApiClaimSource:
    """Reads ResourceClaims from the API server."""

    def __init__(self, rest: KubeRest) -> None:
        self.rest = rest

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        return self.rest.request("GET", f"{RESOURCE_API}/namespaces/{namespace}/resourceclaims/{name}")

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """A pod the claim is reserved for (its hcs.io/compute-policy, state.py)."""
        return self.rest.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def list_claims(self, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.rest.request(
            "GET", f"{RESOURCE_API}/namespaces/{namespace}/resourceclaims").get("items") or []
        return items


class _Serializer:
    """A process mutex plus flock on ``serialize.lock`` (serializes across plugin pods too)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            if self._fd is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class DraPlugin:
    def __init__(
        self,
        config: DraConfig,
        inventory: HasDevices | Sequence[Device],
        kube_api_client: Any | None,
        *,
        health_source: HealthSource | None = None,
        claim_source: ClaimSource | None = None,
        driver_versions: Mapping[str, str] | None = None,
    ) -> None:
        self.cfg = config
        devices = inventory if isinstance(inventory, Sequence) else inventory.devices
        self._devices: dict[str, Device] = {d.key: d for d in devices}
        self._published: dict[str, PublishedDevice] = published_devices(list(self._devices.values()), config)
        self._driver_versions = dict(driver_versions or {})
        self.rest = KubeRest(kube_api_client) if kube_api_client is not None else None
        #: watch-fed claims of this node; only with the API source (a given claim_source is used as is)
        self.claim_cache: ClaimCache | None = None
        if claim_source is None:
            if self.rest is None:
                raise ValueError("DraPlugin needs a kube_api_client or a claim_source to read ResourceClaims")
            claim_source = ApiClaimSource(self.rest)
            if config.claim_cache:
                self.claim_cache = ClaimCache(self.rest, config.driver_name, config.node_name)
        self.state = ClaimState(config, claim_source, lambda: self._published, on_prepared=self._queue_status,
                                cache=self.claim_cache, attributes=self._attributes)
        self.slices = SliceController(self.rest, config) if self.rest is not None and config.publish_slices else None
        self.health_source = health_source
        self._serial = _Serializer(config.data_dir / "serialize.lock")
        self._dra_server: grpc.Server | None = None
        self._reg_server: grpc.Server | None = None
        self._stop = threading.Event()
        self._health_cond = threading.Condition()
        self._health_version = 0
        self._threads: list[threading.Thread] = []
        # claim uid -> (claim, devices, queued at): status patches waiting for a pause in prepare calls
        self._status_pending: dict[str, tuple[dict[str, Any], tuple[PreparedDevice, ...], float]] = {}
        self._status_cond = threading.Condition()
        self._last_call = 0.0
        self._req_ids = itertools.count(1)
        self.registered = threading.Event()
        self.registration_error = ""
        self.recovery_notes: list[str] = []
        self._inodes: dict[Path, tuple[int, int] | None] = {}

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Recover state, serve the DRA socket, then register; start publishing and health watch."""
        self._stop.clear()
        if self.claim_cache is not None:  # first: it lists while we recover; prepare GETs until synced
            self.claim_cache.start()
        with self._serial.hold():  # the other pod of a rolling update must not prepare mid-sweep
            self.recovery_notes = self.state.recover()
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        Path(self.cfg.plugins_registry).mkdir(parents=True, exist_ok=True)
        self._dra_server = self._serve(self.cfg.dra_socket, self._add_dra_services, workers=16)
        self._reg_server = self._serve(self.cfg.registration_socket, self._add_registration, workers=2)
        if self.slices is not None:
            self.slices.update(self._desired_slices())
            self.slices.start()
        self._spawn(self._status_loop, "dra-claim-status")
        self._spawn(self._socket_watch_loop, "dra-socket-watch")
        if self.health_source is not None:
            self._spawn(self._health_loop, "dra-health")
        log.info("DRA plugin %s serving on %s, registered via %s (%d devices%s)",
                 self.cfg.driver_name, self.cfg.dra_socket, self.cfg.registration_socket, len(self._devices),
                 f", rolling update as pod {self.cfg.pod_uid}" if self.cfg.rolling_update else "")

    def stop(self) -> None:
        """Deregister (remove the registration socket) and stop serving. Published slices stay."""
        self._stop.set()
        with self._health_cond:
            self._health_cond.notify_all()
        with self._status_cond:
            self._status_cond.notify_all()
        for t in self._threads:  # first, so the socket watcher cannot resurrect a socket
            t.join(timeout=3.0)
        self._threads.clear()
        for server, sock in ((self._reg_server, self.cfg.registration_socket), (self._dra_server, self.cfg.dra_socket)):
            if server is not None:
                server.stop(grace=1.0).wait(2.0)
            with contextlib.suppress(FileNotFoundError):
                if _inode(sock) == self._inodes.get(sock):  # never remove a newer instance's socket
                    sock.unlink()
        self._reg_server = self._dra_server = None
        if self.slices is not None:
            self.slices.stop()
        if self.claim_cache is not None:
            self.claim_cache.stop()
        self.state.close()
        self._serial.close()

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _serve(self, sock: Path, add: Any, workers: int) -> grpc.Server:
        sock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            # stale socket of a previous run of this pod: the name is ours alone (with rolling updates it
            # carries our pod UID, so another live pod's sockets are never touched)
            sock.unlink()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dra-grpc"))
        add(server)
        server.add_insecure_port(listen_address(sock))
        server.start()
        self._inodes[sock] = _inode(sock)
        return server

    def _add_dra_services(self, server: grpc.Server) -> None:
        _add_v1(_V1Servicer(self), server)
        _add_v1beta1(_V1beta1Servicer(self), server)
        _add_health(_HealthServicer(self), server)

    def _add_registration(self, server: grpc.Server) -> None:
        _add_registration(_RegistrationServicer(self), server)

    def _socket_watch_loop(self) -> None:
        """Re-create the registration socket if it disappears (someone wiped plugins_registry). It only
        looks at this instance's own socket names, so two rolling-update pods never fight over one."""
        while not self._stop.wait(0.5):
            if not self.cfg.registration_socket.exists() and self._reg_server is not None:
                log.warning("registration socket %s vanished; re-registering", self.cfg.registration_socket)
                self.registered.clear()
                self._reg_server.stop(grace=None)
                self._reg_server = self._serve(self.cfg.registration_socket, self._add_registration, workers=2)
            if not self.cfg.dra_socket.exists() and self._dra_server is not None:
                log.warning("DRA socket %s vanished; serving anew", self.cfg.dra_socket)
                self._dra_server.stop(grace=None)
                self._dra_server = self._serve(self.cfg.dra_socket, self._add_dra_services, workers=16)

    # --------------------------------------------------------------- devices
    def devices(self) -> list[Device]:
        return list(self._devices.values())

    def _attributes(self, pub: PublishedDevice) -> dict[str, dict[str, Any]]:
        """A device's attributes exactly as our slices publish them (for device metadata files)."""
        return published_attributes(pub, self.cfg.mode, self._driver_versions.get(pub.device.vendor.value, ""))

    def _desired_slices(self) -> list[Any]:
        return build_slices(list(self._devices.values()), self.cfg, self._driver_versions)

    def update_devices(self, devices: Sequence[Device]) -> None:
        """New inventory (hot-plug, node profile change): republish slices."""
        self._devices = {d.key: d for d in devices}
        self._published = published_devices(list(self._devices.values()), self.cfg)
        self._devices_changed()

    def set_health(self, key: str, health: Health) -> None:
        dev = self._devices.get(key)
        if dev is None or dev.health == health:
            return
        self._devices[key] = replace(dev, health=health)
        self._published = published_devices(list(self._devices.values()), self.cfg)
        log.info("device %s health %d (%s)", key, health.score, "; ".join(health.reasons) or "ok")
        self._devices_changed()

    def _devices_changed(self) -> None:
        if self.slices is not None:
            self.slices.update(self._desired_slices())
        with self._health_cond:
            self._health_version += 1
            self._health_cond.notify_all()

    def _health_loop(self) -> None:
        assert self.health_source is not None
        while not self._stop.is_set():
            try:
                changes = self.health_source.wait(timeout_s=0.2)
            except Exception as exc:  # noqa: BLE001 - a vendor library error must not stop the plugin
                log.warning("health source failed: %s", exc)
                self._stop.wait(1.0)
                continue
            for ch in changes:
                self.set_health(ch.device_key, ch.new)

    def health_snapshot(self) -> list[hv1alpha1.DeviceHealth]:
        now = int(time.time())
        out = []
        for name, pub in sorted(self._published.items()):
            h = pub.device.health
            out.append(hv1alpha1.DeviceHealth(
                device=hv1alpha1.DeviceIdentifier(pool_name=self.cfg.node_name, device_name=name),
                health=hv1alpha1.HEALTHY if h.healthy else hv1alpha1.UNHEALTHY,
                last_updated_time=now,
                health_check_timeout_seconds=self.cfg.health_timeout_s,
                message=(f"score {h.score}: " + "; ".join(h.reasons))[:1024] if h.reasons else f"score {h.score}",
            ))
        return out

    def watch_health(self, context: grpc.ServicerContext) -> Iterator[hv1alpha1.NodeWatchResourcesResponse]:
        seen = -1
        while not self._stop.is_set() and context.is_active():
            with self._health_cond:
                if seen == self._health_version:
                    self._health_cond.wait(timeout=1.0)
                if seen == self._health_version:
                    continue
                seen = self._health_version
            yield hv1alpha1.NodeWatchResourcesResponse(devices=self.health_snapshot())

    # --------------------------------------------------------- prepare calls
    def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, Outcome]:
        rid = next(self._req_ids)
        t0 = time.perf_counter()
        self._last_call = time.monotonic()
        with self._serial.hold():
            try:
                out = self.state.prepare(refs)
            except Exception as exc:  # noqa: BLE001 - never fail the whole call; report per claim
                log.exception("prepare request %d failed", rid)
                out = {r.uid: Outcome(error=f"internal error preparing claim {r}: {exc}") for r in refs}
        for r in refs:  # every requested claim must have an entry
            out.setdefault(r.uid, Outcome(error=f"claim {r} was not processed"))
        self._last_call = time.monotonic()
        log.debug("prepare request %d: %d claim(s), %d error(s), %.1f ms", rid, len(refs),
                  sum(1 for o in out.values() if o.error), (time.perf_counter() - t0) * 1000)
        return out

    def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, Outcome]:
        rid = next(self._req_ids)
        self._last_call = time.monotonic()
        with self._status_cond:  # not prepared any more: a pending "Prepared" status would be stale
            for r in refs:
                self._status_pending.pop(r.uid, None)
        with self._serial.hold():
            try:
                out = self.state.unprepare(refs)
            except Exception as exc:  # noqa: BLE001
                log.exception("unprepare request %d failed", rid)
                out = {r.uid: Outcome(error=f"internal error unpreparing claim {r}: {exc}") for r in refs}
        for r in refs:
            out.setdefault(r.uid, Outcome(error=f"claim {r} was not processed"))
        log.debug("unprepare request %d: %d claim(s)", rid, len(refs))
        return out

    # ------------------------------------------------------- claim status
    def _queue_status(self, claim: dict[str, Any], devices: Sequence[PreparedDevice]) -> None:
        if self.rest is None or not self.cfg.publish_claim_status:
            return
        uid = str((claim.get("metadata") or {}).get("uid", ""))
        with self._status_cond:  # latest wins per claim
            self._status_pending[uid] = (claim, tuple(devices), time.monotonic())
            self._status_cond.notify()

    def _status_batch(self) -> list[tuple[dict[str, Any], tuple[PreparedDevice, ...]]]:
        """Wait for pending patches and a pause in prepare calls (or their deadline); take them all."""
        with self._status_cond:
            while not self._stop.is_set():
                if not self._status_pending:
                    self._status_cond.wait(timeout=1.0)
                    continue
                now = time.monotonic()
                oldest = min(t for _, _, t in self._status_pending.values())
                wait = min(STATUS_QUIET_S - (now - self._last_call), oldest + STATUS_MAX_DELAY_S - now)
                if wait <= 0:
                    batch = [(c, d) for c, d, _ in self._status_pending.values()]
                    self._status_pending.clear()
                    return batch
                self._status_cond.wait(timeout=wait)
        return []

    def _status_loop(self) -> None:
        while not self._stop.is_set():
            for claim, devices in self._status_batch():
                if self._stop.is_set():
                    return
                meta = claim.get("metadata") or {}
                try:
                    self.publish_claim_status(claim, devices)
                except KubeError as exc:
                    log.info("could not publish device status on claim %s/%s: %s",
                             meta.get("namespace"), meta.get("name"), exc)
                except Exception:  # noqa: BLE001 - a malformed claim must not stop status publishing
                    log.exception("publishing device status on claim %s/%s failed",
                                  meta.get("namespace"), meta.get("name"))

    def publish_claim_status(self, claim: dict[str, Any], devices: Sequence[PreparedDevice]) -> None:
        """Server-side apply of status.devices entries for our devices (DRAResourceClaimDeviceStatus)."""
        assert self.rest is not None
        meta = claim["metadata"]
        entries = []
        for d in devices:
            e: dict[str, Any] = {
                "driver": self.cfg.driver_name, "pool": d.pool_name, "device": d.device_name,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Prepared",
                                "message": "CDI spec written by the node agent",
                                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}],
            }
            if d.share_id:
                e["shareID"] = d.share_id
            entries.append(e)
        body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
                "status": {"devices": entries}}
        self.rest.request(
            "PATCH", f"{RESOURCE_API}/namespaces/{meta['namespace']}/resourceclaims/{meta['name']}/status",
            query={"fieldManager": self.cfg.driver_name, "force": "true"},
            body=body, content_type="application/apply-patch+yaml",
        )


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


# ------------------------------------------------------------------ servicers
def _refs(claims: Any) -> list[ClaimRef]:
    return [ClaimRef(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]


class _V1Servicer(v1_grpc.DRAPluginServicer):
    def __init__(self, plugin: DraPlugin) -> None:
        self.p = plugin

    def NodePrepareResources(self, request: Any, context: Any) -> Any:  # noqa: N802
        resp = v1.NodePrepareResourcesResponse()
        for uid, o in self.p.prepare(_refs(request.claims)).items():
            entry = resp.claims[uid]
            if o.error:
                entry.error = o.error
            for d in o.devices:
                dev = entry.devices.add(request_names=d.request_names, pool_name=d.pool_name,
                                        device_name=d.device_name, cdi_device_ids=d.cdi_device_ids)
                if d.share_id:
                    dev.share_id = d.share_id
        return resp

    def NodeUnprepareResources(self, request: Any, context: Any) -> Any:  # noqa: N802
        resp = v1.NodeUnprepareResourcesResponse()
        for uid, o in self.p.unprepare(_refs(request.claims)).items():
            resp.claims[uid].error = o.error
        return resp


class _V1beta1Servicer(v1beta1_grpc.DRAPluginServicer):
    def __init__(self, plugin: DraPlugin) -> None:
        self.p = plugin

    def NodePrepareResources(self, request: Any, context: Any) -> Any:  # noqa: N802
        resp = v1beta1.NodePrepareResourcesResponse()
        for uid, o in self.p.prepare(_refs(request.claims)).items():
            entry = resp.claims[uid]
            if o.error:
                entry.error = o.error
            for d in o.devices:
                entry.devices.add(request_names=d.request_names, pool_name=d.pool_name,
                                  device_name=d.device_name, cdi_device_ids=d.cdi_device_ids)
        return resp

    def NodeUnprepareResources(self, request: Any, context: Any) -> Any:  # noqa: N802
        resp = v1beta1.NodeUnprepareResourcesResponse()
        for uid, o in self.p.unprepare(_refs(request.claims)).items():
            resp.claims[uid].error = o.error
        return resp


class _HealthServicer(hv1alpha1_grpc.DRAResourceHealthServicer):
    def __init__(self, plugin: DraPlugin) -> None:
        self.p = plugin

    def NodeWatchResources(self, request: Any, context: Any) -> Any:  # noqa: N802
        yield from self.p.watch_health(context)


class _RegistrationServicer(reg_grpc.RegistrationServicer):
    def __init__(self, plugin: DraPlugin) -> None:
        self.p = plugin

    def GetInfo(self, request: Any, context: Any) -> Any:  # noqa: N802
        return reg.PluginInfo(type="DRAPlugin", name=self.p.cfg.driver_name, endpoint=str(self.p.cfg.dra_socket),
                              supported_versions=list(SUPPORTED_VERSIONS))

    def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.plugin_registered:
            self.p.registration_error = ""
            self.p.registered.set()
            log.info("kubelet registered DRA plugin %s", self.p.cfg.driver_name)
        else:
            self.p.registration_error = request.error
            self.p.registered.clear()
            log.error("kubelet rejected DRA plugin %s: %s", self.p.cfg.driver_name, request.error)
        return reg.RegistrationStatusResponse()
