"""The checkpoint controller: periodic checkpoints and the triggers that move opted-in pods.

A small controller beside the allocator, not the node agent: a move spans two nodes (checkpoint on the
source, image import and pod creation on the target) and must survive the source node going away, so it
runs where every node's kubelet and the API server are reachable; the node-local parts go through
:class:`hcs.checkpoint.migrate.NodeAccess`.

Triggers (each pass of :meth:`Controller.reconcile`, every ``period_s``):

* **device verdict** -- the node annotation ``hcs.io/device-verdicts`` (JSON ``{uuid: verdict}``) marks a
  device ``failing``/``failed``: every ``hcs.io/checkpoint: auto`` pod on that device moves to a healthy
  device (:func:`inject_verdict` writes it; sub-health detection calls the same function). If the pod's
  container is already gone, it is restored from its last periodic checkpoint. Pods with ``manual`` get an
  event; ``never`` (the default) pods get a ``NotCheckpointed`` warning event (restart from scratch).
* **drain** -- ``kubectl drain`` cordons, then evicts. Each ``auto`` pod is covered by a PodDisruptionBudget
  (``maxUnavailable: 0``) made here, so the eviction is refused (drain retries) until the controller has
  seen the cordon and moved the pod (a delete is not an eviction); then drain finishes.
* **interval** -- ``hcs.io/checkpoint-interval`` on an ``auto`` pod: a checkpoint every interval into the
  store (the pod keeps running), so a sudden loss costs at most one interval of work.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from hcs.checkpoint.migrate import (
    ANN_DEVICE,
    ANN_INTERVAL,
    ANN_LAST_CHECKPOINT,
    BAD_VERDICTS,
    NODE_ANN_VERDICTS,
    CheckpointError,
    Migrator,
    mode_of,
    parse_interval,
)
from hcs.kube import KubeError, KubeRest

log = logging.getLogger(__name__)

PDB_LABEL = "hcs.io/checkpoint-guard"
VERDICTS = ("healthy", "suspect", "failing", "failed")


def inject_verdict(kube: KubeRest, node: str, device: str, verdict: str) -> dict[str, str]:
    """Record a device verdict on the node (the interface sub-health detection calls). Returns the map."""
    if verdict not in VERDICTS:
        raise CheckpointError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    obj = kube.request("GET", f"/api/v1/nodes/{node}")
    raw = (obj["metadata"].get("annotations") or {}).get(NODE_ANN_VERDICTS, "")
    try:
        cur = json.loads(raw) if raw else {}
    except ValueError:
        cur = {}
    if not isinstance(cur, dict):
        cur = {}
    if verdict == "healthy":
        cur.pop(device, None)
    else:
        cur[device] = verdict
    kube.request("PATCH", f"/api/v1/nodes/{node}", content_type="application/merge-patch+json",
                 body={"metadata": {"annotations": {NODE_ANN_VERDICTS: json.dumps(cur, sort_keys=True) if cur
                                                    else None}}})
    return {str(k): str(v) for k, v in cur.items()}


class Controller:
    def __init__(self, migrator: Migrator, *, period_s: float = 1.0, namespace: str | None = None) -> None:
        self.m = migrator
        self.kube = migrator.c.kube
        self.period_s = period_s
        self.namespace = namespace
        self.stop_event = threading.Event()
        self.last_checkpoint: dict[str, float] = {}  # pod uid -> monotonic time of the last periodic checkpoint
        self.warned: set[tuple[str, str]] = set()
        self.moves: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def pods(self) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{self.namespace}/pods" if self.namespace else "/api/v1/pods"
        items: list[dict[str, Any]] = self.kube.request("GET", path).get("items", [])
        return [p for p in items if p["spec"].get("nodeName") in self.m.c.nodes
                and not p["metadata"].get("deletionTimestamp")]

    # ------------------------------------------------------------ drain guard
    def ensure_guard(self, pod: Mapping[str, Any]) -> None:
        md = pod["metadata"]
        ns, uid = md["namespace"], md.get("uid", "")
        if (md.get("labels") or {}).get(PDB_LABEL) != uid[:63]:
            self.kube.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{md['name']}",
                              content_type="application/merge-patch+json",
                              body={"metadata": {"labels": {PDB_LABEL: uid[:63]}}})
        name = f"hcs-ckpt-{uid[:18]}"
        try:
            self.kube.request("GET", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}")
        except KubeError as e:
            if e.status != 404:
                raise
            self.kube.request("POST", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", body={
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "hcs"},
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": md["name"],
                                                  "uid": uid}]},
                "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {PDB_LABEL: uid[:63]}}}})

    # ------------------------------------------------------------ one pass
    def reconcile(self) -> None:
        nodes: dict[str, dict[str, Any]] = {}
        for n in self.m.c.nodes:
            try:
                nodes[n] = self.kube.request("GET", f"/api/v1/nodes/{n}")
            except KubeError:
                continue
        for pod in self.pods():
            md = pod["metadata"]
            ns, name, uid = md["namespace"], md["name"], md.get("uid", "")
            node = pod["spec"]["nodeName"]
            mode = mode_of(pod)
            nobj = nodes.get(node, {})
            verdicts = self._verdicts(nobj)
            dev = (md.get("annotations") or {}).get(ANN_DEVICE, "")
            trigger = ""
            if dev and verdicts.get(dev) in BAD_VERDICTS:
                trigger = f"device {dev} on {node} is {verdicts[dev]}"
            elif nobj.get("spec", {}).get("unschedulable"):
                trigger = f"node {node} is cordoned (drain)"
            if mode == "auto":
                try:
                    self.ensure_guard(pod)
                except KubeError as e:
                    self.errors.append(f"{ns}/{name}: drain guard: {e}")
            if trigger:
                if mode == "auto":
                    self._move(ns, name, trigger)
                elif (uid, trigger) not in self.warned:
                    self.warned.add((uid, trigger))
                    what = ("not opted in (hcs.io/checkpoint: never)" if mode == "never"
                            else "hcs.io/checkpoint: manual, run `hcs migrate` to move it")
                    self.m.event(pod, "NotCheckpointed" if mode == "never" else "CheckpointManual",
                                 f"{trigger}: {what}; the workload restarts from scratch if the device fails",
                                 warning=True)
                continue
            if mode == "auto":
                self._periodic(pod)

    def _verdicts(self, node: Mapping[str, Any]) -> dict[str, str]:
        raw = (node.get("metadata", {}).get("annotations") or {}).get(NODE_ANN_VERDICTS, "")
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _move(self, ns: str, name: str, trigger: str) -> None:
        try:
            res = self.m.migrate(ns, name, reason=trigger)
            self.moves.append(dict(res.as_dict(), trigger=trigger))
        except CheckpointError as e:
            log.error("%s/%s: %s", ns, name, e)
            self.errors.append(f"{ns}/{name}: {e}")

    def _periodic(self, pod: Mapping[str, Any]) -> None:
        md = pod["metadata"]
        raw = (md.get("annotations") or {}).get(ANN_INTERVAL)
        if not raw:
            return
        try:
            interval = parse_interval(raw)
        except CheckpointError as e:
            if (md.get("uid", ""), "interval") not in self.warned:
                self.warned.add((md.get("uid", ""), "interval"))
                self.m.event(pod, "BadCheckpointInterval", str(e), warning=True)
            return
        uid = md.get("uid", "")
        now = time.monotonic()
        if uid not in self.last_checkpoint:
            self.last_checkpoint[uid] = now  # first checkpoint one interval after we first see the pod
            return
        if now - self.last_checkpoint[uid] < interval:
            return
        cs = (pod.get("status", {}).get("containerStatuses") or [{}])[0]
        if not cs.get("state", {}).get("running"):
            return
        try:
            res = self.m.checkpoint(pod)
            self.last_checkpoint[uid] = time.monotonic()
            self.kube.request("PATCH", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}",
                              content_type="application/merge-patch+json",
                              body={"metadata": {"annotations": {ANN_LAST_CHECKPOINT: json.dumps(
                                  {"archive": res.archive.name, "at": time.time(),
                                   "seconds": round(res.seconds, 3)})}}})
        except (CheckpointError, KubeError) as e:
            self.errors.append(f"{md['namespace']}/{md['name']}: periodic checkpoint: {e}")
            self.last_checkpoint[uid] = time.monotonic()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.reconcile()
            except KubeError as e:
                log.warning("checkpoint controller pass failed: %s", e)
            self.stop_event.wait(self.period_s)
