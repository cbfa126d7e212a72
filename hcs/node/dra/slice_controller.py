"""Keeps this node's ResourceSlices equal to the desired set (a port of the Go resourceslice controller).

One pool per node (pool name = node name). Slices have deterministic names ``<node>-<driver>-<i>``,
an owner reference to the Node (garbage-collected with it) and an annotation with the hash of
their content. Whenever anything differs (content, slice count, a slice deleted by the kubelet or
anyone), the pool generation is bumped and every slice rewritten, obsolete slices are deleted
first. A watch on the node's slices triggers a reconcile at once; a periodic resync catches the
rest. API errors never escape: they are logged and retried with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from hcs.kube import RESOURCE_API, KubeError, KubeRest
from hcs.node.dra.config import DraConfig
from hcs.node.dra.slices import SPEC_HASH_ANNOTATION, SliceContent

log = logging.getLogger(__name__)

SLICES = f"{RESOURCE_API}/resourceslices"


class SliceController:
    def __init__(self, rest: KubeRest, cfg: DraConfig) -> None:
        self.rest = rest
        self.cfg = cfg
        self._lock = threading.Lock()
        self._desired: list[SliceContent] | None = None
        self._generation = 0
        self._node_uid = ""
        self._trigger = threading.Event()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_resp: Any = None
        self.last_error = ""
        self.reconciles = 0
        self.writes = 0

    # ----------------------------------------------------------------- public
    @property
    def generation(self) -> int:
        return self._generation

    @property
    def selector(self) -> str:
        return f"spec.nodeName={self.cfg.node_name},spec.driver={self.cfg.driver_name}"

    def update(self, desired: Sequence[SliceContent]) -> None:
        """Set the desired slices; the reconcile thread publishes them."""
        with self._lock:
            self._desired = list(desired)
            self._synced.clear()
        self._trigger.set()

    def wait_synced(self, timeout_s: float) -> bool:
        return self._synced.wait(timeout_s)

    def start(self) -> None:
        self._stop.clear()
        for target, name in ((self._run, "dra-slices"), (self._watch_loop, "dra-slices-watch")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop publishing. Slices stay (a restarting agent must not make devices vanish)."""
        self._stop.set()
        self._trigger.set()
        resp = self._watch_resp
        if resp is not None:
            with contextlib.suppress(Exception):  # best effort on a socket another thread reads
                resp.shutdown()
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads.clear()

    def list_slices(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.rest.request("GET", SLICES, query={"fieldSelector": self.selector}).get(
            "items"
        ) or []
        return items

    def delete_all(self) -> None:
        for s in self.list_slices():
            self._delete(s["metadata"]["name"])

    # -------------------------------------------------------------- reconcile
    def _node_owner(self) -> list[dict[str, Any]]:
        if not self._node_uid:
            try:
                node = self.rest.request("GET", f"/api/v1/nodes/{self.cfg.node_name}")
                self._node_uid = node["metadata"]["uid"]
            except KubeError as exc:
                if exc.status != 404:
                    raise
                log.warning("node %s not found; publishing slices without an owner reference", self.cfg.node_name)
                return []
        return [
            {"apiVersion": "v1", "kind": "Node", "name": self.cfg.node_name, "uid": self._node_uid,
             "controller": True}
        ]

    def _in_sync(self, existing: dict[str, dict[str, Any]], desired: list[SliceContent], gen: int,
                 owners: list[dict[str, Any]]) -> bool:
        if set(existing) != {d.name for d in desired}:
            return False
        for d in desired:
            s = existing[d.name]
            pool = s.get("spec", {}).get("pool", {})
            if (s.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION) != d.spec_hash:
                return False
            if pool.get("generation") != gen or pool.get("resourceSliceCount") != len(desired):
                return False
            if pool.get("name") != self.cfg.node_name:
                return False
            if owners and not s.get("metadata", {}).get("ownerReferences"):
                return False  # the Node appeared after we published
        return True

    def reconcile_once(self) -> bool:
        """Make the API match the desired slices. True when something was written. Raises KubeError."""
        with self._lock:
            desired = self._desired
        if desired is None:
            return False
        self.reconciles += 1
        existing = {s["metadata"]["name"]: s for s in self.list_slices()}
        gens = [int(s.get("spec", {}).get("pool", {}).get("generation", 0)) for s in existing.values()]
        current = max([self._generation, *gens])
        owners = self._node_owner()
        if existing and self._in_sync(existing, desired, current, owners):
            self._generation = current
            return False
        gen = current + 1
        wanted = {d.name for d in desired}
        for name in sorted(set(existing) - wanted):  # obsolete first
            self._delete(name)
        for d in desired:
            body: dict[str, Any] = {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": {"name": d.name, "annotations": {SPEC_HASH_ANNOTATION: d.spec_hash}},
                "spec": {
                    **d.spec,
                    "pool": {"name": self.cfg.node_name, "generation": gen, "resourceSliceCount": len(desired)},
                },
            }
            if owners:
                body["metadata"]["ownerReferences"] = owners
            old = existing.get(d.name)
            if old is not None:
                body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                self.rest.request("PUT", f"{SLICES}/{d.name}", body=body)
            else:
                self.rest.request("POST", SLICES, body=body)
            self.writes += 1
        self._generation = gen
        log.info("published %d ResourceSlice(s) for node %s, pool generation %d",
                 len(desired), self.cfg.node_name, gen)
        return True

    def _delete(self, name: str) -> None:
        try:
            self.rest.request("DELETE", f"{SLICES}/{name}")
        except KubeError as exc:
            if exc.status != 404:
                raise

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            self._trigger.wait(self.cfg.resync_s)
            self._trigger.clear()
            if self._stop.is_set():
                return
            try:
                self.reconcile_once()
                self.last_error = ""
                backoff = 0.1
                if self._desired is not None:
                    self._synced.set()
            except (KubeError, KeyError, ValueError, TypeError) as exc:
                # 409 conflicts (someone changed a slice meanwhile) are retried at once
                status = getattr(exc, "status", 0)
                self.last_error = str(exc)
                log.log(logging.INFO if status == 409 else logging.WARNING, "slice reconcile: %s", exc)
                self._stop.wait(0.0 if status == 409 else backoff)
                backoff = min(backoff * 2, 5.0)
                self._trigger.set()

    # ------------------------------------------------------------------ watch
    def _relevant(self, event: dict[str, Any]) -> bool:
        obj = event.get("object") or {}
        etype = event.get("type")
        if etype == "ERROR":
            return False
        name = obj.get("metadata", {}).get("name", "")
        with self._lock:
            desired = {d.name: d for d in self._desired or []}
        if etype == "DELETED":
            return True
        want = desired.get(name)
        if want is None:
            return True  # a slice we do not want
        ann = (obj.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        gen = obj.get("spec", {}).get("pool", {}).get("generation")
        return ann != want.spec_hash or (gen is not None and int(gen) < self._generation)

    def _keep_watch_resp(self, resp: Any) -> None:
        self._watch_resp = resp

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.rest.watch(
                    SLICES, query={"fieldSelector": self.selector}, timeout_s=60, on_open=self._keep_watch_resp
                ):
                    if self._stop.is_set():
                        return
                    if self._relevant(event):
                        log.info("ResourceSlice %s %s by someone else; reconciling",
                                 event.get("object", {}).get("metadata", {}).get("name"), event.get("type"))
                        self._trigger.set()
            except Exception as exc:  # noqa: BLE001 - the watch must survive anything; the resync covers gaps
                if self._stop.is_set():
                    return
                log.debug("slice watch ended: %s", exc)
                self._stop.wait(1.0)
            finally:
                self._watch_resp = None
            time.sleep(0.05)
