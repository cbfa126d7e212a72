"""This node's pods' assignment records, kept by a watch: the kubelet's admission path reads memory.

The kubelet admits pods one at a time per node and calls the device plugin's GetPreferredAllocation and
Allocate synchronously while it does, so any API or allocator round trip there is paid once per pod, in
series, by every pod of a burst. The allocator writes its signed record (``hcs.io/assignment``) on the
pod before it binds the pod, so by the time the kubelet admits a pod its record is on the API server;
this cache watches the node's pods (``spec.nodeName`` field selector, as every agent request) and keeps
only records that pass :meth:`hcs.records.RecordKey.check` (signed by the allocator, bound to the pod's
uid/namespace/name and this node). Finished or deleting pods leave it.

The watch can lag the kubelet's own: the plugin uses the cache only together with the kubelet's view of
its pods (pod-resources ``List``), and falls back to the assignment source when the cache has nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from hcs.kube import Informer, KubeRest
from hcs.node.assignments import Assignment, demand_from_pod
from hcs.node.sources import node_pods_query
from hcs.records import RecordKey

log = logging.getLogger(__name__)


class NodePodRecords:
    """Verified assignment records of the pods bound to ``node``, by (namespace, name)."""

    def __init__(self, rest: KubeRest, node: str, records: RecordKey | None = None, *,
                 watch_timeout_s: float = 300.0) -> None:
        if not node:
            raise ValueError("NodePodRecords needs the node name (it watches only that node's pods)")
        self.node = node
        self.records = records if records is not None else RecordKey.from_env()
        self._changed = threading.Condition()
        #: pods the kubelet knows that this watch never delivered within a catch_up (e.g. a static pod
        #: without its mirror): not waited for again
        self._given_up: set[tuple[str, str]] = set()
        self.informer = Informer(rest, "/api/v1/pods", "pods", query=node_pods_query(node), trim=self._trim,
                                 on_change=self._on_change, on_synced=self._on_synced,
                                 watch_timeout_s=watch_timeout_s, thread_name="hcs-node-records",
                                 broken_hint="; Allocate asks the assignment source meanwhile")

    def _trim(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        """Every pod of this node stays (so :meth:`catch_up` can tell a pod the watch has not delivered
        yet from one without a record); ``assigned`` is its verified record or None."""
        if ((pod.get("spec") or {}).get("nodeName") or "") != self.node:
            return None  # never act on another node's pod, whatever the server returned
        d = demand_from_pod(pod, self.records, self.node)
        meta = pod.get("metadata") or {}
        return {"key": (str(meta.get("namespace", "")), str(meta.get("name", ""))),
                "assigned": d.assigned if d is not None else None,
                "uid": str(meta.get("uid", "")), "compute_policy": d.pod.compute_policy if d is not None else ""}

    def _on_change(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        with self._changed:
            if new is not None:
                self._given_up.discard(new["key"])
            self._changed.notify_all()

    def _on_synced(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def catch_up(self, pods: Iterable[tuple[str, str]], timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the watch has delivered every pod of ``pods`` (namespace,
        name): the kubelet's pods, which include the one it is admitting. False if some never came."""
        want = set(pods)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            self._given_up &= want  # forget pods the kubelet no longer has
            while True:
                missing = {k for k in want - self._given_up if k not in self.informer.items}
                if not missing:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not self.informer.synced:
                    self._given_up |= missing
                    log.info("pods %s are on the kubelet but not (yet) in the watch of node %s's pods after "
                             "%.2f s; not waiting for them again", sorted(f"{n}/{p}" for n, p in missing)[:5],
                             self.node, timeout_s)
                    return False
                self._changed.wait(left)

    @property
    def synced(self) -> bool:
        return self.informer.synced

    def wait_synced(self, timeout_s: float) -> bool:
        return self.informer.wait_synced(timeout_s)

    def assignments(self) -> Sequence[Assignment] | None:
        """The cached records, or None while the watch is not synced (never listed, or broken)."""
        if not self.informer.synced:
            return None
        return [o["assigned"] for o in self.informer.values() if o["assigned"] is not None]

    def compute_policy(self, pod_uid: str) -> str | None:
        """The ``hcs.io/compute-policy`` of this node's pod ``pod_uid`` ("" = none, or the pod asks for no
        VRAM); None when the watch is not synced or has not delivered the pod (ask the API server)."""
        if not self.informer.synced:
            return None
        for o in self.informer.values():
            if o["uid"] == pod_uid:
                return str(o["compute_policy"])
        return None

    def start(self) -> NodePodRecords:
        self.informer.start()
        return self

    def stop(self) -> None:
        self.informer.stop()
