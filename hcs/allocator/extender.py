"""kube-scheduler extender over HTTP: ``/filter``, ``/prioritize``, ``/bind`` (nodeCacheCapable).

Wire types are those of ``k8s.io/kube-scheduler/extender/v1`` (Go structs without JSON tags, so
the keys are the Go field names): ``ExtenderArgs{Pod, Nodes, NodeNames}``,
``ExtenderFilterResult{Nodes, NodeNames, FailedNodes, FailedAndUnresolvableNodes, Error}``,
``HostPriorityList[{Host, Score}]`` (0..10), ``ExtenderBindingArgs{PodName, PodNamespace, PodUID,
Node}`` → ``ExtenderBindingResult{Error}``. Keys are read case-insensitively, as Go decodes them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hcs.allocator.kube import KubeSync
from hcs.allocator.metrics import AllocatorMetrics
from hcs.allocator.placement import ANN_ASSIGNMENT, RequestError, demand_from_pod
from hcs.allocator.service import reservation_from_annotation
from hcs.allocator.state import AllocatorState, Conflict, NoFit
from hcs.httpreply import send_once
from hcs.kube import KubeError
from hcs.webhook.retarget import ANN_RETARGETED  # set once the allocator chose the pod's vendor

log = logging.getLogger(__name__)

MAX_EXTENDER_PRIORITY = 10
CACHE_SIZE = 20000
SCHEDULER_CONFIG = Path(__file__).with_name("scheduler-config.yaml")


def _get(obj: Mapping[str, Any] | None, key: str) -> Any:
    if not obj:
        return None
    if key in obj:
        return obj[key]
    low = key.lower()
    return next((v for k, v in obj.items() if k.lower() == low), None)


def _node_names(args: Mapping[str, Any]) -> list[str]:
    names = _get(args, "NodeNames")
    if names is not None:
        return [str(n) for n in names]
    nodes = _get(args, "Nodes") or {}
    return [str((n.get("metadata") or {}).get("name", "")) for n in (nodes.get("items") or [])]


class Extender:
    """The extender's logic, independent of HTTP (tests call it directly too)."""

    def __init__(self, state: AllocatorState, sync: KubeSync | None = None,
                 is_leader: Callable[[], bool] | None = None, metrics: AllocatorMetrics | None = None) -> None:
        self.state = state
        self.sync = sync
        self.is_leader = is_leader or (lambda: True)
        self.metrics = metrics if metrics is not None else (sync.metrics if sync is not None else None)
        self._lock = threading.Lock()
        # pods seen by filter (bind then needs no GET) and filter scores (prioritize reuses them
        # while the state is unchanged); both bounded
        self._pods: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._scores: OrderedDict[str, tuple[int, tuple[str, ...], dict[str, float]]] = OrderedDict()

    def _remember(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)

    def _bound_node(self, namespace: str, name: str, uid: str) -> str | None:
        """Where the API server says the pod is bound ("" = unbound, None = pod gone or unknown).

        The scheduler's copy of a pod can be stale (a bind that timed out on its side may have
        succeeded here), so decisions that free devices ask the API server, never the caller.
        """
        if self.sync is None:
            return ""
        try:
            live = self.sync.get_pod(namespace, name)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        if uid and (live.get("metadata") or {}).get("uid") != uid:
            return None
        return str((live.get("spec") or {}).get("nodeName") or "")

    def _drop_stale(self, pod: Mapping[str, Any]) -> None:
        """A pod being (re)scheduled holds no devices: drop a reservation left by an interrupted bind,
        unless the API server shows the pod bound (then the scheduler's copy is the stale one)."""
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if not uid or (pod.get("spec") or {}).get("nodeName"):
            return
        if self.state.reservation(uid) is None:
            # no reservation, but maybe a grant on the API server the state could not take back (a conflict
            # on restore): clear it too, or it stays counted against devices others now hold
            watched = self.sync.pods.get(str(meta.get("namespace", "")), str(meta.get("name", ""))) \
                if self.sync is not None else None
            if not any(ANN_ASSIGNMENT in ((p.get("metadata") or {}).get("annotations") or {})
                       for p in (pod, watched) if p is not None):
                return
        if self.sync is None:
            self.state.release(uid)
            return
        with self.sync.binding(uid):
            if self._unreserve_unbound(str(meta.get("namespace", "")), str(meta.get("name", "")), uid):
                log.info("pod %s/%s is being rescheduled: dropped its unbound reservation",
                         meta.get("namespace"), meta.get("name"))

    def _unreserve_unbound(self, ns: str, name: str, uid: str) -> bool:
        """Free an unbound pod's reservation: clear its assignment on the API server first, guarded by the
        pod's resourceVersion (so a Binding still in flight for the annotated version, e.g. from a killed
        allocator, fails), then release the devices. False (nothing changed) when the pod is bound or changed
        meanwhile. Raises KubeError when the API server cannot be read."""
        assert self.sync is not None
        try:
            live = self.sync.get_pod(ns, name)
        except KubeError as exc:
            if exc.status != 404:
                raise
            self.state.release(uid)  # the pod is gone
            return True
        meta = live.get("metadata") or {}
        if meta.get("uid") == uid:
            if (live.get("spec") or {}).get("nodeName"):
                return False
            if ANN_ASSIGNMENT in (meta.get("annotations") or {}):
                try:
                    self.sync.annotate(None, ns, name, resource_version=str(meta.get("resourceVersion") or ""))
                except KubeError as exc:
                    if exc.status == 409:
                        return False  # changed since we read it (maybe bound): decide again next time
                    if exc.status != 404:
                        raise
        self.state.release(uid)
        return True

    def _bind_version(self, ns: str, name: str, uid: str, node: str, version: str, granted: bool) -> None:
        """The Binding, only onto the annotated version of the pod. Something else may update the pod in
        between (kube-scheduler writes its status): then, if the pod is still unbound and still carries
        our grant for this node, bind that newer version (at most 3 tries)."""
        assert self.sync is not None
        for attempt in range(3):
            try:
                self.sync.bind(ns, name, uid, node, resource_version=version)
                return
            except KubeError as exc:
                if exc.status != 409 or not granted or attempt == 2:
                    raise
                live = self.sync.get_pod(ns, name)
                meta = live.get("metadata") or {}
                text = (meta.get("annotations") or {}).get(ANN_ASSIGNMENT, "")
                try:
                    ours = reservation_from_annotation(text) if text else None
                except ValueError:
                    ours = None
                if (live.get("spec") or {}).get("nodeName") or meta.get("uid") != uid or ours is None \
                        or ours.node != node or ours.pod.uid != uid:
                    raise
                if self.metrics is not None:
                    self.metrics.conflicts.labels("bind_retry").inc()
                version = str(meta.get("resourceVersion") or "")

    def decide(self, verb: str, args: Mapping[str, Any]) -> Any:
        """One extender verb, counted and timed in ``hcs_allocator_decisions_total`` / ``_decision_seconds``."""
        fn = {"filter": self.filter, "prioritize": self.prioritize, "bind": self.bind}[verb]
        if self.metrics is None:
            return fn(args)
        with self.metrics.decision(verb) as outcome:
            out = fn(args)
            err = str(out.get("Error") or "") if isinstance(out, dict) else ""
            if "not the leader" in err:
                outcome("not_leader")
            elif err:
                outcome("error")
            elif verb == "filter" and isinstance(out, dict) and not out.get("NodeNames"):
                outcome("nofit")
            return out

    def filter(self, args: Mapping[str, Any]) -> dict[str, Any]:
        names = _node_names(args)
        pod = _get(args, "Pod") or {}
        meta = pod.get("metadata") or {}
        if not self.is_leader():
            return {"NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {},
                    "Error": "hcs allocator: this replica is not the leader"}
        try:
            demand = demand_from_pod(pod)
        except RequestError as exc:
            if self.sync:
                self.sync.event(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""),
                                "HcsInvalidRequest", str(exc))
            return {"NodeNames": [], "FailedNodes": {},
                    "FailedAndUnresolvableNodes": {n: str(exc) for n in names}, "Error": ""}
        if demand is None:
            return {"NodeNames": names, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": ""}
        held = self.state.reservation(demand.pod.uid) if demand.pod.uid else None
        if held is not None and ANN_RETARGETED in (meta.get("annotations") or {}):
            # placed before scheduling (its images were retargeted for that vendor): only that node will do
            return {"NodeNames": [n for n in names if n == held.node], "FailedAndUnresolvableNodes": {},
                    "FailedNodes": {n: f"the pod's images were set for its reservation on {held.node}"
                                    for n in names if n != held.node}, "Error": ""}
        self._drop_stale(pod)
        version = self.state.version
        verdicts = self.state.explain(demand, names, proposals=0)
        fit = [v.node for v in verdicts if v.fits]
        if demand.pod.uid:
            self._remember(self._pods, demand.pod.uid, pod)
            self._remember(self._scores, demand.pod.uid,
                           (version, tuple(sorted(names)), {v.node: v.score for v in verdicts if v.fits}))
        failed = {v.node: v.reason for v in verdicts if not v.fits}
        if not fit and self.sync:
            summary = "; ".join(f"{n}: {r}" for n, r in list(failed.items())[:5])
            self.sync.event(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""),
                            "HcsNoFit", f"no node fits the accelerator request: {summary}")
        return {"NodeNames": fit, "FailedNodes": failed, "FailedAndUnresolvableNodes": {}, "Error": ""}

    def prioritize(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        names = _node_names(args)
        pod = _get(args, "Pod") or {}
        try:
            demand = demand_from_pod(pod)
        except RequestError:
            demand = None
        if demand is None:
            return [{"Host": n, "Score": 0} for n in names]
        with self._lock:
            cached = self._scores.get(demand.pod.uid)
        # The filter's scores, even if a bind of another pod changed the state since (the scheduler binds
        # asynchronously, so it nearly always has): scores only rank nodes, bind re-checks the fit.
        if cached is not None and set(names) <= set(cached[1]):
            scores = cached[2]
        else:
            scores = {v.node: v.score for v in self.state.explain(demand, names, proposals=0) if v.fits}
        return [{"Host": n, "Score": int(round(scores.get(n, 0.0) * MAX_EXTENDER_PRIORITY / 100))} for n in names]

    def bind(self, args: Mapping[str, Any]) -> dict[str, Any]:
        uid = str(_get(args, "PodUID") or "")
        if self.sync is None or not uid:
            return self._bind(args)
        with self.sync.binding(uid):  # the watch leaves this pod's reservation alone until the bind ends
            return self._bind(args)

    def _bind(self, args: Mapping[str, Any]) -> dict[str, Any]:
        ns = str(_get(args, "PodNamespace") or "default")
        name = str(_get(args, "PodName") or "")
        uid = str(_get(args, "PodUID") or "")
        node = str(_get(args, "Node") or "")
        if not self.is_leader():
            return {"Error": "hcs allocator: this replica is not the leader"}
        if self.sync is None:
            return {"Error": "hcs allocator: no API server connection; cannot bind"}
        with self._lock:
            pod = self._pods.pop(uid, None) if uid else None
        if pod is None or (pod.get("metadata") or {}).get("name") != name:
            try:
                pod = self.sync.get_pod(ns, name)
            except KubeError as exc:
                return {"Error": f"pod {ns}/{name}: {exc}"}
        if uid and pod["metadata"].get("uid") != uid:
            return {"Error": f"pod {ns}/{name}: uid {uid} no longer exists (recreated)"}
        uid = str(pod["metadata"].get("uid"))
        try:
            demand = demand_from_pod(pod)
        except RequestError as exc:
            return {"Error": str(exc)}
        res = None
        version = ""
        if demand is not None:
            held = self.state.reservation(uid)
            if held is not None and held.node != node:
                try:
                    if not self._unreserve_unbound(ns, name, uid):
                        return {"Error": f"pod {ns}/{name} is already bound to {self._bound_node(ns, name, uid)}"
                                         " (or changed meanwhile; retry)"}
                except KubeError as exc:
                    return {"Error": f"pod {ns}/{name}: {exc}"}
            try:
                res = self.state.reserve(demand, node)
            except (NoFit, Conflict) as exc:
                self.sync.event(ns, name, uid, "HcsBindFailed", str(exc))
                return {"Error": str(exc)}
            try:
                version = self.sync.annotate(res, ns, name)  # source of truth first
            except KubeError as exc:
                # the write may have landed with its reply lost: clear it before freeing the devices
                try:
                    self.sync.annotate(None, ns, name)
                    self.state.release(uid)
                except KubeError:
                    log.warning("pod %s/%s: assignment may be recorded and could not be cleared; the "
                                "reservation stays until the pod is rescheduled or gone", ns, name)
                return {"Error": f"pod {ns}/{name}: cannot record the assignment: {exc}"}
        try:
            self._bind_version(ns, name, uid, node, version if res is not None else "", res is not None)
        except KubeError as exc:
            try:
                bound = self._bound_node(ns, name, uid)
            except KubeError:
                bound = ""
            if bound == node:  # an earlier attempt (timed out on the scheduler's side) did bind it
                return {"Error": ""}
            if res is not None:
                # The Binding may still land (its reply was lost): clear the grant only on the unbound version
                # of the pod (that makes a late Binding fail), then free the devices; bound meanwhile: done.
                try:
                    if not self._unreserve_unbound(ns, name, uid) and self._bound_node(ns, name, uid) == node:
                        return {"Error": ""}
                except KubeError:
                    log.warning("pod %s/%s: assignment not cleared; the reservation stays until the pod is "
                                "rescheduled or gone", ns, name)
            return {"Error": f"pod {ns}/{name}: binding to {node} failed: {exc}"}
        log.info("bound %s/%s to %s%s", ns, name, node, "" if res is None else
                 f" with {sum(1 for _ in res.grants())} device grant(s)")
        return {"Error": ""}


def make_handler(ext: Extender) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # kube-scheduler waits on /filter and /prioritize inside its serial scheduling cycle: no Nagle
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("extender: " + format, *args)

        def _reply(self, code: int, body: Any) -> None:
            send_once(self, code, json.dumps(body).encode())

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0].rstrip("/")
            if path == "/healthz":
                self._reply(200, {"ok": True, "leader": ext.is_leader()})
            elif path == "/readyz":  # only the leader with a synced state serves: a standby is not ready
                leader = ext.is_leader()
                self._reply(200 if leader else 503, {"ok": leader, "leader": leader})
            elif path == "/metrics" and ext.metrics is not None:
                from hcs.allocator.metrics import CONTENT_TYPE_LATEST

                ext.metrics.leader.set(1 if ext.is_leader() else 0)
                send_once(self, 200, ext.metrics.exposition(), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, {"Error": f"unknown path {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length") or 0)
                args = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(args, dict):
                    raise ValueError("body must be a JSON object")
            except ValueError as exc:
                self._reply(400, {"Error": f"bad request body: {exc}"})
                return
            verb = self.path.strip("/").split("/")[-1]
            try:
                if verb in ("filter", "prioritize", "bind"):
                    self._reply(200, ext.decide(verb, args))
                else:
                    self._reply(404, {"Error": f"unknown extender verb {verb!r}; use filter, prioritize or bind"})
            except Exception as exc:  # never crash the server on one bad request
                log.exception("extender %s failed", verb)
                self._reply(200, {"Error": f"hcs allocator internal error: {exc}"})

    return Handler


def serve_http(ext: Extender, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(ext))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="hcs-extender", daemon=True).start()
    return server
