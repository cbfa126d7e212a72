"""The kubelet device plugin (v1beta1) for the slot resource, and the Allocate handshake.

Allocate receives slot IDs only. The agent computes the candidates: assignments for this node that
are pending (or confirmed with containers still unadmitted) minus containers already holding slots
according to the kubelet's pod-resources API and the agent's own records.

- one candidate pod      → exact: the response carries the env, device nodes, mounts, quota.
- several, CDI enabled   → deferred: the response names the CDI device ``<cdiKind>=<slot>``; at
  PreStartContainer the kubelet's checkpoint (pod-resources List) tells which container owns the
  slot, and the agent writes that slot's CDI spec (env, devices, mounts, quota) before the runtime
  reads it at CreateContainer.
- several, no CDI        → fallback: the oldest-created candidate, logged.
No node-wide lock: the kubelet admits one pod at a time per node, and the decision needs only the
kubelet's own view plus the assignment list.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, cast

import grpc

from hcs.api.gen.deviceplugin.v1beta1 import api_pb2 as dp
from hcs.api.gen.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from hcs.devices.injection import (
    CONTAINER_LEDGER_DIR,
    CONTAINER_QUOTA_FILE,
    LEDGER_FILE,
    ContainerEdits,
    InjectionOptions,
    QuotaFiles,
    compute_share,
    compute_share_text,
    container_edits,
    create_ledger,
    discover_driver_libraries,
    ensure_preload_file,
    host_root,
    quota_file_text,
)
from hcs.devices.model import Device, Health
from hcs.fileio import atomic_write
from hcs.node import cdi
from hcs.node.assignments import Assignment, AssignmentSource, ContainerAssignment, DeviceGrant
from hcs.node.config import NodeConfig, host_path_exists
from hcs.node.metrics import NodeMetrics
from hcs.node.podresources import Holder, PodResourcesClient, PodResourcesError
from hcs.node.slots import Slot, build_slots
from hcs.node.state import Allocation, AllocationStore

log = logging.getLogger(__name__)

#: Where the per-container quota file and the container's VRAM ledger dir appear in the container
#: (fixed paths the interceptor trusts; see hcs/devices/injection.py).
CONTAINER_SHM_DIR = CONTAINER_LEDGER_DIR
#: Host side of the container's /etc/ld.so.preload, in quotaDir (no name clash with <uid>_<c>.quota).
PRELOAD_FILE = "ld.so.preload"

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
#: Records younger than this are never dropped by reconcile (the kubelet checkpoints after Allocate).
RECONCILE_GRACE_S = 10.0
#: The kubelet calls GetPreferredAllocation and then Allocate for the same admission (admissions are
#: serial per node). Assignments fetched by the former serve the latter once, if this fresh, so the
#: Allocate path needs no allocator/API round trip. They are fetched after the kubelet knew the pod.
PREFETCH_TTL_S = 0.5
#: How long an admission waits for the pod watch to deliver a pod the kubelet already knows.
CACHE_CATCH_UP_S = 0.25


class RecordCache(Protocol):
    """The node's pods' verified records kept by a watch (``hcs.node.recordcache.NodePodRecords``)."""

    def assignments(self) -> Sequence[Assignment] | None: ...

    def catch_up(self, pods: Iterable[tuple[str, str]], timeout_s: float) -> bool: ...


class PluginError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class DeviceView:
    """The node's devices with live health; ``version`` bumps on every change (ListAndWatch)."""

    def __init__(self, devices: Sequence[Device]) -> None:
        self._cond = threading.Condition()
        self._devices = {d.key: d for d in devices}
        self.version = 0

    def devices(self) -> list[Device]:
        with self._cond:
            return list(self._devices.values())

    def get(self, key: str) -> Device | None:
        with self._cond:
            return self._devices.get(key)

    def set_health(self, key: str, health: Health) -> bool:
        with self._cond:
            d = self._devices.get(key)
            if d is None or d.health == health:
                return False
            self._devices[key] = replace(d, health=health)
            self.version += 1
            self._cond.notify_all()
            return True

    def wait_change(self, seen: int, timeout_s: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.version != seen, timeout=timeout_s)
            return self.version

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass
class _Record:
    alloc: Allocation
    recorded_at: float
    #: The quota file and shm dir exist (written after the Allocate reply, or at PreStartContainer).
    files_ready: bool = True


class PluginCore:
    """Everything the device plugin decides; the gRPC servicer is a thin shell around it."""

    def __init__(
        self,
        config: NodeConfig,
        view: DeviceView,
        source: AssignmentSource,
        podres: PodResourcesClient | None,
        metrics: NodeMetrics,
        exists: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config
        self.view = view
        self.source = source
        self.podres = podres
        self.metrics = metrics
        self.exists = exists or (host_path_exists if config.deviceNodes == "existing" else (lambda _p: True))
        self.slots: tuple[Slot, ...] = build_slots(view.devices(), config.slotsPerDevice)
        #: the vendors' user-space driver libraries on this host, found once (injection.discover_libraries)
        self.driver_libraries = discover_driver_libraries(
            {d.vendor for d in view.devices()}, host_root()) if config.driverLibraries else {}
        self._slot_by_id = {s.id: s for s in self.slots}
        self.store = AllocationStore(Path(config.stateDir) / "allocations")
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._by_slot: dict[str, str] = {}
        #: Containers with a record, by pod namespace/name and by pod uid (candidate filtering).
        self._held_ref: dict[tuple[str, str], set[str]] = {}
        self._held_uid: dict[str, set[str]] = {}
        #: Slots answered with a CDI name at Allocate and not yet resolved at PreStartContainer.
        self._deferred: set[str] = set()
        self._deferred_since: dict[str, float] = {}
        self._prefetch: tuple[float, Sequence[Assignment]] | None = None
        self._prefetch_cands: tuple[float, list[tuple[Assignment, ContainerAssignment]]] | None = None
        #: Second place to find an assignment when the source has none for an Allocate: the records on
        #: this node's pods in the API server (set by the agent in allocator mode; see _await_candidates).
        self.record_lookup: Callable[[], Sequence[Assignment]] | None = None
        #: The same records kept by a watch (hcs.node.recordcache; set by the agent in allocator mode):
        #: None from it means not synced. GetPreferredAllocation and Allocate read it instead of asking
        #: the allocator, so the kubelet's serial admission of a burst pays no round trip per pod.
        self.record_cache: RecordCache | None = None
        #: A pod's hcs.io/compute-policy by uid when its assignment did not carry it (allocator mode:
        #: the allocator's assignments have none; set by the agent). Asked only for pods granted tflops.
        self.policy_lookup: Callable[[str], str] | None = None
        self._policies: dict[str, str] = {}
        #: Allocate calls waiting for their assignment (slot IDs), for tests and debugging.
        self.awaiting: set[tuple[str, ...]] = set()
        #: Dropped allocations whose files sweep_files has not removed yet.
        self._unswept: list[Allocation] = []
        #: Set when recovery saw slots held by containers it could not account for.
        self._unaccounted = False
        #: Work that need not delay a kubelet call (state records, container files, allocator
        #: confirmations) waits here until the reply is on the wire (release_background); then it runs
        #: in order on one worker per kind, so a slow allocator never holds up a file write.
        self._held: list[tuple[ThreadPoolExecutor, Callable[[], None]]] = []
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hcs-disk")
        self._remote = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hcs-confirm")
        self.stopped = threading.Event()
        #: Called (without locks held by the caller's caller) after an allocation is added or dropped.
        self.on_change: Callable[[], None] = lambda: None

    # ---- records -------------------------------------------------------------------------------

    def allocations(self) -> list[Allocation]:
        with self._lock:
            return [r.alloc for r in self._records.values()]

    def _record(self, a: Allocation, persist: bool = True, files_ready: bool = True) -> _Record:
        with self._lock:
            if persist:
                # Off the Allocate path, in order with removals (one worker); a crash before it lands
                # is covered by recovery from the kubelet's pod-resources + the assignment source.
                self._background(self.store.put, a)
            rec = self._records[a.id] = _Record(a, time.monotonic(), files_ready)
            self._held_ref.setdefault((a.pod.namespace, a.pod.name), set()).add(a.container)
            self._held_uid.setdefault(a.pod.uid, set()).add(a.container)
            for s in a.slots:
                self._by_slot[s] = a.id
                self._deferred.discard(s)
                self._deferred_since.pop(s, None)
        self.on_change()
        return rec

    def _drop(self, a: Allocation) -> None:
        with self._lock:
            self._records.pop(a.id, None)
            _unhold(self._held_ref, (a.pod.namespace, a.pod.name), a.container)
            _unhold(self._held_uid, a.pod.uid, a.container)
            for s in a.slots:
                if self._by_slot.get(s) == a.id:
                    del self._by_slot[s]
                cdi.remove_spec(Path(self.config.cdiDir), self.config.cdiKind, s)
            self._background(self.store.remove, a)
            # The files go in sweep_files: a drop often happens inside Allocate (the kubelet re-offers
            # a slot whose pod is gone), and the kubelet waits on Allocate.
            self._unswept.append(a)
            remaining = a.pod.uid in self._held_uid
        if not remaining:
            self._tell_source(self.source.release, a.pod.uid)
        self.on_change()

    def sweep_files(self) -> int:
        """Remove dropped containers' quota files and ledger dirs (and a pod's dir once it holds
        nothing). Under the lock, like every file write of an allocation, so a new allocation of the
        same pod and container keeps its (same-named) files. Returns how many drops were swept."""
        with self._lock:
            pending, self._unswept = self._unswept, []
            for a in pending:
                held = self._held_uid.get(a.pod.uid)
                if held is not None and a.container in held:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.quota_file(a.pod.uid, a.container))
                _remove_tree(self.ledger_dir(a.pod.uid, a.container))
                if held is None:
                    _remove_tree(Path(self.config.shmDir) / a.pod.uid)
        return len(pending)

    def quota_file(self, pod_uid: str, container: str) -> Path:
        """Host path of a container's quota file (bind-mounted read-only as the file itself)."""
        return Path(self.config.quotaDir) / f"{pod_uid}_{container}.quota"

    def ledger_dir(self, pod_uid: str, container: str) -> Path:
        """Host dir of a container's VRAM ledger: per container, like its quota file and devices
        (containers of one pod never share one)."""
        return Path(self.config.shmDir) / pod_uid / container

    def preload_file(self) -> Path:
        return Path(self.config.quotaDir) / PRELOAD_FILE

    def _write_files(self, pod_uid: str, container: str, grants: Sequence[DeviceGrant], policy: str = "") -> None:
        """The container's quota file (what the interceptor enforces), its ledger dir (with the compute
        share file when tflops were granted), and the node's /etc/ld.so.preload source."""
        uuids = []
        shares = []
        for g in grants:
            d = self.view.get(g.key)
            uuids.append(g.uuid or (d.uuid if d is not None else ""))
            device_tflops = d.compute.a100_equiv_tflops if d is not None else 0.0
            shares.append(compute_share(g.tflops_milli / 1000, device_tflops, uuids[-1] or g.key))
        atomic_write(self.quota_file(pod_uid, container),
                     quota_file_text([g.vram_bytes for g in grants], shares))
        compute = ""
        if any(s is not None for s in shares):
            policy = policy or self._looked_up_policy(pod_uid)
            compute = compute_share_text(shares, policy or self.config.computePolicy, f"{pod_uid}_{container}")
        create_ledger(self.ledger_dir(pod_uid, container), uuids, compute)
        if self.config.interceptorDir:
            ensure_preload_file(self.preload_file())

    def _looked_up_policy(self, pod_uid: str) -> str:
        """``policy_lookup`` of the pod, remembered per pod (its containers share it); "" (the node's
        default) when there is no lookup or it fails."""
        if self.policy_lookup is None:
            return ""
        got = self._policies.get(pod_uid)
        if got is None:
            try:
                got = self.policy_lookup(pod_uid)
            except Exception as exc:  # the API server may be down: the node's default, never looser
                log.warning("reading the compute policy of pod %s failed (%s); using the node's default %s",
                            pod_uid, exc, self.config.computePolicy)
                return ""
            if len(self._policies) >= 4096:
                self._policies.pop(next(iter(self._policies)))
            self._policies[pod_uid] = got
        return got

    def _files_after_reply(self, rec: _Record) -> None:
        """Background: write a new allocation's files unless PreStartContainer (or a drop) came first."""
        with self._lock:  # in order with sweep_files, which removes a dropped container's files
            if rec.files_ready or self._records.get(rec.alloc.id) is not rec:
                return
            try:
                self._write_files(rec.alloc.pod.uid, rec.alloc.container, rec.alloc.devices,
                                  rec.alloc.pod.compute_policy)
            except OSError as exc:  # PreStartContainer tries again and fails the container if it must
                log.error("writing the quota file of %s/%s: %s", rec.alloc.pod.ref, rec.alloc.container, exc)
                return
            rec.files_ready = True

    def _ensure_files(self, rec: _Record) -> None:
        """Before the container is created, its quota file and shm dir must exist (they are mounts)."""
        a = rec.alloc
        with self._lock:
            if rec.files_ready and self.quota_file(a.pod.uid, a.container).exists() and (
                    self.ledger_dir(a.pod.uid, a.container) / LEDGER_FILE).is_file() and (
                    not self.config.interceptorDir or self.preload_file().is_file()):
                return
            try:
                self._write_files(a.pod.uid, a.container, a.devices, a.pod.compute_policy)
            except OSError as exc:
                raise PluginError(grpc.StatusCode.INTERNAL,
                                  f"cannot write the quota file of {a.pod.ref}/{a.container} under "
                                  f"{self.config.quotaDir} or {self.config.shmDir}: {exc}") from exc
            rec.files_ready = True

    def vram_allocated(self) -> dict[str, tuple[int, int]]:
        """device key -> (allocated bytes, containers)."""
        out: dict[str, tuple[int, int]] = {}
        for a in self.allocations():
            for g in a.devices:
                b, n = out.get(g.key, (0, 0))
                out[g.key] = (b + g.vram_bytes, n + 1)
        return out

    # ---- kubelet-facing ------------------------------------------------------------------------

    def options(self) -> dp.DevicePluginOptions:
        return dp.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True)

    def device_list(self) -> dp.ListAndWatchResponse:
        health = {d.key: d.health.healthy for d in self.view.devices()}
        out = []
        for s in self.slots:
            topo = dp.TopologyInfo(nodes=[dp.NUMANode(ID=s.numa_node)]) if s.numa_node >= 0 else None
            out.append(dp.Device(ID=s.id, health=HEALTHY if health.get(s.device_key) else UNHEALTHY,
                                 topology=topo))
        return dp.ListAndWatchResponse(devices=out)

    def preferred(self, req: dp.PreferredAllocationRequest) -> dp.PreferredAllocationResponse:
        wanted: set[str] = set()
        try:
            cands = self._cached_candidates()
            if cands is not None:  # the Allocate that follows (same pod: admissions are serial) reuses them
                with self._lock:
                    self._prefetch_cands = (time.monotonic(), cands)
            else:  # no usable cache: ask the source, and keep its answer for the Allocate
                t0 = time.perf_counter()
                assignments = self.source.assignments()
                self.metrics.admission_phase.labels("source").observe(time.perf_counter() - t0)
                with self._lock:
                    self._prefetch = (time.monotonic(), assignments)
                cands = self._candidates(assignments)
            if len({a.pod.uid for a, _ in cands}) == 1:
                wanted = {g.key for g in cands[0][1].devices}
        except Exception as exc:  # a preference is optional: never fail it
            log.debug("GetPreferredAllocation: no candidate hint (%s)", exc)
        resp = dp.PreferredAllocationResponse()
        devices = self.view.devices()
        island = {d.key: d.island for d in devices}
        slot_by_id = self._slot_by_id
        for creq in req.container_requests:
            must = list(creq.must_include_deviceIDs)
            must_slots = [slot_by_id[i] for i in must if i in slot_by_id]
            numa = {s.numa_node for s in must_slots}
            isl = {island.get(s.device_key, "") for s in must_slots} - {""}
            # the sole candidate's device first, then the same interconnect island, then the same NUMA
            # node: ranked once per device (a handful) instead of once per offered slot (hundreds)
            rank = {d.key: (d.key not in wanted, bool(isl) and d.island not in isl,
                            bool(numa) and d.numa_node not in numa) for d in devices}
            worst = (True, True, True)
            taken = set(must)
            n = max(0, creq.allocation_size - len(must))
            # offered slots grouped by device; a device's slot IDs are contiguous, so taking whole
            # groups in (rank, first ID) order is the order of (rank, ID) over all slots
            by_device: dict[str, list[str]] = {}
            for i in creq.available_deviceIDs:
                s = slot_by_id.get(i)
                if s is not None and i not in taken:
                    by_device.setdefault(s.device_key, []).append(i)
            best: list[str] = []
            for ids in sorted(by_device.values(), key=lambda ids: (rank.get(slot_by_id[ids[0]].device_key, worst),
                                                                   min(ids))):
                if len(best) >= n:
                    break
                best += heapq.nsmallest(n - len(best), ids)
            resp.container_responses.append(dp.ContainerPreferredAllocationResponse(deviceIDs=must + best))
        return resp

    def allocate(self, req: dp.AllocateRequest) -> dp.AllocateResponse:
        resp = dp.AllocateResponse()
        for creq in req.container_requests:
            resp.container_responses.append(self._allocate_one(tuple(creq.devices_ids)))
        return resp

    def _check_slots(self, ids: Sequence[str]) -> None:
        if not ids:
            raise PluginError(grpc.StatusCode.INVALID_ARGUMENT, "Allocate: empty device ID list")
        unknown = [i for i in ids if i not in self._slot_by_id]
        if unknown:
            raise PluginError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"unknown {self.config.resourceName} IDs {unknown[:5]}; this node advertises "
                              f"{self.slots[0].id if self.slots else '-'}..{self.slots[-1].id if self.slots else '-'}")
        bad = [i for i in ids if not self._device_healthy(self._slot_by_id[i].device_key)]
        if bad:
            raise PluginError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"{self.config.resourceName} IDs {bad[:5]} belong to an unhealthy device; "
                              "the kubelet should not offer them (ListAndWatch reports them Unhealthy)")

    def _device_healthy(self, key: str) -> bool:
        d = self.view.get(key)
        return d is not None and d.health.healthy

    def _allocate_one(self, ids: tuple[str, ...]) -> dp.ContainerAllocateResponse:
        self._check_slots(ids)
        with self._lock:
            held_by = {self._by_slot[i] for i in ids if i in self._by_slot}
            if held_by:
                # The kubelet re-allocates slots it already gave out only after it forgot them (e.g. a
                # pod it killed); our record is stale.
                for aid in held_by:
                    rec = self._records.get(aid)
                    if rec is not None:
                        log.info("slots %s re-offered by the kubelet; dropping stale allocation of %s/%s",
                                 ids, rec.alloc.pod.ref, rec.alloc.container)
                        self._drop(rec.alloc)
            prefetched = None
            if self._prefetch is not None and time.monotonic() - self._prefetch[0] <= PREFETCH_TTL_S:
                prefetched = self._prefetch[1]
            self._prefetch = None
            cands = []
            if self._prefetch_cands is not None and time.monotonic() - self._prefetch_cands[0] <= PREFETCH_TTL_S:
                cands = self._prefetch_cands[1]
            self._prefetch_cands = None
        if not cands:
            cands = self._cached_candidates() or []
        with self._lock:
            if not cands and prefetched is not None:
                cands = self._candidates(prefetched)
            if not cands:
                cands = self._candidates()
        if not cands:
            # Not known yet: wait for it (bounded) without holding the lock (reconcile, file writes and
            # the ComputeNode report take it; the kubelet admits one pod at a time per node).
            cands = self._await_candidates(ids)
        with self._lock:
            if not cands:
                self.metrics.allocate_total.labels("error").inc()
                raise PluginError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"no pending HCS assignment on node {self.config.nodeName!r} for slots {list(ids)} "
                                  f"after waiting {self.config.allocateWaitSeconds:g} s: the pod was not placed by "
                                  f"hcs-scheduler, or the assignment source ({self.config.assignmentSource}) is "
                                  "unreachable; check `hcs alloc explain`")
            pods = {a.pod.uid for a, _ in cands}
            if len(pods) == 1:
                a, c = cands[0]
                self.metrics.allocate_total.labels("exact").inc()
                return self._exact(ids, a, c)
            if self.config.cdiEnabled:
                slot = sorted(ids)[0]
                cdi.remove_spec(Path(self.config.cdiDir), self.config.cdiKind, slot)
                self._deferred.update(ids)
                self._deferred_since.update(dict.fromkeys(ids, time.monotonic()))
                self.metrics.allocate_total.labels("deferred").inc()
                log.info("Allocate %s: %d candidate pods; resolving at PreStartContainer via CDI %s",
                         list(ids), len(pods), cdi.qualified_name(self.config.cdiKind, slot))
                return dp.ContainerAllocateResponse(
                    cdi_devices=[dp.CDIDevice(name=cdi.qualified_name(self.config.cdiKind, slot))])
            a, c = min(cands, key=lambda ac: (ac[0].pod.created_ms, ac[0].pod.uid))
            log.warning("Allocate %s: %d candidate pods and CDI is disabled; assuming the oldest, %s "
                        "(enable CDI for an exact match)", list(ids), len(pods), a.pod.ref)
            self.metrics.allocate_total.labels("fallback").inc()
            return self._exact(ids, a, c)

    def _await_candidates(self, ids: tuple[str, ...]) -> list[tuple[Assignment, ContainerAssignment]]:
        """Allocate came before the assignment was visible to the source (e.g. a standby allocator
        whose watch has not delivered the bind yet). The allocator records the assignment on the pod
        (signed) before it binds the pod, so the kubelet never sees a pod whose record is not on the
        API server: read the node's pods' records there (``record_lookup``; only records that pass
        :meth:`hcs.records.RecordKey.check` — allocator-signed, bound to the pod and this node — count),
        and ask the source again, until ``allocateWaitSeconds`` have passed."""
        deadline = time.monotonic() + self.config.allocateWaitSeconds
        delay = 0.05
        with self._lock:
            self.awaiting.add(ids)
        try:
            while True:
                cands = self._cached_candidates() or []
                if cands:
                    log.info("Allocate %s: assignment of %s found in the watched records after %.2f s", list(ids),
                             ", ".join(sorted({a.pod.ref for a, _ in cands})),
                             self.config.allocateWaitSeconds - (deadline - time.monotonic()))
                    return cands
                if self.record_lookup is not None:
                    try:
                        recorded = self.record_lookup()
                    except Exception as exc:  # the API server may be down too: keep asking the source
                        log.warning("Allocate %s: reading the pods' assignment records failed: %s", list(ids), exc)
                        recorded = []
                    cands = self._candidates(recorded) if recorded else []
                    if cands:
                        log.info("Allocate %s: assignment of %s read from its pod's signed record (the "
                                 "assignment source did not have it yet)", list(ids),
                                 ", ".join(sorted({a.pod.ref for a, _ in cands})))
                        return cands
                left = deadline - time.monotonic()
                if left <= 0 or self.stopped.is_set():
                    return []
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.25)
                cands = self._candidates()
                if cands:
                    log.info("Allocate %s: the assignment source answered after %.2f s", list(ids),
                             self.config.allocateWaitSeconds - (deadline - time.monotonic()))
                    return cands
        finally:
            with self._lock:
                self.awaiting.discard(ids)

    def _cached_candidates(self) -> list[tuple[Assignment, ContainerAssignment]] | None:
        """Candidates from the watched records (``record_cache``) without any API or allocator call,
        restricted to pods the kubelet knows (its pod-resources List includes the pod it is admitting):
        the watch may lag the kubelet's, so a record cached for another pod — one the kubelet rejected,
        say — never stands alone for the pod being admitted. None when there is no cache, it is not
        synced, or the kubelet cannot be asked: the caller asks the assignment source."""
        cache = self.record_cache
        if cache is None or self.podres is None or cache.assignments() is None:
            return None
        t0 = time.perf_counter()
        try:
            known, holders = self.podres.snapshot(self.config.resourceName)
        except PodResourcesError as exc:
            log.debug("%s; asking the assignment source", exc)
            return None
        t1 = time.perf_counter()
        self.metrics.admission_phase.labels("kubelet_list").observe(t1 - t0)
        # the pod being admitted is bound, so its record is on the API server: wait (briefly) for the watch
        # to deliver every pod the kubelet knows rather than decide without it
        cache.catch_up(known, CACHE_CATCH_UP_S)
        self.metrics.admission_phase.labels("watch_catch_up").observe(time.perf_counter() - t1)
        cached = cache.assignments() or []
        return self._candidates([a for a in cached if (a.pod.namespace, a.pod.name) in known], holders)

    def _candidates(self, assignments: Sequence[Assignment] | None = None,
                    holders: Sequence[Holder] | None = None) -> list[tuple[Assignment, ContainerAssignment]]:
        """``holders``: the kubelet's slot holders, when the caller already has them."""
        if assignments is None:
            assignments = self.source.assignments()
        kubelet: dict[tuple[str, str], set[str]] = {}
        for h in holders or ():
            kubelet.setdefault((h.namespace, h.pod), set()).add(h.container)
        with self._lock:
            # Every slot this agent handed out is in its records, except deferred ones (the kubelet
            # knows their owner) and ones recovery could not account for: only then ask the kubelet.
            ask_kubelet = holders is None and (bool(self._deferred) or self._unaccounted)
        if self.podres is not None and ask_kubelet:
            try:
                for h in self.podres.holders(self.config.resourceName):
                    kubelet.setdefault((h.namespace, h.pod), set()).add(h.container)
            except PodResourcesError as exc:
                log.warning("%s; deciding from the agent's own records", exc)
        out: list[tuple[Assignment, ContainerAssignment]] = []
        none: frozenset[str] = frozenset()
        with self._lock:
            for a in assignments:
                ref = (a.pod.namespace, a.pod.name)
                by_ref = self._held_ref.get(ref, none)
                by_kubelet = kubelet.get(ref, none)
                if a.confirmed and not by_ref and not by_kubelet:
                    continue
                by_uid = self._held_uid.get(a.pod.uid, none)
                for c in a.containers:
                    n = c.container
                    if c.devices and n not in by_ref and n not in by_kubelet and n not in by_uid:
                        out.append((a, c))
        return out

    def _edits(self, a: Assignment, c: ContainerAssignment, write_files: bool = True
               ) -> tuple[ContainerEdits, list[Device]]:
        devices: list[Device] = []
        for g in c.devices:
            d = self.view.get(g.key)
            if d is None:
                raise PluginError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"pod {a.pod.ref} container {c.container}: assigned device {g.key} ({g.uuid}) "
                                  f"does not exist on node {self.config.nodeName!r}; the allocator's view is stale")
            if g.uuid and d.uuid != g.uuid:
                raise PluginError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"pod {a.pod.ref}: assigned device {g.key} has uuid {g.uuid} but this node's "
                                  f"{g.key} is {d.uuid}; the allocator's view is stale")
            if not d.health.healthy:
                raise PluginError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"pod {a.pod.ref}: assigned device {g.key} is unhealthy "
                                  f"({'; '.join(d.health.reasons) or 'score ' + str(d.health.score)})")
            devices.append(d)
        quota_file = self.quota_file(a.pod.uid, c.container)
        shm_dir = self.ledger_dir(a.pod.uid, c.container)
        if write_files:
            self._write_files(a.pod.uid, c.container, c.devices, a.pod.compute_policy)
        interceptor = self.config.interceptorDir if self.config.interceptorDir and self.exists(
            self.config.interceptorDir) else ""
        compute_dir = self.config.computeDir if self.config.computeDir and os.path.isdir(
            self.config.computeDir) else ""
        files = QuotaFiles(str(quota_file), CONTAINER_QUOTA_FILE, str(shm_dir), CONTAINER_SHM_DIR, compute_dir)
        preload = str(self.preload_file())
        options = InjectionOptions(interceptor_host_dir=interceptor, device_isolation=self.config.deviceIsolation,
                                   preload_host_path=preload, driver_libraries=self.driver_libraries,
                                   sim_profile_host_path=self.config.simProfile)
        edits = container_edits(devices, [g.vram_bytes for g in c.devices], files, options)
        own = {str(quota_file), str(shm_dir), preload, compute_dir}
        # Optional host paths (control nodes, driver dirs) that are absent would fail container creation.
        edits = ContainerEdits(
            env=edits.env,
            device_nodes=tuple(n for n in edits.device_nodes if self.exists(n.source)),
            mounts=tuple(m for m in edits.mounts if m.host_path in own or m.host_path == interceptor
                         or self.exists(m.host_path)),
        )
        return edits, devices

    def _exact(self, ids: tuple[str, ...], a: Assignment, c: ContainerAssignment) -> dp.ContainerAllocateResponse:
        # The files are mounts of the container, which the kubelet creates only after
        # PreStartContainer (pre_start_required): they are written after this reply, and
        # PreStartContainer makes sure of them.
        edits, _ = self._edits(a, c, write_files=False)
        rec = self._record(Allocation(a.pod, c.container, ids, c.devices), files_ready=False)
        self._hold(self._disk, lambda: self._files_after_reply(rec))
        self._tell_source(self.source.confirm, a.pod.uid)
        if log.isEnabledFor(logging.INFO):
            log.info("Allocate %s -> %s container %s: %s", list(ids), a.pod.ref, c.container,
                     ", ".join(f"{g.key} {g.vram_bytes}B" for g in c.devices))
        return dp.ContainerAllocateResponse(
            envs=edits.env_dict(),
            mounts=[dp.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
                    for m in edits.mounts],
            devices=[dp.DeviceSpec(container_path=n.path, host_path=n.source, permissions=n.permissions)
                     for n in edits.device_nodes],
            annotations=_annotations(a, c),
        )

    def prestart(self, req: dp.PreStartContainerRequest) -> dp.PreStartContainerResponse:
        ids = tuple(req.devices_ids)
        self._check_slots(ids)
        with self._lock:
            aid = next((self._by_slot[i] for i in ids if i in self._by_slot), None)
            rec = self._records.get(aid) if aid else None
        owner = self._owner(ids, required=rec is None)
        if rec is not None:
            if owner is not None and (owner.namespace, owner.pod, owner.container) != (
                    rec.alloc.pod.namespace, rec.alloc.pod.name, rec.alloc.container):
                raise PluginError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"slots {list(ids)} were handed to {rec.alloc.pod.ref}/{rec.alloc.container} at "
                                  f"Allocate but the kubelet gave them to {owner.namespace}/{owner.pod}/"
                                  f"{owner.container}; refusing to start it with another pod's devices "
                                  "(was a pod with ai.compute/slot admitted without an HCS assignment?)")
            self._ensure_files(rec)
            return dp.PreStartContainerResponse()
        assert owner is not None
        with self._lock:
            match = [(a, c) for a in self.source.assignments() if (a.pod.namespace, a.pod.name) == (
                owner.namespace, owner.pod) for c in a.containers if c.container == owner.container]
            if not match:
                raise PluginError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"container {owner.namespace}/{owner.pod}/{owner.container} holds slots "
                                  f"{list(ids)} but has no HCS assignment on node {self.config.nodeName!r}")
            a, c = match[0]
            edits, _ = self._edits(a, c)
            slot = sorted(ids)[0]
            cdi.write_slot_spec(Path(self.config.cdiDir), self.config.cdiKind, slot, edits, {})
            self._record(Allocation(a.pod, c.container, ids, c.devices))
        self._tell_source(self.source.confirm, a.pod.uid)
        log.info("PreStartContainer %s -> %s container %s (CDI %s)", list(ids), a.pod.ref, c.container,
                 cdi.qualified_name(self.config.cdiKind, slot))
        return dp.PreStartContainerResponse()

    def _owner(self, ids: Sequence[str], required: bool) -> Holder | None:
        if self.podres is None:
            if required:
                raise PluginError(grpc.StatusCode.UNAVAILABLE,
                                  "PreStartContainer needs the kubelet pod-resources API to resolve slots "
                                  f"{list(ids)}; set node.podResourcesSocket")
            return None
        try:
            holders = self.podres.holders(self.config.resourceName)
        except PodResourcesError as exc:
            if required:
                raise PluginError(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
            log.warning("%s; cannot verify slots %s", exc, list(ids))
            return None
        want = set(ids)
        owner = next((h for h in holders if want & set(h.device_ids)), None)
        if owner is None and required:
            raise PluginError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"the kubelet's pod-resources API shows no container holding slots {list(ids)}")
        return owner

    def _hold(self, worker: ThreadPoolExecutor, job: Callable[[], None]) -> None:
        with self._lock:
            self._held.append((worker, job))

    def release_background(self) -> None:
        """Start the held background work (called once the kubelet has its reply; housekeeping too)."""
        with self._lock:
            held, self._held = self._held, []
        for worker, job in held:
            try:
                worker.submit(job)
            except RuntimeError:  # shutting down: do it inline
                job()

    def _background(self, fn: Callable[[Allocation], None], a: Allocation) -> None:
        """A state-dir write, in order with the others."""
        def run() -> None:
            try:
                fn(a)
            except Exception as exc:
                log.error("state dir %s: %s(%s/%s) failed: %s", self.store.dir, getattr(fn, "__name__", fn),
                          a.pod.ref, a.container, exc)

        self._hold(self._disk, run)

    def _tell_source(self, fn: Callable[[str], None], uid: str) -> None:
        """Confirm or release a pod's assignment, in order, unless the agent is stopping."""
        def run() -> None:
            try:
                fn(uid)
            except Exception as exc:
                log.warning("assignment source: %s(%s) failed: %s", getattr(fn, "__name__", fn), uid, exc)

        if not self.stopped.is_set():
            self._hold(self._remote, run)

    def flush(self) -> None:
        """Start the held background work and wait until it is done."""
        self.release_background()
        for worker in (self._disk, self._remote):
            done = threading.Event()
            try:
                worker.submit(done.set)
            except RuntimeError:
                continue
            done.wait(10)

    # ---- recovery / garbage collection ---------------------------------------------------------

    def recover(self) -> list[Allocation]:
        """Load records, rebuild what is missing from the kubelet + assignment source; returns them."""
        loaded, corrupt = self.store.load()
        for old in loaded:
            if all(s in self._slot_by_id for s in old.slots):
                self._record(old, persist=False)
                self._restore_files(old)
            else:
                log.warning("state: allocation of %s/%s names unknown slots %s; dropping it",
                            old.pod.ref, old.container, old.slots)
                self.store.remove(old)
        self.release_background()
        if self.podres is None:
            return self.allocations()
        try:
            holders = self.podres.holders(self.config.resourceName)
        except PodResourcesError as exc:
            log.warning("recovery: %s; keeping %d allocations from the state dir", exc, len(loaded))
            return self.allocations()
        with self._lock:
            known = set(self._by_slot)
        missing = [h for h in holders if not set(h.device_ids) & known]
        if missing:
            assignments = self.source.assignments()
            for h in missing:
                a = next((x for x in assignments if (x.pod.namespace, x.pod.name) == (h.namespace, h.pod)), None)
                c = a.container(h.container) if a else None
                if a is None or c is None:
                    self._unaccounted = True
                    log.error("recovery: %s/%s container %s holds slots %s but no assignment is known for it; "
                              "its devices cannot be accounted (corrupt=%d files)", h.namespace, h.pod,
                              h.container, list(h.device_ids), len(corrupt))
                    continue
                rebuilt = Allocation(a.pod, h.container, h.device_ids, c.devices)
                self._record(rebuilt)
                self._restore_files(rebuilt)
                if self.config.cdiEnabled:
                    # Allocate may have answered with the CDI name and died before PreStartContainer.
                    try:
                        edits, _ = self._edits(a, c)
                        cdi.write_slot_spec(Path(self.config.cdiDir), self.config.cdiKind, sorted(h.device_ids)[0],
                                           edits, {})
                    except PluginError as exc:
                        log.error("recovery: %s", exc)
                log.info("recovery: rebuilt allocation of %s/%s from the kubelet and the assignment source",
                         a.pod.ref, h.container)
        self.release_background()
        return self.allocations()

    def _restore_files(self, a: Allocation) -> None:
        """Re-create a recorded container's quota file and ledger dir when they are gone (quotaDir and
        shmDir are on tmpfs: after a reboot the kubelet restarts the container with the same mounts)."""
        quota_file = self.quota_file(a.pod.uid, a.container)
        try:
            if not quota_file.exists():
                log.info("recovery: re-creating quota file %s", quota_file)
            self._write_files(a.pod.uid, a.container, a.devices, a.pod.compute_policy)
        except OSError as exc:
            log.error("recovery: cannot re-create the files of %s/%s: %s", a.pod.ref, a.container, exc)

    def reconcile(self) -> int:
        """Drop allocations whose slots the kubelet no longer lists (pod gone). Returns how many."""
        if self.podres is None:
            return 0
        try:
            holders = self.podres.holders(self.config.resourceName)
        except PodResourcesError as exc:
            log.debug("reconcile skipped: %s", exc)
            return 0
        held = {i for h in holders for i in h.device_ids}
        now = time.monotonic()
        dropped = 0
        with self._lock:
            self._deferred = {s for s in self._deferred
                              if s in held or now - self._deferred_since.get(s, now) <= RECONCILE_GRACE_S}
            self._deferred_since = {s: t for s, t in self._deferred_since.items() if s in self._deferred}
            self._unaccounted = bool(held - set(self._by_slot) - self._deferred)
            stale = [r.alloc for r in self._records.values()
                     if now - r.recorded_at > RECONCILE_GRACE_S and not set(r.alloc.slots) & held]
            for a in stale:
                log.info("pod %s container %s no longer holds slots %s; releasing", a.pod.ref, a.container, a.slots)
                self._drop(a)
                dropped += 1
        self.release_background()
        self.sweep_files()
        return dropped

    def close(self) -> None:
        self.release_background()
        self.sweep_files()
        self.stopped.set()
        self.view.wake()
        # state-dir writes finish; queued Confirm/Release calls are dropped (each may wait 5 s for an
        # allocator that is gone, e.g. scaled down first by helm uninstall's hook, and the agent must
        # stop within its grace period: the allocator frees a deleted pod's reservation by itself)
        self._disk.shutdown(wait=True, cancel_futures=False)
        self._remote.shutdown(wait=True, cancel_futures=True)


def _unhold(index: dict[Any, set[str]], key: Any, container: str) -> None:
    held = index.get(key)
    if held is not None:
        held.discard(container)
        if not held:
            del index[key]


def _annotations(a: Assignment, c: ContainerAssignment) -> dict[str, str]:
    return {"hcs.io/pod": a.pod.ref, "hcs.io/devices": ",".join(g.key for g in c.devices)}


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def grants_for(devices: Sequence[Device], vram: Sequence[int]) -> tuple[DeviceGrant, ...]:
    return tuple(DeviceGrant(d.vendor, d.index, d.uuid, v, model=d.model, island=d.island)
                 for d, v in zip(devices, vram, strict=True))


class DevicePluginServicer(dp_grpc.DevicePluginServicer):
    """gRPC shell: metrics, error mapping; never lets an exception escape as a crash."""

    def __init__(self, core: PluginCore) -> None:
        self.core = core

    def _call(self, method: str, fn: Callable[[], Any], context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        code = "OK"
        try:
            return fn()
        except PluginError as exc:
            code = exc.code.name
            log.warning("%s: %s", method, exc)
            context.abort(exc.code, str(exc))
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortError":
                raise
            code = "INTERNAL"
            log.exception("%s failed", method)
            context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error: {exc}")
        finally:
            self.core.metrics.grpc_latency.labels(method, code).observe(time.perf_counter() - start)
            # background work queued by this call starts once the reply is sent, not while it is
            if not context.add_callback(self.core.release_background):
                self.core.release_background()

    def GetDevicePluginOptions(self, request: dp.Empty, context: grpc.ServicerContext) -> dp.DevicePluginOptions:
        out = self._call("GetDevicePluginOptions", self.core.options, context)
        return cast(dp.DevicePluginOptions, out)

    def ListAndWatch(self, request: dp.Empty, context: grpc.ServicerContext) -> Iterator[dp.ListAndWatchResponse]:
        view = self.core.view
        context.add_callback(view.wake)
        seen = view.version
        yield self.core.device_list()
        while context.is_active() and not self.core.stopped.is_set():
            now = view.wait_change(seen, 1.0)
            if now != seen and context.is_active():
                seen = now
                yield self.core.device_list()

    def GetPreferredAllocation(self, request: dp.PreferredAllocationRequest,
                               context: grpc.ServicerContext) -> dp.PreferredAllocationResponse:
        out = self._call("GetPreferredAllocation", lambda: self.core.preferred(request), context)
        return cast(dp.PreferredAllocationResponse, out)

    def Allocate(self, request: dp.AllocateRequest, context: grpc.ServicerContext) -> dp.AllocateResponse:
        out = self._call("Allocate", lambda: self.core.allocate(request), context)
        return cast(dp.AllocateResponse, out)

    def PreStartContainer(self, request: dp.PreStartContainerRequest,
                          context: grpc.ServicerContext) -> dp.PreStartContainerResponse:
        out = self._call("PreStartContainer", lambda: self.core.prestart(request), context)
        return cast(dp.PreStartContainerResponse, out)
