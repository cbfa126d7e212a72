"""The node agent process: device-plugin server + kubelet registration, health, ComputeNode, metrics.

Lifecycle: recover allocations → serve the plugin socket → Register with the kubelet → watch for a
kubelet restart (our socket deleted or kubelet.sock re-created) and re-serve/re-register within
2 s → stream health to ListAndWatch → report the ComputeNode every ``reportInterval`` and on change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import grpc

from hcs.api.gen.deviceplugin.v1beta1 import api_pb2 as dp
from hcs.api.gen.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from hcs.devices.model import Device, Health
from hcs.kube import KubeRest
from hcs.node.assignments import (
    Assignment,
    AssignmentSource,
    ContainerAssignment,
    LocalAssignmentSource,
    PodLister,
    StaticPodLister,
)
from hcs.node.computenode import ComputeNodeReporter, IslandInfo
from hcs.node.config import NodeConfig
from hcs.node.deviceplugin import DevicePluginServicer, DeviceView, PluginCore
from hcs.node.dra.plugin import DraPlugin
from hcs.node.metrics import NodeMetrics
from hcs.node.podresources import PodResourcesClient
from hcs.node.recordcache import NodePodRecords
from hcs.node.sources import AllocatorAssignmentSource, KubePodLister
from hcs.node.state import Allocation
from hcs.uds import listen_address

log = logging.getLogger(__name__)

RECONCILE_EVERY_S = 5.0


#: Allocation changes trigger a ComputeNode report at most this often (the first one at once).
REPORT_MIN_GAP_S = 1.0


class Coalesced:
    """Calls ``fn`` at once, unless it ran less than ``min_gap_s`` ago: then once when the gap is over,
    however many calls came meanwhile (a timer thread; never loses the last call)."""

    def __init__(self, fn: Callable[[], None], min_gap_s: float) -> None:
        self.fn = fn
        self.min_gap_s = min_gap_s
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._timer: threading.Timer | None = None

    def __call__(self) -> None:
        with self._lock:
            if self._timer is not None:
                return  # folded into the call already scheduled
            wait = self._last + self.min_gap_s - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._fire)
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = time.monotonic()
        self.fn()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self.fn()


class HealthChangeLike(Protocol):
    @property
    def device_key(self) -> str: ...

    @property
    def old(self) -> Health: ...

    @property
    def new(self) -> Health: ...


GRADES = ("healthy", "degraded", "failing", "lost")


def signal_values(sample: object) -> dict[str, float]:
    """The numeric fields of a ``hcs.devices.subhealth.Signals`` sample (None = not reported)."""
    out: dict[str, float] = {}
    for name in ("temperature_c", "ecc_sbe", "ecc_dbe", "retired_pages", "pcie_replays", "pcie_width",
                 "pcie_gen", "link_crc", "link_recovery", "link_errors_since_last", "clock_mhz", "max_clock_mhz"):
        v = getattr(sample, name, None)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[name] = float(v)
    rp = getattr(sample, "remap_pending", None)
    if rp is not None:
        out["remap_pending"] = 1.0 if rp else 0.0
    throttle: frozenset[str] = getattr(sample, "throttle", frozenset())
    for reason in ("thermal", "power", "hw_slowdown"):
        out[f"throttle_{reason}"] = 1.0 if reason in throttle else 0.0
    return out


class HealthSource(Protocol):
    """``hcs.devices.health.HealthMonitor`` satisfies this."""

    def wait(self, timeout_s: float) -> Sequence[HealthChangeLike]: ...

    def close(self) -> None: ...


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class NodeAgent:
    def __init__(
        self,
        config: NodeConfig,
        devices: Sequence[Device],
        *,
        islands: Sequence[IslandInfo] = (),
        health: HealthSource | None = None,
        source: AssignmentSource | None = None,
        kube: KubeRest | None = None,
        pod_lister: PodLister | None = None,
        metrics: NodeMetrics | None = None,
        dra: DraPlugin | None = None,
    ) -> None:
        self.config = config
        self.dra = dra
        self.metrics = metrics or NodeMetrics()
        self.view = DeviceView(devices)
        self.islands = tuple(islands)
        self.health = health
        self.kube = kube
        if source is None:
            if config.assignmentSource == "allocator":
                source = AllocatorAssignmentSource(config.allocatorAddress, config.nodeName,
                                                   token_file=config.allocatorTokenFile,
                                                   ca_file=config.allocatorCAFile)
            else:
                persist = None
                if pod_lister is None:
                    if kube is not None:
                        lister = KubePodLister(kube, config.nodeName)
                        pod_lister, persist = lister, lister.annotate
                    else:
                        log.warning("local policy without an API server: only pods given to the agent "
                                    "directly can be placed")
                        pod_lister = StaticPodLister()
                source = LocalAssignmentSource(self.view.devices, pod_lister, persist)
        self.source = source
        self.podres = PodResourcesClient(config.podResourcesSocket) if config.podResourcesSocket else None
        self.core = PluginCore(config, self.view, source, self.podres, self.metrics)
        self.records: NodePodRecords | None = None
        if kube is not None and not isinstance(source, LocalAssignmentSource):
            # the allocator (or whatever placed the pod) may not have told us yet: read the pod's record
            lister = KubePodLister(kube, config.nodeName)
            self.core.record_lookup = lister.recorded
            # ... kept by a watch, so the kubelet's admission of a burst makes no round trip per pod
            records = self.records = NodePodRecords(kube, config.nodeName)
            self.core.record_cache = records

            def policy(uid: str) -> str:
                # nor its hcs.io/compute-policy: the share file's policy is the pod's, from the watch
                # (the API server only while the watch has not delivered the pod)
                got = records.compute_policy(uid)
                return got if got is not None else lister.compute_policy(uid)
            self.core.policy_lookup = policy
        self.reporter: ComputeNodeReporter | None = None
        if kube is not None:
            self.reporter = ComputeNodeReporter(kube, config.nodeName, self._snapshot, config.reportInterval,
                                                self.metrics)
            # an admission burst changes the allocations once per pod: one ComputeNode write (a GET and a
            # PATCH of the whole status) per change would compete with the kubelet's calls for this process
            self.core.on_change = Coalesced(self.reporter.trigger, REPORT_MIN_GAP_S)
        self._server: grpc.Server | None = None
        self._sock_inode: tuple[int, int] | None = None
        self._kubelet_inode: tuple[int, int] | None = None
        self.registered = threading.Event()
        self.registrations = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.metrics_port = 0

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> NodeAgent:
        cfg = self.config
        for d in (cfg.devicePluginDir, cfg.stateDir, cfg.quotaDir, cfg.shmDir):
            Path(d).mkdir(parents=True, exist_ok=True)
        if cfg.computeDir:  # node-wide compute ledgers: every container's uid creates and maps them
            Path(cfg.computeDir).mkdir(parents=True, exist_ok=True)
            os.chmod(cfg.computeDir, 0o1777)
        if cfg.cdiEnabled:
            Path(cfg.cdiDir).mkdir(parents=True, exist_ok=True)
        if cfg.metricsPort:
            self.metrics_port = self.metrics.serve(cfg.metricsAddress, cfg.metricsPort)
        if self.records is not None:
            self.records.start()
        recovered = self.core.recover()
        if isinstance(self.source, LocalAssignmentSource):
            self.source.seed(_as_assignments(recovered))
        log.info("node %s: %d devices, %d slots of %s, %d allocations recovered", cfg.nodeName,
                 len(self.view.devices()), len(self.core.slots), cfg.resourceName, len(recovered))
        self._update_metrics()
        if cfg.devicePlugin:
            self._serve()
            self._try_register()
            self._spawn(self._watch_kubelet, "hcs-kubelet-watch")
        self._spawn(self._housekeeping, "hcs-housekeeping")
        if self.health is not None:
            self._spawn(self._watch_health, "hcs-health")
        if self.reporter is not None:
            self.reporter.start()
        if self.dra is not None:  # the DRA kubelet plugin runs in this process, fed by our health watch
            self.dra.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.dra is not None:
            self.dra.stop()
        self.core.close()
        if self.records is not None:
            self.records.stop()
        if self.reporter is not None:
            self.reporter.stop()
        for t in self._threads:
            t.join(timeout=5)
        with self._lock:
            if self._server is not None:
                self._server.stop(grace=0.5).wait()
                self._server = None
        if self.health is not None:
            self.health.close()
        if self.podres is not None:
            self.podres.close()
        self.metrics.stop()
        try:
            if _inode(self.config.plugin_socket) == self._sock_inode:
                os.unlink(self.config.plugin_socket)
        except OSError:
            pass

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # ---- serving & registration ----------------------------------------------------------------

    def _serve(self) -> None:
        path = self.config.plugin_socket
        with self._lock:
            if self._server is not None:
                self._server.stop(grace=0.2)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            server = grpc.server(ThreadPoolExecutor(max_workers=16, thread_name_prefix="hcs-dp"),
                                 options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)])
            dp_grpc.add_DevicePluginServicer_to_server(  # type: ignore[no-untyped-call]
                DevicePluginServicer(self.core), server)
            server.add_insecure_port(listen_address(Path(path)))
            server.start()
            self._server = server
            self._sock_inode = _inode(path)
            self.registered.clear()
        log.info("device plugin serving on %s", path)

    def _try_register(self) -> bool:
        cfg = self.config
        kubelet = cfg.kubelet_socket
        inode = _inode(kubelet)
        if inode is None:
            return False
        try:
            with grpc.insecure_channel(f"unix://{kubelet}") as ch:
                stub = dp_grpc.RegistrationStub(ch)  # type: ignore[no-untyped-call]
                stub.Register(dp.RegisterRequest(version="v1beta1", endpoint=cfg.socketName,
                                                 resource_name=cfg.resourceName, options=self.core.options()),
                              timeout=5)
        except grpc.RpcError as exc:
            self.metrics.registrations.labels("error").inc()
            log.warning("registering %s with the kubelet at %s failed: %s: %s (retrying)", cfg.resourceName,
                        kubelet, exc.code().name, exc.details())
            return False
        self._kubelet_inode = inode
        self.registrations += 1
        self.registered.set()
        self.metrics.registrations.labels("ok").inc()
        log.info("registered %s with the kubelet (endpoint %s)", cfg.resourceName, cfg.socketName)
        return True

    def _watch_kubelet(self) -> None:
        """Poll (every kubeletWatchInterval) for a deleted plugin socket or a new kubelet.sock."""
        cfg = self.config
        next_retry = 0.0
        while not self._stop.wait(cfg.kubeletWatchInterval):
            try:
                own = _inode(cfg.plugin_socket)
                if own is None or own != self._sock_inode:
                    log.info("plugin socket %s was removed (kubelet restart?); serving again", cfg.plugin_socket)
                    self._serve()
                    next_retry = 0.0
                kubelet = _inode(cfg.kubelet_socket)
                if kubelet is not None and kubelet != self._kubelet_inode and self.registered.is_set():
                    log.info("kubelet.sock was re-created; registering again")
                    self.registered.clear()
                    next_retry = 0.0
                if not self.registered.is_set() and time.monotonic() >= next_retry and not self._try_register():
                    next_retry = time.monotonic() + 1.0
            except Exception:
                log.exception("kubelet watch iteration failed; continuing")

    # ---- health, housekeeping ------------------------------------------------------------------

    def _watch_health(self) -> None:
        assert self.health is not None
        while not self._stop.is_set():
            try:
                changes = self.health.wait(self.config.healthPollInterval)
            except Exception:
                log.exception("health watch failed; retrying in 1 s")
                self._stop.wait(1.0)
                continue
            changed = False
            for c in changes:
                if c.old.verdict != c.new.verdict:
                    self._verdict_events(c.device_key, c.new)
                if self.dra is not None:
                    self.dra.set_health(c.device_key, c.new)
                if self.view.set_health(c.device_key, c.new):
                    changed = True
                    self.metrics.health_events.labels(c.device_key, str(c.new.healthy).lower()).inc()
                    (log.warning if not c.new.healthy else log.info)(
                        "device %s health %d%s", c.device_key, c.new.score,
                        f" ({'; '.join(c.new.reasons)})" if c.new.reasons else "")
            if changed:
                self._update_metrics()
                if self.reporter is not None:
                    self.reporter.trigger()

    def _verdict_events(self, key: str, health: Health) -> None:
        """Node + affected-pod Events for a sub-health grade change (background, best effort)."""
        if self.kube is None:
            return
        from hcs.node.subhealth_events import report_verdict

        dev = next((d for d in self.view.devices() if d.key == key), None)
        uuid = dev.uuid if dev is not None else ""
        driver = self.dra.cfg.driver_name if self.dra is not None else ""
        self._spawn(lambda: report_verdict(self.kube, self.config.nodeName, driver, key, uuid, health.verdict,
                                           health.reasons), f"hcs-event-{key}")

    def _housekeeping(self) -> None:
        last_reconcile = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                if time.monotonic() - last_reconcile >= RECONCILE_EVERY_S:
                    last_reconcile = time.monotonic()
                    if self.core.reconcile() and self.reporter is not None:
                        self.reporter.trigger()
                self.core.release_background()  # normally released by the kubelet call that queued it
                self.core.sweep_files()
                self._update_metrics()
            except Exception:
                log.exception("housekeeping failed; continuing")

    def _update_metrics(self) -> None:
        m = self.metrics
        allocated = self.core.vram_allocated()
        for d in self.view.devices():
            labels = (d.key, str(d.vendor), d.model, d.uuid)
            m.vram_total.labels(*labels).set(d.vram_total_bytes)
            m.vram_allocated.labels(*labels).set(allocated.get(d.key, (0, 0))[0])
            m.allocations.labels(*labels).set(allocated.get(d.key, (0, 0))[1])
            m.health_score.labels(*labels).set(d.health.score)
            m.healthy.labels(*labels).set(1 if d.health.healthy else 0)
            m.grade.labels(*labels).set(GRADES.index(d.health.verdict) if d.health.verdict in GRADES else 0)
        signals = getattr(self.health, "signals", None)
        if callable(signals):
            by_key = {d.key: d for d in self.view.devices()}
            for key, sample in signals().items():
                dev = by_key.get(key)
                if dev is None:
                    continue
                labels = (dev.key, str(dev.vendor), dev.model, dev.uuid)
                for name, value in signal_values(sample).items():
                    m.signal.labels(*labels, name).set(value)

    def _snapshot(self) -> tuple[Sequence[Device], Sequence[IslandInfo], dict[str, tuple[int, int]]]:
        return self.view.devices(), self.islands, self.core.vram_allocated()


def _as_assignments(allocations: Sequence[Allocation]) -> list[Assignment]:
    by_uid: dict[str, Assignment] = {}
    for a in allocations:
        prev = by_uid.get(a.pod.uid)
        c = ContainerAssignment(a.container, a.devices)
        by_uid[a.pod.uid] = Assignment(a.pod, (*(prev.containers if prev else ()), c), confirmed=True)
    return list(by_uid.values())
