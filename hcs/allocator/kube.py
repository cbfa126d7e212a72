"""The allocator's edge to the API server: live state by list+watch, assignment annotations, binding, Lease.

The API server is the source of truth. A binding writes ``hcs.io/assignment`` (and the label
``hcs.io/allocator=assigned``) on the pod *before* the Binding is created. :class:`KubeSync` keeps
:class:`AllocatorState` in step with three watches (list once, then watch from the list's
resourceVersion with bookmarks; relist on 410 Gone or a broken stream):

- Nodes and ComputeNodes → the inventory;
- pods labelled ``hcs.io/allocator`` (assigned by the allocator, or gated by the webhook for image
  retargeting) → reservations: an annotated, unfinished pod holds its assignment; a deleted or
  finished pod, or one whose annotation is gone, releases it.

A bind in flight (between ``reserve`` and the watch seeing the annotation it wrote) is never
touched by what the watch delivers or by reconciliation: events for that pod are held back until
the bind ends, and events older than the allocator's own last write to the pod are ignored. A
reservation is released by reconciliation only when the watch has caught up with that write and
the pod is not there. A restarted (or newly elected) allocator therefore holds exactly the state
the cluster shows. resourceVersions are compared as integers (etcd revisions), as every API server
backed by etcd serves them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hcs.allocator.metrics import AllocatorMetrics
from hcs.allocator.placement import ANN_ASSIGNMENT, PodDemand, RequestError, demand_from_pod
from hcs.allocator.service import annotation_json, reservation_from_annotation
from hcs.allocator.state import AllocatorState, Conflict, NoFit, Reservation, RestoreConflict
from hcs.cluster_inventory import ExchangeRates, InventoryError, parse_computenode, with_node
from hcs.kube import Informer, KubeError, KubeRest, object_key, rv_int
from hcs.records import SIGNATURE_ANNOTATION, PodIdentity, RecordError, RecordKey
from hcs.retarget import VENDOR_IMAGE_GATE, RetargetError, retarget_pod

log = logging.getLogger(__name__)

CN_PATH = "/apis/hetero.zrs.io/v1alpha1/computenodes"
MERGE = "application/merge-patch+json"
#: on every pod the allocator assigned (``assigned``) or the webhook gated for retargeting (``gated``);
#: the pod watch selects on it, so the allocator never lists or watches other pods
LABEL = "hcs.io/allocator"
#: a reservation with no write of ours on record and younger than this is left alone by reconciliation
#: (the gRPC Reserve path records its annotation right after reserving)
GRACE_S = 30.0


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def trim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """What reservations and retargeting read of a pod (drops managedFields, volumes, status details)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp",
                                          "labels", "annotations", "deletionTimestamp") if k in meta},
        "spec": {"nodeName": spec.get("nodeName") or "", "schedulingGates": spec.get("schedulingGates") or [],
                 "containers": [{"name": c.get("name", ""), "resources": c.get("resources") or {}}
                                for c in spec.get("containers") or []]},
        "status": {"phase": (pod.get("status") or {}).get("phase", "")},
    }


def trim_node(node: dict[str, Any]) -> dict[str, Any]:
    meta = node.get("metadata") or {}
    return {"metadata": {"name": meta.get("name", ""), "resourceVersion": meta.get("resourceVersion", "")},
            "status": {"allocatable": ((node.get("status") or {}).get("allocatable")) or {}}}


def _same_grant(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same assignment annotation and phase (what decides a reservation, besides the node bound to)."""
    return bool(((a.get("metadata") or {}).get("annotations") or {}).get(ANN_ASSIGNMENT)
                == ((b.get("metadata") or {}).get("annotations") or {}).get(ANN_ASSIGNMENT)
                and (a.get("status") or {}).get("phase") == (b.get("status") or {}).get("phase"))


class KubeSync:
    """Keeps :class:`AllocatorState` in step with Nodes, ComputeNodes and the pods the allocator assigned."""

    def __init__(self, rest: KubeRest, state: AllocatorState, rates: ExchangeRates | None = None,
                 metrics: AllocatorMetrics | None = None, *, watch_timeout_s: float = 60.0,
                 records: RecordKey | None = None) -> None:
        self.rest = rest
        self.state = state
        #: signs the hcs.io/assignment records this allocator writes and checks those it reads back
        self.records = records if records is not None else RecordKey.from_env()
        self._conflicts_reported: set[str] = set()
        self.rates = rates or ExchangeRates.from_config(None)
        self.metrics = metrics or AllocatorMetrics()
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self.problems: list[str] = []
        self._inflight: dict[str, int] = {}  # pod uid -> binds in flight
        self._written: dict[str, tuple[int, float]] = {}  # pod uid -> (resourceVersion of our write, when)
        self._held_back: set[str] = set()  # uids whose events arrived while their bind was in flight
        self._cn_of_node: dict[str, tuple[str, str]] = {}  # node name -> ComputeNode key
        self._adopted = False  # adopt() has completed once (it never lists again)
        kw: dict[str, Any] = {"metrics": self.metrics, "watch_timeout_s": watch_timeout_s}
        self.nodes = Informer(rest, "/api/v1/nodes", "nodes", trim=trim_node, on_change=self._node_event, **kw)
        self.computenodes = Informer(rest, CN_PATH, "computenodes", on_change=self._cn_event, **kw)
        self.pods = Informer(rest, "/api/v1/pods", "pods", query={"labelSelector": LABEL}, trim=trim_pod,
                             on_change=self._pod_event, on_synced=self.reconcile, **kw)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for inf in (self.computenodes, self.nodes, self.pods):
            inf.start()

    def synced(self) -> bool:
        """Every watch has listed once (the state is complete enough to place pods)."""
        return all(i.ever_synced.is_set() for i in (self.computenodes, self.nodes, self.pods))

    def wait_synced(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for inf in (self.computenodes, self.nodes, self.pods):
            if not inf.ever_synced.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    # ---------------------------------------------------------------- inventory
    def _refresh_node(self, node: str) -> None:
        key = self._cn_of_node.get(node)
        cn = self.computenodes.items.get(key) if key else None
        if cn is None:
            if any(n.name == node for n in self.state.nodes()):
                log.info("ComputeNode for %s is gone: no new placements there", node)
            self.state.remove_node(node)
            return
        try:
            inv = parse_computenode(cn, self.rates)
        except InventoryError as exc:
            log.warning("%s; node skipped until fixed", exc)
            self.state.remove_node(node)
            return
        n = self.nodes.items.get(("", inv.name))
        if n is not None:
            try:
                inv = with_node(inv, n)
            except InventoryError as exc:
                log.warning("%s", exc)
        self.state.set_node(inv)

    def _cn_event(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if etype == "SYNC" and old is not None and new is not None and rv_int(old) == rv_int(new):
            return
        names = set()
        with self._lock:
            for obj, gone in ((old, True), (new, False)):
                node = str(((obj or {}).get("spec") or {}).get("nodeName") or "")
                if not node:
                    continue
                names.add(node)
                if gone and self._cn_of_node.get(node) == object_key(obj):
                    del self._cn_of_node[node]
            if new is not None:
                node = str((new.get("spec") or {}).get("nodeName") or "")
                if node:
                    self._cn_of_node[node] = object_key(new)
            for node in names:
                self._refresh_node(node)

    def _node_event(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        name = object_key(new or old)[1]
        if name not in self._cn_of_node:
            return
        if old is not None and new is not None and old["status"] == new["status"]:
            return
        with self._lock:
            self._refresh_node(name)

    def sync_inventory(self) -> None:
        """One LIST of ComputeNodes and Nodes (the watches do this themselves once started)."""
        self.computenodes.relist()
        self.nodes.relist()

    # ---------------------------------------------------------------- reservations
    @contextlib.contextmanager
    def binding(self, uid: str) -> Iterator[None]:
        """Mark a bind in flight: nothing the watch delivers about this pod touches its reservation until
        the bind ends; then the held-back events are applied."""
        with self._lock:
            self._inflight[uid] = self._inflight.get(uid, 0) + 1
            self.metrics.inflight.set(sum(self._inflight.values()))
        try:
            yield
        finally:
            with self._lock:
                n = self._inflight.pop(uid, 1) - 1
                if n > 0:
                    self._inflight[uid] = n
                self.metrics.inflight.set(sum(self._inflight.values()))
                if n <= 0 and uid in self._held_back:
                    self._held_back.discard(uid)
                    self._settle(uid)

    def _wrote(self, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if uid:
            with self._lock:
                self._written[uid] = (rv_int(pod), time.monotonic())

    def _reservation_of(self, pod: dict[str, Any], problems: list[str]) -> Reservation | None:
        meta = pod.get("metadata") or {}
        text = (meta.get("annotations") or {}).get(ANN_ASSIGNMENT)
        if not text or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return None
        where = f"pod {meta.get('namespace')}/{meta.get('name')}"
        try:  # only records this allocator (or a node agent) signed, bound to this very pod (uid, name, node)
            self.records.check(text, (meta.get("annotations") or {}).get(SIGNATURE_ANNOTATION),
                               PodIdentity.of(pod), component="allocator")
            res = reservation_from_annotation(text, where)
        except RecordError as exc:
            problems.append(f"{where}: {ANN_ASSIGNMENT} ignored: {exc}")
            return None
        except ValueError as exc:
            problems.append(str(exc))
            return None
        bound = (pod.get("spec") or {}).get("nodeName")
        if bound and bound != res.node:
            problems.append(f"{where}: bound to {bound} but annotated for {res.node}; annotation ignored")
            return None
        try:
            demand = demand_from_pod(pod)
        except RequestError:
            demand = None
        if demand is not None:
            # the pod's own creation time decides who came first in a conflict (not the record's)
            res = replace(res, cpu_milli=demand.cpu_milli, memory_bytes=demand.memory_bytes,
                          pod=replace(res.pod, created_ms=demand.pod.created_ms or res.pod.created_ms))
        return replace(res, bound=bool(bound))

    def grant_of(self, pod: dict[str, Any]) -> Reservation | None:
        """The pod's signed assignment as a reservation (None: none, or it fails a check: logged)."""
        problems: list[str] = []
        res = self._reservation_of(pod, problems)
        for p in problems:
            log.warning("%s", p)
        return res

    def recheck(self, uid: str) -> None:
        """Inside :meth:`binding`: apply the watched pod again when the bind ends (the bind changed the
        state in a way the watch may not report, e.g. a reservation made for a pod found bound)."""
        with self._lock:
            self._held_back.add(uid)

    def _apply_pod(self, pod: dict[str, Any] | None, uid: str, problems: list[str]) -> None:
        """Make the state hold what the (watched) pod says; ``None``: the pod is gone. A running pod no
        longer counts as starting on its node (``AllocatorState.rank``)."""
        self._apply_grant(pod, uid, problems)
        if pod is not None and (pod.get("status") or {}).get("phase") == "Running":
            self.state.started(uid)

    def _apply_grant(self, pod: dict[str, Any] | None, uid: str, problems: list[str]) -> None:
        want = self._reservation_of(pod, problems) if pod is not None else None
        have = self.state.reservation(uid)
        if want is None:
            if have is not None:
                log.info("pod %s (%s) no longer holds devices on %s: released", have.pod.ref, uid, have.node)
                self.state.release(uid)
            return
        if have is not None:
            if have.node == want.node and have.containers == want.containers:
                if have.bound != want.bound:
                    self.state.mark_bound(uid, want.bound)
                return
            self.state.release(uid)
        # bound pods and binds in flight keep their devices in a conflict (see AllocatorState.restore)
        problems += self.state.restore([want], on_conflict=self._report_conflict,
                                       first=lambda r: r.pod.uid in self._inflight)

    def _report_conflict(self, c: RestoreConflict) -> None:
        """A restored reservation lost to an earlier pod's (restore never over-commits): an Event on the
        losing pod naming the winner, and ``hcs_allocator_conflicts_total{kind="restore"}``; once per pod."""
        if c.loser.pod.uid in self._conflicts_reported:
            return
        if len(self._conflicts_reported) > 10000:
            self._conflicts_reported.clear()
        self._conflicts_reported.add(c.loser.pod.uid)
        self.metrics.conflicts.labels("restore").inc()
        held = ", ".join(w.pod.ref for w in c.winners) or "earlier pods"
        self.event(c.loser.pod.namespace, c.loser.pod.name, c.loser.pod.uid, "HcsAssignmentConflict",
                   f"the devices recorded for this pod on {c.loser.node} are held by the earlier {held} "
                   f"({c.reason}); this pod's reservation was not restored. Delete and recreate the pod to "
                   "be placed again")

    def _pod_event(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        obj = new or old or {}
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        if etype == "SYNC" and old is not None and new is not None and rv_int(old) == rv_int(new) \
                and self.state.reservation(uid) is not None:
            return
        problems: list[str] = []
        with self._lock:
            if uid in self._inflight:
                self._held_back.add(uid)
                return
            wrote = self._written.get(uid)
            if wrote is not None:
                if rv_int(obj) < wrote[0]:
                    return  # older than our own last write to this pod
                del self._written[uid]
            if old is not None and new is not None and _same_grant(old, new):
                have = self.state.reservation(uid)
                bound = (new.get("spec") or {}).get("nodeName")
                if have is not None and (not bound or bound == have.node):
                    if bool(bound) != have.bound:
                        self.state.mark_bound(uid, bool(bound))
                    return  # e.g. the Binding landed: nothing to parse again
            self._apply_pod(new if etype != "DELETED" else None, uid, problems)
        for p in problems:
            log.warning("%s", p)

    def _settle(self, uid: str) -> None:
        """After a bind: apply what the watch has of the pod, if it has caught up with our write."""
        problems: list[str] = []
        res = self.state.reservation(uid)
        pod = self._cached_pod(uid, res)
        wrote = self._written.get(uid)
        if pod is not None and (wrote is None or rv_int(pod) >= wrote[0]):
            self._written.pop(uid, None)
            self._apply_pod(pod, uid, problems)
        elif pod is None and wrote is not None and self.pods.synced and self.pods.rv >= wrote[0]:
            self._written.pop(uid, None)  # the watch is past our write and the pod is not there: gone
            self._apply_pod(None, uid, problems)
        for p in problems:
            log.warning("%s", p)

    def _cached_pod(self, uid: str, res: Reservation | None) -> dict[str, Any] | None:
        if res is not None:
            pod = self.pods.items.get((res.pod.namespace, res.pod.name))
            if pod is not None and (pod.get("metadata") or {}).get("uid") == uid:
                return pod
            return None
        return next((p for p in self.pods.values() if (p.get("metadata") or {}).get("uid") == uid), None)

    def reconcile(self, full: bool = True) -> list[str]:
        """Compare the reservations with the watched pods, bind-in-flight excluded: release those whose
        pod the watch does not have once it has caught up with our last write. Returns problems.

        ``full=False`` looks only at the reservations with a write of ours on record (``_written``: the binds
        and records the watch has not delivered yet), a handful instead of every reservation; the periodic
        loop does that and a full pass every ``GRACE_S / 2`` (what only a full pass finds, a reservation with
        no write on record, is released only after ``GRACE_S`` anyway)."""
        problems: list[str] = []
        if not self.pods.synced:
            return problems
        now_ms = time.time() * 1000
        with self._lock:
            if full:
                candidates = self.state.reservations()
            else:
                candidates = [r for r in map(self.state.reservation, list(self._written)) if r is not None]
            for r in candidates:
                uid = r.pod.uid
                if uid in self._inflight:
                    continue
                pod = self.pods.items.get((r.pod.namespace, r.pod.name))
                if pod is not None and (pod.get("metadata") or {}).get("uid") == uid:
                    continue
                wrote = self._written.get(uid)
                if wrote is not None:
                    if self.pods.rv < wrote[0] and time.monotonic() - wrote[1] < 10 * GRACE_S:
                        continue  # the watch has not delivered our write yet
                elif now_ms - r.reserved_at_ms < GRACE_S * 1000:
                    continue  # reserved just now (its write is on the way)
                self._written.pop(uid, None)
                self._apply_pod(None, uid, problems)
            for uid in [u for u in self._held_back if u not in self._inflight]:
                self._held_back.discard(uid)
                self._settle(uid)
        for p in problems:
            log.warning("%s", p)
        return problems

    def resync(self) -> list[str]:
        """One LIST of the allocator's pods, applied to the state, then :meth:`reconcile` (the pod watch
        does this itself once started). Returns problems."""
        self.problems = []
        orig = self.pods.on_change

        def collect(etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            obj = new or old or {}
            uid = str((obj.get("metadata") or {}).get("uid") or "")
            if not uid:
                return
            with self._lock:
                if uid in self._inflight:
                    return
                self._apply_pod(new if etype != "DELETED" else None, uid, self.problems)

        self.pods.on_change, self.pods.on_synced = collect, None
        try:
            self.pods.relist()
        finally:
            self.pods.on_change, self.pods.on_synced = orig, self.reconcile
        self.problems += self.reconcile()
        for p in self.problems:
            log.warning("%s", p)
        return self.problems

    def adopt(self, page_pause_s: float = 0.02) -> int:
        """Label pods annotated (or gated) before the label existed, so the pod watch sees them. A one-time
        migration: once it has completed, this process never lists again (after a Lease lost and regained
        the watched state is current: every pod this allocator or the webhook touches since carries the
        label). The LIST asks the server only for pods *without* the label (``!hcs.io/allocator``), in
        pages, pausing between pages so the decision path keeps the CPU. Returns the number labelled."""
        if self._adopted:
            return 0
        selector = f"!{LABEL}"
        query = {"limit": "500", "labelSelector": selector}
        done = 0
        while True:
            page = self.rest.request("GET", "/api/v1/pods", query=query)
            for pod in page.get("items") or []:
                meta = pod.get("metadata") or {}
                if LABEL in (meta.get("labels") or {}):
                    continue
                value = "assigned" if ANN_ASSIGNMENT in (meta.get("annotations") or {}) else (
                    "gated" if any(g.get("name") == VENDOR_IMAGE_GATE
                                   for g in (pod.get("spec") or {}).get("schedulingGates") or []) else "")
                if not value:
                    continue
                try:
                    self.rest.request("PATCH", f"/api/v1/namespaces/{meta.get('namespace')}/pods/{meta.get('name')}",
                                      body={"metadata": {"labels": {LABEL: value}}}, content_type=MERGE)
                    done += 1
                except KubeError as exc:
                    log.warning("pod %s/%s: cannot label it %s=%s: %s", meta.get("namespace"), meta.get("name"),
                                LABEL, value, exc)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                self._adopted = True
                return done
            query = {"limit": "500", "labelSelector": selector, "continue": token}
            self._stop.wait(page_pause_s)

    # ---------------------------------------------------------------- image retargeting
    def release_vendor_gates(self) -> int:
        """Place pods the webhook gated with ``hcs.io/vendor-image``: reserve devices (the allocator picks
        the vendor), record the assignment, then patch the vendor's images and remove the gate, so the
        scheduler can bind the pod — the extender's filter keeps it on the reserved node. Returns the
        number of pods released."""
        released = 0
        for pod in self.pods.values():  # the webhook labels the pods it gates (hcs.io/allocator=gated)
            gates = (pod.get("spec") or {}).get("schedulingGates") or []
            if (pod.get("spec") or {}).get("nodeName") or not any(g.get("name") == VENDOR_IMAGE_GATE for g in gates):
                continue
            meta = pod["metadata"]
            ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
            try:
                demand = demand_from_pod(pod)
                if demand is None:
                    continue
            except RequestError as exc:
                self.event(ns, name, uid, "HcsNoFit", f"waiting for a vendor: {exc}")
                continue
            if not self._place_gated(pod, demand, VENDOR_IMAGE_GATE, retarget_pod, RetargetError):
                continue
            released += 1
        return released

    def _place_gated(self, pod: dict[str, Any], demand: PodDemand, gate: str, retarget_pod: Any,
                     retarget_error: type[Exception]) -> bool:
        meta = pod["metadata"]
        ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
        with self.binding(uid):
            try:
                res = self.state.reservation(uid) or self.state.reserve(demand)
            except (NoFit, Conflict) as exc:
                self.event(ns, name, uid, "HcsNoFit", f"waiting for a vendor: {exc}")
                return False
            vendor = next((g.vendor for g in res.grants()), "")
            try:
                self.annotate(res, ns, name)
                retarget_pod(self.rest.api_client, ns, name, vendor)
            except (KubeError, retarget_error) as exc:
                log.warning("pod %s/%s: retargeting to %s failed (%s); retrying", ns, name, vendor, exc)
                return False
        self.event(ns, name, uid, "HcsRetargeted", f"placed on {res.node} ({vendor}); images set for {vendor}",
                   kind="Normal")
        return True

    # ---------------------------------------------------------------- pods
    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.rest.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def find_pod(self, uid: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            if name:
                pod = self.get_pod(namespace or "default", name)
                return pod if not uid or pod["metadata"]["uid"] == uid else None
            cached = self._cached_pod(uid, None)
            if cached is not None:
                return self.get_pod(cached["metadata"]["namespace"], cached["metadata"]["name"])
            for pod in self.rest.request("GET", "/api/v1/pods").get("items") or []:
                if pod["metadata"].get("uid") == uid:
                    return dict(pod)
        except KubeError as exc:
            if exc.status != 404:
                raise
        return None

    def resolve(self, uid: str, namespace: str, name: str) -> PodDemand | None:
        pod = self.find_pod(uid, namespace, name)
        return demand_from_pod(pod) if pod else None

    def annotate(self, r: Reservation | None, namespace: str, name: str, resource_version: str = "") -> str:
        """Write (or with ``None`` clear) the assignment annotation and the label the pod watch selects on;
        with ``resource_version`` only if the pod is still at that version (else KubeError 409). Returns
        the pod's new resourceVersion."""
        meta: dict[str, Any] = {"annotations": self.records.annotations(annotation_json(r) if r else None),
                                "labels": {LABEL: "assigned" if r else None}}
        if resource_version:
            meta["resourceVersion"] = resource_version
        pod = self.rest.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", body={"metadata": meta},
                                content_type=MERGE)
        self._wrote(pod)
        return str((pod.get("metadata") or {}).get("resourceVersion") or "")

    def bind(self, namespace: str, name: str, uid: str, node: str, resource_version: str = "") -> None:
        """Create the Binding; with ``resource_version`` the API server binds only that version of the pod
        (a precondition, as for ``uid``): a Binding sent for an assignment that was since cleared fails."""
        meta = {"name": name, "namespace": namespace, "uid": uid}
        if resource_version:
            meta["resourceVersion"] = resource_version
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": meta,
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        self.rest.request("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body=body)

    def event(self, namespace: str, name: str, uid: str, reason: str, message: str, kind: str = "Warning") -> None:
        """Best effort: an Event on the pod (``kubectl describe pod`` shows why)."""
        now = _now_rfc3339()
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{name}.hcs-", "namespace": namespace},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace, "uid": uid},
                "reason": reason, "message": message[:1000], "type": kind, "source": {"component": "hcs-allocator"},
                "firstTimestamp": now[:19] + "Z", "lastTimestamp": now[:19] + "Z", "count": 1}
        try:
            self.rest.request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)
        except KubeError as exc:
            log.debug("event on %s/%s not written: %s", namespace, name, exc)

    # ---------------------------------------------------------------- loop
    def run(self, interval_s: float, is_leader: Callable[[], bool]) -> None:
        """Start the watches; while leader, reconcile (local, no API call) and place gated pods."""
        self.start()
        last_full = 0.0
        while not self._stop.is_set():
            leader = is_leader()
            self.metrics.leader.set(1 if leader else 0)
            try:
                if leader and self.synced():
                    full = time.monotonic() - last_full >= GRACE_S / 2
                    self.reconcile(full=full)
                    if full:
                        last_full = time.monotonic()
                    self.release_vendor_gates()
            except KubeError as exc:
                log.warning("API server call failed (%s); retrying in %.0fs", exc, interval_s)
            except Exception:
                log.exception("sync failed; retrying")
            self._stop.wait(interval_s)

    def stop(self) -> None:
        self._stop.set()
        for inf in (self.pods, self.nodes, self.computenodes):
            inf.stop()


class Persister:
    """Writes reservation changes onto the pod (the gRPC path; the extender's bind does it itself)."""

    def __init__(self, sync: KubeSync) -> None:
        self.sync = sync

    def reserved(self, r: Reservation) -> None:
        with self.sync.binding(r.pod.uid):
            self.sync.annotate(r, r.pod.namespace, r.pod.name)

    def confirmed(self, r: Reservation) -> None:
        with self.sync.binding(r.pod.uid):
            self.sync.annotate(r, r.pod.namespace, r.pod.name)

    def released(self, r: Reservation) -> None:
        with self.sync.binding(r.pod.uid):
            try:
                self.sync.annotate(None, r.pod.namespace, r.pod.name)
            except KubeError as exc:
                if exc.status != 404:
                    raise


class LeaderElector:
    """coordination.k8s.io/v1 Lease: acquire when free or expired; the holder renews every ``retry_s``.

    Renewal is built to survive a loaded process: it runs on its own thread and should get its own
    API client (``hcs allocator`` gives it one, so binds and relists never queue ahead of it in a
    connection pool); each call is bounded by ``timeout_s`` (a quarter of the Lease), so one hung call
    costs one try, not the Lease; a renewal is a single PUT of the Lease object held from the last
    success (its resourceVersion guards against another holder), with a GET only after a conflict.
    The holder counts itself leader until two thirds of the Lease after the start of its last
    successful renewal, so with the defaults (10 s Lease, 2 s retry) three renewals in a row may fail
    before it stops serving, and a standby takes over only once the full Lease has passed.
    """

    def __init__(self, rest: KubeRest, namespace: str, name: str, identity: str, duration_s: int = 15,
                 *, retry_s: float | None = None, timeout_s: float | None = None) -> None:
        self.rest = rest
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self.retry_s = retry_s if retry_s is not None else min(2.0, duration_s / 5)
        self.timeout_s = timeout_s if timeout_s is not None else max(1.0, duration_s / 4)
        self._leader_until = 0.0
        self._held: dict[str, Any] | None = None  # the Lease as our last successful write left it
        self._stop = threading.Event()
        self.on_elected: Callable[[], None] | None = None
        self.renewals = 0
        self.failures = 0

    def is_leader(self) -> bool:
        return time.monotonic() < self._leader_until

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return self.rest.request(method, path, body=body, timeout=self.timeout_s)

    def _renew_held(self, now: str) -> bool | None:
        """Renew with one PUT of the Lease we hold; None: we hold none (or it changed), decide afresh."""
        lease = self._held
        if lease is None:
            return None
        lease = {**lease, "spec": {**(lease.get("spec") or {}), "renewTime": now,
                                   "holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s}}
        try:
            self._held = self._call("PUT", f"{self.path}/{self.name}", body=lease)
        except KubeError as exc:
            self._held = None
            if exc.status == 409:
                return None  # someone else wrote it: read it and decide
            raise
        return True

    def try_acquire(self) -> bool:
        now = _now_rfc3339()
        renewed = self._renew_held(now)
        if renewed is not None:
            return renewed
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s, "renewTime": now}
        try:
            lease = self._call("GET", f"{self.path}/{self.name}")
        except KubeError as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": now, "leaseTransitions": 0}}
            try:
                self._held = self._call("POST", self.path, body=body)
            except KubeError as exc2:
                if exc2.status == 409:
                    return False
                raise
            return True
        s = lease.get("spec") or {}
        holder = s.get("holderIdentity")
        if holder and holder != self.identity:
            renew = s.get("renewTime")
            dur = int(s.get("leaseDurationSeconds") or self.duration_s)
            if renew:
                when = datetime.fromisoformat(str(renew).replace("Z", "+00:00"))
                if (datetime.now(UTC) - when).total_seconds() < dur:
                    return False
        new_spec = {**s, **spec}
        if holder != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(s.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            self._held = self._call("PUT", f"{self.path}/{self.name}", body=lease)  # resourceVersion guards races
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def step(self) -> bool:
        start = time.monotonic()
        was = self.is_leader()
        try:
            ok = self.try_acquire()
        except KubeError as exc:
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            ok = False
        if ok:
            self.renewals += 1
            self._leader_until = start + self.duration_s * 2 / 3
            if not was:
                log.info("elected leader (%s)", self.identity)
                if self.on_elected:
                    self.on_elected()
        else:
            self.failures += 1 if was else 0
            if was and not self.is_leader():
                log.warning("lost the lease %s/%s", self.namespace, self.name)
        return ok

    def run(self) -> None:
        """The leader renews every ``retry_s``; a standby polls as often (at most every second), so it takes
        over within that of the Lease expiring (or at once when the leader released it on shutdown)."""
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.retry_s if self.is_leader() else min(1.0, self.retry_s))

    def release(self) -> None:
        self._stop.set()
        if not self.is_leader():
            return
        try:
            lease = self._call("GET", f"{self.path}/{self.name}")
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self._call("PUT", f"{self.path}/{self.name}", body=lease)
        except KubeError as exc:
            log.debug("lease release: %s", exc)
        self._held = None
        self._leader_until = 0.0


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
