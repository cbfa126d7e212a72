"""kube-scheduler extender over HTTP: ``/filter``, ``/prioritize``, ``/bind`` (nodeCacheCapable).

Wire types are those of ``k8s.io/kube-scheduler/extender/v1`` (Go structs without JSON tags, so
the keys are the Go field names): ``ExtenderArgs{Pod, Nodes, NodeNames}``,
``ExtenderFilterResult{Nodes, NodeNames, FailedNodes, FailedAndUnresolvableNodes, Error}``,
``HostPriorityList[{Host, Score}]`` (0..10), ``ExtenderBindingArgs{PodName, PodNamespace, PodUID,
Node}`` → ``ExtenderBindingResult{Error}``. Keys are read case-insensitively, as Go decodes them.

Only the scheduler may call the verbs: the listener serves HTTPS and a verb needs a client
certificate signed by ``allocator.extender.tls.clientCAFile`` whose subject CN is one of
``allowedSubjects`` (kube-scheduler's extender ``tlsConfig``; the chart issues both). ``/healthz`` and
``/readyz`` need no certificate (kubelet probes). Plain HTTP without caller checks exists only for
development, behind ``hcs allocator --insecure-dev``, which logs a warning. Bind refuses a pod that
asks for no ``ai.compute`` resources and carries no HCS assignment: the extender binds only what HCS
places, never an arbitrary pending pod with the allocator's rights.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hcs.allocator.kube import KubeSync
from hcs.allocator.metrics import CONTENT_TYPE_LATEST, AllocatorMetrics
from hcs.allocator.placement import ANN_ASSIGNMENT, NO_COMPUTENODE, PodDemand, RequestError, demand_from_pod
from hcs.allocator.policies import FloatArray
from hcs.allocator.state import AllocatorState, Conflict, NoFit, Reservation
from hcs.errors import ConfigError
from hcs.httpserve import CertStore, HttpService, Limits, Reply, Request
from hcs.kube import KubeError
from hcs.retarget import ANN_RETARGETED  # set once the allocator chose the pod's vendor

log = logging.getLogger(__name__)

MAX_EXTENDER_PRIORITY = 10
CACHE_SIZE = 20000
#: filter scores kept for the cycle's prioritize (taken by it): a scheduling cycle's worth, not a history
#: (each holds the node names the filter saw)
SCORES_CACHE_SIZE = 1024
SCHEDULER_CONFIG = Path(__file__).with_name("scheduler-config.yaml")


def priorities(normalised: FloatArray) -> list[int]:
    """Extender priorities (0..``MAX_EXTENDER_PRIORITY``) of scores normalised to 0..100: what
    ``int(round(round(s, 3) * MAX / 100))`` gives, vectorised (numpy's rounding to 3 places can differ from
    Python's in the last place, so values within reach of a .5 boundary are redone in Python)."""
    x = np.round(normalised, 3) * MAX_EXTENDER_PRIORITY / 100
    out = np.rint(x)
    for i in np.flatnonzero(np.abs(x - np.floor(x) - 0.5) < 1e-3).tolist():
        out[i] = round(round(float(normalised[i]), 3) * MAX_EXTENDER_PRIORITY / 100)
    return [int(v) for v in out.tolist()]


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
        return list(map(str, names))
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
        self._scores: OrderedDict[str, tuple[int, frozenset[str], dict[str, int]]] = OrderedDict()

    def _remember(self, cache: OrderedDict[str, Any], key: str, value: Any, size: int = CACHE_SIZE) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > size:
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

    def _bind_version(self, ns: str, name: str, uid: str, node: str, version: str, grant: Reservation) -> None:
        """The Binding, only onto a version of the pod that carries ``grant`` (signed, for ``node``): the
        API server checks the resourceVersion as a precondition, so the Binding cannot land once the grant
        was cleared or changed. Something else may update the pod in between (kube-scheduler writes its
        status): then, if the pod is still unbound and still carries that very grant, bind the newer
        version (at most 3 tries)."""
        assert self.sync is not None
        if not version:
            raise KubeError(409, f"pod {ns}/{name}: no resourceVersion to bind at (the grant is unconfirmed)")
        for attempt in range(3):
            try:
                self.sync.bind(ns, name, uid, node, resource_version=version)
                return
            except KubeError as exc:
                if exc.status != 409 or attempt == 2:
                    raise
                live = self.sync.get_pod(ns, name)
                meta = live.get("metadata") or {}
                if (live.get("spec") or {}).get("nodeName") or meta.get("uid") != uid:
                    raise
                ours = self.sync.grant_of(live)
                if ours is None or ours.node != node or ours.pod.uid != uid or ours.containers != grant.containers:
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
        ranking, missing = self.state.rank(demand, names)
        fit: list[str] = ranking.table.names[ranking.node].tolist()
        if demand.pod.uid:
            self._remember(self._pods, demand.pod.uid, pod)
            self._remember(self._scores, demand.pod.uid,
                           (version, frozenset(names), dict(zip(fit, priorities(ranking.normalised()), strict=True))),
                           SCORES_CACHE_SIZE)
        names_of = ranking.table.nodes
        failed = {names_of[i].name: why for i, why in ranking.failed()}
        failed.update((n, NO_COMPUTENODE) for n in missing)
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
        with self._lock:  # one scheduling cycle's: filter, then prioritize once
            cached = self._scores.pop(demand.pod.uid, None)
        # The filter's scores, even if a bind of another pod changed the state since (the scheduler binds
        # asynchronously, so it nearly always has): scores only rank nodes, bind re-checks the fit.
        if cached is not None and cached[1].issuperset(names):
            scores = cached[2]
        else:
            ranking, _ = self.state.rank(demand, names)
            scores = dict(zip(ranking.table.names[ranking.node].tolist(), priorities(ranking.normalised()),
                              strict=True))
        return [{"Host": n, "Score": scores.get(n, 0)} for n in names]

    def bind(self, args: Mapping[str, Any]) -> dict[str, Any]:
        uid = str(_get(args, "PodUID") or "")
        if self.sync is None or not uid:
            return self._bind(args)
        with self.sync.binding(uid):  # the watch leaves this pod's reservation alone until the bind ends
            return self._bind(args)

    # Complexity 21, kept in one piece on purpose: the bind is one ordered sequence (leader, pod, demand,
    # reserve, record, Binding) in which each failure undoes exactly the steps before it; read top to
    # bottom it shows that no path frees devices whose grant may still be recorded on the pod.
    def _bind(self, args: Mapping[str, Any]) -> dict[str, Any]:
        ns = str(_get(args, "PodNamespace") or "default")
        name = str(_get(args, "PodName") or "")
        uid = str(_get(args, "PodUID") or "")
        node = str(_get(args, "Node") or "")
        if not self.is_leader():
            return {"Error": "hcs allocator: this replica is not the leader"}
        if self.sync is None:
            return {"Error": "hcs allocator: no API server connection; cannot bind"}
        pod = self._pod_to_bind(ns, name, uid)
        if isinstance(pod, str):
            return {"Error": pod}
        uid = str(pod["metadata"].get("uid"))
        try:
            demand = demand_from_pod(pod)
        except RequestError as exc:
            return {"Error": str(exc)}
        if demand is None and ANN_ASSIGNMENT not in ((pod.get("metadata") or {}).get("annotations") or {}):
            log.warning("refused to bind %s/%s: it asks for no ai.compute resources", ns, name)
            return {"Error": f"pod {ns}/{name} asks for no ai.compute resources and holds no HCS assignment; the "
                             "HCS extender binds only pods it places (use the default scheduler for others)"}
        res = None
        if demand is not None:
            recorded = self._reserve_recorded(demand, pod, ns, name, uid, node)
            if isinstance(recorded, dict):
                return recorded
            res, version = recorded
            grant = res
        else:
            # asks for nothing now but carries a grant: bind only the live version that carries a valid
            # signed grant for this node (never a Binding without that precondition)
            found = self._live_grant(ns, name, uid, node)
            if isinstance(found, str):
                return {"Error": found}
            grant, version = found
        if not self.is_leader():  # lost the Lease while recording: the new leader decides
            if res is not None:
                self._undo_grant(ns, name, uid)
            return {"Error": "hcs allocator: this replica lost the leadership; retry"}
        try:
            self._bind_version(ns, name, uid, node, version, grant)
        except KubeError as exc:
            return self._binding_failed(ns, name, uid, node, res is not None, exc)
        self.state.mark_bound(uid)
        log.info("bound %s/%s to %s with %d device grant(s)", ns, name, node, sum(1 for _ in grant.grants()))
        return {"Error": ""}

    def _live_grant(self, ns: str, name: str, uid: str, node: str) -> tuple[Reservation, str] | str:
        """The pod as the API server has it now: (its valid signed grant for ``node``, the resourceVersion
        it was read at), or why there is none."""
        assert self.sync is not None
        try:
            live = self.sync.get_pod(ns, name)
        except KubeError as exc:
            return f"pod {ns}/{name}: {exc}"
        meta = live.get("metadata") or {}
        if uid and meta.get("uid") != uid:
            return f"pod {ns}/{name}: uid {uid} no longer exists (recreated)"
        if (live.get("spec") or {}).get("nodeName"):
            return f"pod {ns}/{name} is already bound to {live['spec']['nodeName']}"
        grant = self.sync.grant_of(live)
        if grant is None or grant.node != node:
            return (f"pod {ns}/{name} asks for no ai.compute resources and holds no valid HCS assignment for "
                    f"node {node}; the HCS extender binds only pods it places")
        return grant, str(meta.get("resourceVersion") or "")

    def _undo_grant(self, ns: str, name: str, uid: str) -> None:
        """A grant written (or maybe written: its reply was lost) and not to be bound: clear it on the API
        server only on an unbound version of the pod, then free the devices; when that cannot be done
        (the pod is bound, or the API server is unreachable) the reservation stays and the watch decides."""
        try:
            if not self._unreserve_unbound(ns, name, uid):
                assert self.sync is not None
                self.sync.recheck(uid)  # bound or changed meanwhile: what the watch shows wins
        except KubeError:
            log.warning("pod %s/%s: assignment may be recorded and could not be cleared; the reservation "
                        "stays until the pod is rescheduled or gone", ns, name)

    def _pod_to_bind(self, ns: str, name: str, uid: str) -> Mapping[str, Any] | str:
        """The pod the filter saw (else from the API server); an error message when it cannot be read or was
        recreated under another uid."""
        assert self.sync is not None
        with self._lock:
            pod = self._pods.pop(uid, None) if uid else None
            self._scores.pop(uid, None)
        if pod is None or (pod.get("metadata") or {}).get("name") != name:
            try:
                pod = self.sync.get_pod(ns, name)
            except KubeError as exc:
                return f"pod {ns}/{name}: {exc}"
        if uid and pod["metadata"].get("uid") != uid:
            return f"pod {ns}/{name}: uid {uid} no longer exists (recreated)"
        return pod

    def _reserve_recorded(self, demand: PodDemand, pod: Mapping[str, Any], ns: str, name: str, uid: str,
                          node: str) -> tuple[Reservation, str] | dict[str, Any]:
        """Reserve on ``node`` (a reservation held elsewhere is dropped first if the pod is unbound) and record
        the grant on the pod: (reservation, the annotated pod's resourceVersion), or ``{"Error": ...}``.

        The grant is written only onto an unbound version of the pod (the write is conditioned on the
        resourceVersion of a copy that shows it unbound): a bound pod's grant is never rewritten or
        cleared here, even when this bind is a retry racing an earlier Binding that landed."""
        assert self.sync is not None
        held = self.state.reservation(uid)
        if held is not None and held.node != node:
            try:
                if not self._unreserve_unbound(ns, name, uid):
                    return {"Error": f"pod {ns}/{name} is already bound to {self._bound_node(ns, name, uid)}"
                                     " (or changed meanwhile; retry)"}
            except KubeError as exc:
                return {"Error": f"pod {ns}/{name}: {exc}"}
            held = None
        try:
            res = self.state.reserve(demand, node)
        except (NoFit, Conflict) as exc:
            self.sync.event(ns, name, uid, "HcsBindFailed", str(exc))
            return {"Error": str(exc)}
        fresh = held is None
        copy: Mapping[str, Any] = pod
        for _ in range(3):
            meta = copy.get("metadata") or {}
            bound = str((copy.get("spec") or {}).get("nodeName") or "")
            if bound or meta.get("uid") != uid or meta.get("deletionTimestamp"):
                # bound meanwhile (an earlier Binding landed), recreated or going: its grant stays as it is
                if fresh:
                    self.state.release(uid)
                    self.sync.recheck(uid)
                if bound == node and meta.get("uid") == uid:
                    return {"Error": ""}  # idempotent: an earlier attempt bound it there (its grant untouched)
                what = f"is already bound to {bound}" if bound else "was recreated or is being deleted"
                return {"Error": f"pod {ns}/{name} {what}; not bound again"}
            try:  # source of truth first
                return res, self.sync.annotate(res, ns, name, resource_version=str(meta.get("resourceVersion") or ""))
            except KubeError as exc:
                if exc.status == 409:  # the copy is stale (nothing written): read the pod again
                    try:
                        copy = self.sync.get_pod(ns, name)
                        continue
                    except KubeError as exc2:  # nothing was written: free what this call reserved
                        if exc2.status == 404 or fresh:
                            self.state.release(uid)
                        return {"Error": f"pod {ns}/{name}: cannot record the assignment: {exc2}"}
                if exc.status == 404:
                    self.state.release(uid)
                else:  # the write may have landed with its reply lost: clear it (unbound only) first
                    self._undo_grant(ns, name, uid)
                return {"Error": f"pod {ns}/{name}: cannot record the assignment: {exc}"}
        if fresh:
            self.state.release(uid)
        return {"Error": f"pod {ns}/{name} keeps changing; not bound (retry)"}

    def _binding_failed(self, ns: str, name: str, uid: str, node: str, granted: bool,
                        exc: KubeError) -> dict[str, Any]:
        """The Binding POST failed: success after all if an earlier attempt bound the pod to ``node``; else
        the grant is cleared (only on the unbound version of the pod) and the devices freed."""
        try:
            bound = self._bound_node(ns, name, uid)
        except KubeError:
            bound = ""
        if bound == node:  # an earlier attempt (timed out on the scheduler's side) did bind it
            return {"Error": ""}
        if granted:
            # The Binding may still land (its reply was lost): clear the grant only on the unbound version
            # of the pod (that makes a late Binding fail), then free the devices; bound meanwhile: done.
            try:
                if not self._unreserve_unbound(ns, name, uid) and self._bound_node(ns, name, uid) == node:
                    return {"Error": ""}
            except KubeError:
                log.warning("pod %s/%s: assignment not cleared; the reservation stays until the pod is "
                            "rescheduled or gone", ns, name)
        return {"Error": f"pod {ns}/{name}: binding to {node} failed: {exc}"}


DEFAULT_ALLOWED_SUBJECTS = ("hcs-scheduler",)
#: Largest extender request accepted: ExtenderArgs with nodeCacheCapable carry node names, not nodes.
MAX_BODY_BYTES = 8 * 2**20


@dataclass(frozen=True)
class ExtenderTLS:
    """``allocator.extender.tls``: serving pair, the CA that signs the scheduler's client certificate,
    and the client certificate subjects (CN) allowed to call the verbs."""

    cert_file: str
    key_file: str
    client_ca_file: str
    allowed_subjects: tuple[str, ...] = DEFAULT_ALLOWED_SUBJECTS


def add_extender_args(parser: argparse.ArgumentParser) -> None:
    """``--insecure-dev`` on ``hcs allocator`` (shared with the gRPC API's development mode)."""
    if "--insecure-dev" not in parser._option_string_actions:
        parser.add_argument("--insecure-dev", action="store_true",
                            help="development only: serve without authentication (plain HTTP extender, "
                                 "no caller checks); logs a warning")


def extender_tls_from_config(sec: Mapping[str, Any] | None, *, insecure_dev: bool,
                             source: str = "config") -> ExtenderTLS | None:
    """The extender's TLS settings from ``allocator.extender``; None only with ``--insecure-dev``."""
    sec = sec or {}
    if not isinstance(sec, Mapping):
        raise ConfigError(f"{source}: allocator.extender must be a mapping with key tls")
    unknown = sorted(set(sec) - {"tls"})
    if unknown:
        raise ConfigError(f"{source}: allocator.extender.{unknown[0]} is not a known field; known: tls")
    tls = sec.get("tls")
    if not tls:
        if insecure_dev:
            log.warning("INSECURE: the scheduler extender serves plain HTTP and accepts every caller "
                        "(--insecure-dev); any pod that reaches it can filter, prioritize and bind. "
                        "Never use this in a shared cluster")
            return None
        raise ConfigError(f"{source}: allocator.extender.tls is required (certFile, keyFile, clientCAFile, "
                          "allowedSubjects): only the scheduler, with a client certificate, may call the extender. "
                          "For a development setup without authentication pass --insecure-dev")
    if not isinstance(tls, Mapping):
        raise ConfigError(f"{source}: allocator.extender.tls must be a mapping")
    known = {"certFile", "keyFile", "clientCAFile", "allowedSubjects"}
    unknown = sorted(set(tls) - known)
    if unknown:
        raise ConfigError(f"{source}: allocator.extender.tls.{unknown[0]} is not a known field; "
                          f"known: {', '.join(sorted(known))}")
    missing = [k for k in ("certFile", "keyFile", "clientCAFile") if not tls.get(k)]
    if missing:
        raise ConfigError(f"{source}: allocator.extender.tls.{missing[0]} is required")
    subjects = tls.get("allowedSubjects", list(DEFAULT_ALLOWED_SUBJECTS))
    if isinstance(subjects, str) or not isinstance(subjects, list) or not subjects \
            or not all(isinstance(x, str) and x for x in subjects):
        raise ConfigError(f"{source}: allocator.extender.tls.allowedSubjects must be a non-empty list of "
                          "certificate common names, e.g. [hcs-scheduler]")
    if insecure_dev:
        log.warning("--insecure-dev given but allocator.extender.tls is set: the extender keeps requiring "
                    "the scheduler's client certificate")
    return ExtenderTLS(str(tls["certFile"]), str(tls["keyFile"]), str(tls["clientCAFile"]),
                       tuple(s.removeprefix("CN=") for s in subjects))


def _common_names(cert: Mapping[str, Any] | None) -> list[str]:
    if not cert:
        return []
    return [str(value) for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]


def _json(status: int, body: Any) -> Reply:
    return Reply(status, json.dumps(body).encode())


class ExtenderServer:
    """The extender's HTTP(S) listener; ``server_address``, ``port`` and ``shutdown()`` as before."""

    def __init__(self, ext: Extender, host: str, port: int, tls: ExtenderTLS | None, *,
                 limits: Limits | None = None, cert_check_s: float = 5.0) -> None:
        self.ext = ext
        self.tls = tls
        self.certs = None if tls is None else CertStore(
            tls.cert_file, tls.key_file, client_ca_file=tls.client_ca_file, label="extender TLS",
            hint="set allocator.extender.tls.certFile/keyFile/clientCAFile")
        self._http = HttpService(host, port, self._handle, certs=self.certs, name="hcs-extender",
                                 limits=limits or Limits(max_body_bytes=MAX_BODY_BYTES),
                                 inline=lambda method, path: method != "POST",
                                 body_hint="ExtenderArgs for a nodeCacheCapable extender are far smaller",
                                 precheck=self._precheck)
        self._stop = threading.Event()
        self._cert_check_s = cert_check_s
        self._http.start()
        if self.certs is not None:
            threading.Thread(target=self._watch_certs, name="hcs-extender-certs", daemon=True).start()

    @property
    def server_address(self) -> tuple[str, int]:
        return self._http.server_address

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def stats(self) -> Any:
        return self._http.stats

    def _watch_certs(self) -> None:
        assert self.certs is not None
        while not self._stop.wait(self._cert_check_s):
            try:
                self.certs.maybe_reload()
            except Exception:
                log.exception("extender certificate reload check failed")

    def shutdown(self) -> None:
        self._stop.set()
        self._http.stop()

    stop = shutdown

    def _precheck(self, req: Request) -> Reply | None:
        """Verbs need the scheduler's certificate: refused before the body is read."""
        return self._authorize(req) if req.method == "POST" else None

    def _authorize(self, req: Request) -> Reply | None:
        if self.tls is None:
            return None
        names = _common_names(req.peer_cert)
        if not names:
            return _json(401, {"Error": "the HCS extender needs the scheduler's client certificate (kube-scheduler "
                                        "extender tlsConfig certFile/keyFile, signed by the chart's extender CA)"})
        if not any(n in self.tls.allowed_subjects for n in names):
            log.warning("extender call from %s refused: certificate CN %s is not in allowedSubjects",
                        req.remote, ", ".join(names))
            return _json(403, {"Error": f"client certificate CN {names[0]!r} may not call the HCS extender; "
                                        f"allowed: {', '.join(self.tls.allowed_subjects)}"})
        return None

    def _handle(self, req: Request) -> Reply:
        ext = self.ext
        if req.method != "POST":
            path = req.path.split("?")[0].rstrip("/")
            if path == "/healthz":
                return _json(200, {"ok": True, "leader": ext.is_leader()})
            if path == "/readyz":  # only the leader with a synced state serves: a standby is not ready
                leader = ext.is_leader()
                return _json(200 if leader else 503, {"ok": leader, "leader": leader})
            if path == "/metrics" and ext.metrics is not None:
                ext.metrics.leader.set(1 if ext.is_leader() else 0)
                return Reply(200, ext.metrics.exposition(), CONTENT_TYPE_LATEST)
            return _json(404, {"Error": f"unknown path {req.path}"})
        denied = self._authorize(req)
        if denied is not None:
            return denied
        verb = req.path.strip("/").split("/")[-1]
        if verb not in ("filter", "prioritize", "bind"):
            return _json(404, {"Error": f"unknown extender verb {verb!r}; use filter, prioritize or bind"})
        try:
            args = json.loads(req.body or b"{}")
            if not isinstance(args, dict):
                raise ValueError("body must be a JSON object")
        except RecursionError:
            return _json(400, {"Error": "bad request body: JSON nested too deeply"})
        except (ValueError, UnicodeDecodeError) as exc:
            return _json(400, {"Error": f"bad request body: {str(exc)[:200]}"})
        try:
            return _json(200, ext.decide(verb, args))  # counted and timed in the allocator's metrics
        except (RecursionError, AttributeError, TypeError, ValueError) as exc:
            # malformed ExtenderArgs (wrong shapes): the caller's error, not the allocator's
            log.info("extender %s: malformed arguments: %s", verb, exc)
            return _json(400, {"Error": f"malformed ExtenderArgs for {verb}: {str(exc)[:200]}"})
        except Exception as exc:  # never crash the server on one bad request
            log.exception("extender %s failed", verb)
            return _json(200, {"Error": f"hcs allocator internal error: {exc}"})


def serve_http(ext: Extender, host: str, port: int, *, tls: ExtenderTLS | None = None,
               insecure_dev: bool = False, limits: Limits | None = None) -> ExtenderServer:
    """Start the extender listener: HTTPS with client certificates, or plain HTTP with ``insecure_dev``."""
    if tls is None and not insecure_dev:
        raise ConfigError("the scheduler extender needs TLS with client certificates (allocator.extender.tls); "
                          "plain HTTP only with --insecure-dev")
    return ExtenderServer(ext, host, port, tls, limits=limits)
