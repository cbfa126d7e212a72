"""The allocator's edge to the API server: inventory sync, assignment annotations, binding, Lease.

The API server is the source of truth. A binding writes ``hcs.io/assignment`` on the pod *before*
the Binding is created; :meth:`KubeSync.resync` rebuilds every reservation from those annotations,
so a restarted (or newly elected) allocator holds exactly the state the cluster shows, and drops
reservations whose pod is gone or finished.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hcs.allocator.inventory import ExchangeRates, InventoryError, parse_computenode, with_node
from hcs.allocator.placement import ANN_ASSIGNMENT, PodDemand, RequestError, demand_from_pod
from hcs.allocator.service import annotation_json, reservation_from_annotation
from hcs.allocator.state import AllocatorState, Conflict, NoFit, Reservation, RestoreConflict
from hcs.kube import KubeError, KubeRest
from hcs.records import CONFLICTS, SIGNATURE_ANNOTATION, PodIdentity, RecordError, RecordKey

log = logging.getLogger(__name__)

CN_PATH = "/apis/hetero.zrs.io/v1alpha1/computenodes"
MERGE = "application/merge-patch+json"


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeSync:
    """Keeps :class:`AllocatorState` in step with ComputeNodes, Nodes and annotated pods."""

    def __init__(self, rest: KubeRest, state: AllocatorState, rates: ExchangeRates | None = None,
                 records: RecordKey | None = None) -> None:
        self.rest = rest
        self.state = state
        #: signs the hcs.io/assignment records this allocator writes and checks those it reads back
        self.records = records if records is not None else RecordKey.from_env()
        self._conflicts_reported: set[str] = set()
        self.rates = rates or ExchangeRates.from_config(None)
        self._stop = threading.Event()
        self.problems: list[str] = []

    # ---------------------------------------------------------------- inventory
    def sync_inventory(self) -> None:
        cns = self.rest.request("GET", CN_PATH).get("items") or []
        nodes = {n["metadata"]["name"]: n for n in self.rest.request("GET", "/api/v1/nodes").get("items") or []}
        seen = set()
        for obj in cns:
            try:
                inv = parse_computenode(obj, self.rates)
            except InventoryError as exc:
                log.warning("%s; node skipped until fixed", exc)
                continue
            if inv.name in nodes:
                try:
                    inv = with_node(inv, nodes[inv.name])
                except InventoryError as exc:
                    log.warning("%s", exc)
            seen.add(inv.name)
            self.state.set_node(inv)
        for inv in self.state.nodes():
            if inv.name not in seen:
                log.info("ComputeNode %s is gone: no new placements there", inv.name)
                self.state.remove_node(inv.name)

    # ---------------------------------------------------------------- reservations
    def resync(self) -> list[str]:
        """Rebuild reservations from pod annotations; release those whose pod is gone. Returns problems."""
        pods = self.rest.request("GET", "/api/v1/pods").get("items") or []
        live: dict[str, Reservation] = {}
        problems = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            text = (meta.get("annotations") or {}).get(ANN_ASSIGNMENT)
            if not text:
                continue
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                continue
            where = f"pod {meta.get('namespace')}/{meta.get('name')}"
            try:  # only records this allocator (or a node agent) signed, bound to this very pod
                self.records.check(text, (meta.get("annotations") or {}).get(SIGNATURE_ANNOTATION),
                                   PodIdentity.of(pod), component="allocator")
                res = reservation_from_annotation(text, where)
            except RecordError as exc:
                problems.append(f"{where}: {ANN_ASSIGNMENT} ignored: {exc}")
                continue
            except ValueError as exc:
                problems.append(str(exc))
                continue
            bound = (pod.get("spec") or {}).get("nodeName")
            if bound and bound != res.node:
                problems.append(f"{where}: bound to {bound} but annotated for {res.node}; annotation ignored")
                continue
            try:
                demand = demand_from_pod(pod)
            except RequestError:
                demand = None
            if demand is not None:
                from dataclasses import replace

                # the pod's own creation time decides who came first in a conflict (not the record's)
                res = replace(res, cpu_milli=demand.cpu_milli, memory_bytes=demand.memory_bytes,
                              pod=replace(res.pod, created_ms=demand.pod.created_ms or res.pod.created_ms))
            live[res.pod.uid] = res
        for r in self.state.reservations():
            if r.pod.uid not in live:
                log.info("pod %s (%s) no longer holds devices on %s: released", r.pod.ref, r.pod.uid, r.node)
                self.state.release(r.pod.uid)
        problems += self.state.restore(live.values(), on_conflict=self._report_conflict)
        for p in problems:
            log.warning("%s", p)
        self.problems = problems
        return problems

    def _report_conflict(self, c: RestoreConflict) -> None:
        """A restored reservation lost to an earlier pod's: an Event on the pod and the conflicts metric."""
        if c.loser.pod.uid in self._conflicts_reported:
            return  # reported once per pod, not on every resync
        if len(self._conflicts_reported) > 10000:
            self._conflicts_reported.clear()
        self._conflicts_reported.add(c.loser.pod.uid)
        CONFLICTS.labels(c.loser.node).inc()
        held = ", ".join(w.pod.ref for w in c.winners) or "earlier pods"
        self.event(c.loser.pod.namespace, c.loser.pod.name, c.loser.pod.uid, "HcsAssignmentConflict",
                   f"the devices recorded for this pod on {c.loser.node} are held by the earlier {held} "
                   f"({c.reason}); this pod's reservation was not restored. Delete and recreate the pod to "
                   "be placed again")

    # ---------------------------------------------------------------- image retargeting
    def release_vendor_gates(self) -> int:
        """Place pods the webhook gated with ``hcs.io/vendor-image``: reserve devices (the allocator picks
        the vendor), record the assignment, then patch the vendor's images and remove the gate, so the
        scheduler can bind the pod — the extender's filter keeps it on the reserved node. Returns the
        number of pods released."""
        from hcs.webhook.config import VENDOR_IMAGE_GATE
        from hcs.webhook.retarget import RetargetError, retarget_pod

        pods = self.rest.request("GET", "/api/v1/pods",
                                 query={"fieldSelector": "spec.nodeName=,status.phase=Pending"}).get("items") or []
        released = 0
        for pod in pods:
            gates = (pod.get("spec") or {}).get("schedulingGates") or []
            if not any(g.get("name") == VENDOR_IMAGE_GATE for g in gates):
                continue
            meta = pod["metadata"]
            ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
            try:
                demand = demand_from_pod(pod)
                if demand is None:
                    continue
                res = self.state.reservation(uid) or self.state.reserve(demand)
            except (RequestError, NoFit, Conflict) as exc:
                self.event(ns, name, uid, "HcsNoFit", f"waiting for a vendor: {exc}")
                continue
            vendor = next((g.vendor for g in res.grants()), "")
            try:
                self.annotate(res, ns, name)
                retarget_pod(self.rest.api_client, ns, name, vendor)
            except (KubeError, RetargetError) as exc:
                log.warning("pod %s/%s: retargeting to %s failed (%s); retrying", ns, name, vendor, exc)
                continue
            released += 1
            self.event(ns, name, uid, "HcsRetargeted", f"placed on {res.node} ({vendor}); images set for {vendor}",
                       kind="Normal")
        return released

    # ---------------------------------------------------------------- pods
    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.rest.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def find_pod(self, uid: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            if name:
                pod = self.get_pod(namespace or "default", name)
                return pod if not uid or pod["metadata"]["uid"] == uid else None
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

    def annotate(self, r: Reservation | None, namespace: str, name: str) -> None:
        """Write (or with ``None`` remove) the pod's signed assignment record."""
        body = {"metadata": {"annotations": self.records.annotations(annotation_json(r) if r else None)}}
        self.rest.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body, content_type=MERGE)

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": namespace, "uid": uid},
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
        was_leader = False
        while not self._stop.is_set():
            try:
                self.sync_inventory()
                leader = is_leader()
                if leader:
                    self.resync()
                    self.release_vendor_gates()
                was_leader = leader
            except KubeError as exc:
                log.warning("API server sync failed (%s); retrying in %.0fs", exc, interval_s)
            except Exception:
                log.exception("sync failed; retrying")
            self._stop.wait(interval_s if was_leader else min(interval_s, 1.0))

    def stop(self) -> None:
        self._stop.set()


class Persister:
    """Writes reservation changes onto the pod (the gRPC path; the extender's bind does it itself)."""

    def __init__(self, sync: KubeSync) -> None:
        self.sync = sync

    def reserved(self, r: Reservation) -> None:
        self.sync.annotate(r, r.pod.namespace, r.pod.name)

    def confirmed(self, r: Reservation) -> None:
        self.sync.annotate(r, r.pod.namespace, r.pod.name)

    def released(self, r: Reservation) -> None:
        try:
            self.sync.annotate(None, r.pod.namespace, r.pod.name)
        except KubeError as exc:
            if exc.status != 404:
                raise


class LeaderElector:
    """coordination.k8s.io/v1 Lease: acquire when free or expired, renew every ``duration/3``."""

    def __init__(self, rest: KubeRest, namespace: str, name: str, identity: str, duration_s: int = 15) -> None:
        self.rest = rest
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self._leader_until = 0.0
        self._stop = threading.Event()
        self.on_elected: Callable[[], None] | None = None

    def is_leader(self) -> bool:
        return time.monotonic() < self._leader_until

    def try_acquire(self) -> bool:
        now = _now_rfc3339()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s, "renewTime": now}
        try:
            lease = self.rest.request("GET", f"{self.path}/{self.name}")
        except KubeError as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": now, "leaseTransitions": 0}}
            try:
                self.rest.request("POST", self.path, body=body)
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
            self.rest.request("PUT", f"{self.path}/{self.name}", body=lease)  # resourceVersion guards races
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
            self._leader_until = start + self.duration_s * 2 / 3
            if not was:
                log.info("elected leader (%s)", self.identity)
                if self.on_elected:
                    self.on_elected()
        elif was and not self.is_leader():
            log.warning("lost the lease %s/%s", self.namespace, self.name)
        return ok

    def run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.duration_s / 3)

    def release(self) -> None:
        self._stop.set()
        if not self.is_leader():
            return
        try:
            lease = self.rest.request("GET", f"{self.path}/{self.name}")
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self.rest.request("PUT", f"{self.path}/{self.name}", body=lease)
        except KubeError as exc:
            log.debug("lease release: %s", exc)
        self._leader_until = 0.0


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
