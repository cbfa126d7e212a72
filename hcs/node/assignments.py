"""Which pod gets which devices: the node agent's side of the allocator handshake.

The kubelet's ``Allocate`` carries only device IDs (our slot IDs), never a pod. The allocator (or,
until it runs, the local best-fit policy) decides devices per pod; an :class:`AssignmentSource`
hands the node agent the assignments for its node and hears back when one was admitted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from google.protobuf import json_format

from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as al
from hcs.devices.model import Device, Vendor
from hcs.podspec import created_ms
from hcs.quantity import parse_bytes, parse_quantity
from hcs.records import ASSIGNMENT_ANNOTATION as ASSIGNMENT_ANNOTATION
from hcs.records import SIGNATURE_ANNOTATION as SIGNATURE_ANNOTATION
from hcs.records import PodIdentity, RecordError, RecordKey

log = logging.getLogger(__name__)

VRAM_RESOURCE = "ai.compute/vram"
TFLOPS_RESOURCE = "ai.compute/tflops-fp16"
#: Pod annotation choosing how the container's compute share is enforced (interceptor/README.md).
COMPUTE_POLICY_ANNOTATION = "hcs.io/compute-policy"
COMPUTE_POLICIES = ("hard", "burst")


def compute_policy_of(raw: object) -> str:
    """The pod's compute policy, or "" (the node's default) when absent or not one of COMPUTE_POLICIES
    (the webhook rejects such pods; a pod that got past it must not get a looser mode)."""
    value = str(raw).strip().lower() if raw is not None else ""
    return value if value in COMPUTE_POLICIES else ""
_NO_KEY = RecordKey(None)  # identity checks only (callers without a key: tests, static listers)


@dataclass(frozen=True)
class PodRef:
    uid: str
    namespace: str
    name: str
    created_ms: int = 0
    #: ``hcs.io/compute-policy`` of the pod ("" = the node's default), when the pod object was seen
    compute_policy: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class DeviceGrant:
    """VRAM (and compute) granted to one container on one physical device."""

    vendor: Vendor
    index: int
    uuid: str
    vram_bytes: int
    tflops_milli: int = 0
    model: str = ""
    island: str = ""

    @property
    def key(self) -> str:
        return f"{self.vendor}-{self.index}"


@dataclass(frozen=True)
class ContainerAssignment:
    container: str
    devices: tuple[DeviceGrant, ...]


@dataclass(frozen=True)
class Assignment:
    pod: PodRef
    containers: tuple[ContainerAssignment, ...]
    confirmed: bool = False

    def container(self, name: str) -> ContainerAssignment | None:
        return next((c for c in self.containers if c.container == name), None)


class AssignmentSource(Protocol):
    """Assignments placed on this node. Implementations must be thread-safe and never raise on I/O
    trouble from ``assignments`` (log and return what is known)."""

    def assignments(self) -> Sequence[Assignment]:
        """Every assignment on this node, pending and confirmed."""
        ...

    def confirm(self, pod_uid: str) -> None:
        """The agent handed this pod's devices to the kubelet."""
        ...

    def release(self, pod_uid: str) -> None:
        """The pod is gone from the node."""
        ...


# --- pods waiting for devices (input of the local policy) ------------------------------------------


@dataclass(frozen=True)
class PodDemand:
    """A pod on this node that asks for VRAM, per container (bytes); ``assigned`` when the pod already
    carries an assignment (the ``hcs.io/assignment`` annotation, written by the allocator or by the
    local policy at confirm time)."""

    pod: PodRef
    containers: tuple[tuple[str, int], ...]
    assigned: Assignment | None = None
    #: ``ai.compute/tflops-fp16`` per container (milli-TFLOPS, A100-equivalent); the local policy
    #: grants it on the device it picks by VRAM (compute limits, interceptor/README.md)
    tflops_milli: tuple[tuple[str, int], ...] = ()


PodLister = Callable[[], Sequence[PodDemand]]


def demand_from_pod(pod: Mapping[str, Any], records: RecordKey | None = None, node: str = "",
                    component: str = "node-agent") -> PodDemand | None:
    """A pod (API-server JSON dict) → its VRAM demand, or None when it asks for none / is finished.

    The pod's ``hcs.io/assignment`` record is adopted only when it passes :meth:`RecordKey.check`:
    bound to this pod's (non-empty) uid, namespace and name, to ``node`` (the agent's own) and, with a
    key, carrying a valid MAC. Anything else is logged, counted and ignored, so the local policy places
    the pod by its real request.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
        return None
    containers: list[tuple[str, int]] = []
    tflops: list[tuple[str, int]] = []
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        raw = (res.get("requests") or {}).get(VRAM_RESOURCE) or (res.get("limits") or {}).get(VRAM_RESOURCE)
        if raw is None:
            continue
        raw_t = (res.get("requests") or {}).get(TFLOPS_RESOURCE) or (res.get("limits") or {}).get(TFLOPS_RESOURCE)
        if raw_t is not None:
            try:
                milli = int(parse_quantity(str(raw_t), field=TFLOPS_RESOURCE) * 1000)
                if milli > 0:
                    tflops.append((str(c.get("name", "")), milli))
            except Exception as exc:  # a bad quantity must not stop the agent (the webhook denies it)
                log.warning("pod %s/%s container %s: ignoring bad %s %r: %s", meta.get("namespace"),
                            meta.get("name"), c.get("name"), TFLOPS_RESOURCE, raw_t, exc)
        try:
            containers.append((str(c.get("name", "")), parse_bytes(str(raw))))
        except Exception as exc:  # a bad quantity must not stop the agent
            log.warning("pod %s/%s container %s: ignoring bad %s %r: %s", meta.get("namespace"),
                        meta.get("name"), c.get("name"), VRAM_RESOURCE, raw, exc)
    if not containers:
        return None
    annotations = meta.get("annotations") or {}
    ref = PodRef(str(meta.get("uid", "")), str(meta.get("namespace", "")), str(meta.get("name", "")),
                 created_ms(meta.get("creationTimestamp")),
                 compute_policy=compute_policy_of(annotations.get(COMPUTE_POLICY_ANNOTATION)))
    assigned = None
    raw_assignment = annotations.get(ASSIGNMENT_ANNOTATION)
    if raw_assignment:
        key = records if records is not None else _NO_KEY
        try:
            msg = key.check(str(raw_assignment), annotations.get(SIGNATURE_ANNOTATION), PodIdentity.of(pod),
                            node=node, component=component)
            assigned = replace(_from_message(msg), pod=ref)
        except RecordError:
            pass  # logged and counted by check(); the local policy places the pod by its request
        except ValueError as exc:
            log.warning("pod %s: bad %s annotation (%s); placing it with the local policy", ref.ref,
                        ASSIGNMENT_ANNOTATION, exc)
    return PodDemand(ref, tuple(containers), assigned, tuple(tflops))


@dataclass
class StaticPodLister:
    """Pods given by the caller (tests, the bench, a node without an API server)."""

    pods: list[PodDemand] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, demand: PodDemand) -> None:
        with self._lock:
            self.pods.append(demand)

    def remove(self, uid: str) -> None:
        with self._lock:
            self.pods = [p for p in self.pods if p.pod.uid != uid]

    def __call__(self) -> Sequence[PodDemand]:
        with self._lock:
            return list(self.pods)


# --- the local policy: best fit on one device ------------------------------------------------------


class LocalAssignmentSource:
    """Stands in for the allocator: each container gets the healthy device whose free VRAM is the
    smallest that still fits (best fit on one device). Assignments are sticky until the pod leaves
    the lister; ``seed`` restores what was handed out before an agent restart."""

    def __init__(self, devices: Callable[[], Sequence[Device]], pods: PodLister,
                 persist: Callable[[Assignment], None] | None = None) -> None:
        self._devices = devices
        self._pods = pods
        self._persist = persist
        self._lock = threading.Lock()
        self._by_uid: dict[str, Assignment] = {}

    def seed(self, assignments: Iterable[Assignment]) -> None:
        with self._lock:
            for a in assignments:
                self._by_uid[a.pod.uid] = a

    def assignments(self) -> Sequence[Assignment]:
        try:
            demands = list(self._pods())
        except Exception as exc:
            log.warning("local policy: cannot list pods (%s); using the assignments already made", exc)
            with self._lock:
                return list(self._by_uid.values())
        with self._lock:
            present = {d.pod.uid for d in demands}
            for uid in [u for u, a in self._by_uid.items() if u not in present and not a.confirmed]:
                del self._by_uid[uid]
            all_devices = list(self._devices())
            used = self._used()
            for demand in sorted(demands, key=lambda d: (d.pod.created_ms, d.pod.uid)):
                # even a genuine record is adopted only where it does not overcommit a device
                if (demand.assigned is not None and demand.pod.uid not in self._by_uid
                        and self._fits(demand.assigned, all_devices, used)):
                    self._by_uid[demand.pod.uid] = demand.assigned
            devices = [d for d in all_devices if d.health.healthy]
            for demand in sorted(demands, key=lambda d: (d.pod.created_ms, d.pod.uid)):
                if demand.pod.uid in self._by_uid:
                    continue
                placed = self._place(demand, devices, used)
                if placed is not None:
                    self._by_uid[demand.pod.uid] = placed
            return list(self._by_uid.values())

    def _used(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for a in self._by_uid.values():
            for c in a.containers:
                for g in c.devices:
                    used[g.key] = used.get(g.key, 0) + g.vram_bytes
        return used

    @staticmethod
    def _fits(a: Assignment, devices: Sequence[Device], used: dict[str, int]) -> bool:
        """Adopt a recorded assignment only onto known devices with room; ``used`` grows when it fits."""
        by_key = {d.key: d for d in devices}
        trial = dict(used)
        for c in a.containers:
            for g in c.devices:
                d = by_key.get(g.key)
                if d is None or (d.uuid and g.uuid and d.uuid != g.uuid):
                    log.warning("pod %s: recorded assignment names device %s (%s), which this node does not have; "
                                "placing the pod by its request", a.pod.ref, g.key, g.uuid)
                    return False
                trial[g.key] = trial.get(g.key, 0) + g.vram_bytes
                if g.vram_bytes < 0 or trial[g.key] > d.vram_total_bytes:
                    log.warning("pod %s: recorded assignment of %d bytes on %s would overcommit it (%d of %d "
                                "bytes already granted); placing the pod by its request", a.pod.ref,
                                g.vram_bytes, g.key, used.get(g.key, 0), d.vram_total_bytes)
                    return False
        used.clear()
        used.update(trial)
        return True

    @staticmethod
    def _place(demand: PodDemand, devices: Sequence[Device], used: dict[str, int]) -> Assignment | None:
        trial = dict(used)
        out: list[ContainerAssignment] = []
        tflops = dict(demand.tflops_milli)
        for name, vram in demand.containers:
            fitting = [d for d in devices if d.vram_total_bytes - trial.get(d.key, 0) >= vram]
            if not fitting:
                log.info("local policy: pod %s container %s (%d bytes) fits no device", demand.pod.ref, name, vram)
                return None
            best = min(fitting, key=lambda d: (d.vram_total_bytes - trial.get(d.key, 0), d.index))
            trial[best.key] = trial.get(best.key, 0) + vram
            out.append(ContainerAssignment(name, (DeviceGrant(best.vendor, best.index, best.uuid, vram,
                                                              tflops_milli=tflops.get(name, 0),
                                                              model=best.model, island=best.island),)))
        used.clear()
        used.update(trial)
        return Assignment(demand.pod, tuple(out))

    def confirm(self, pod_uid: str) -> None:
        with self._lock:
            a = self._by_uid.get(pod_uid)
            if a is None:
                return
            a = replace(a, confirmed=True)
            self._by_uid[pod_uid] = a
        if self._persist is not None:
            self._persist(a)  # the API server keeps it: a restarted agent rebuilds from the pod

    def release(self, pod_uid: str) -> None:
        with self._lock:
            self._by_uid.pop(pod_uid, None)


# --- the hcs.io/assignment annotation (proto3 JSON of hcs.allocator.v1.Assignment) ------------------


def dumps(a: Assignment, node: str = "") -> str:
    """Proto3 JSON of ``hcs.allocator.v1.Assignment`` (what the allocator writes on the pod)."""
    msg = al.Assignment(
        pod=al.PodRef(uid=a.pod.uid, namespace=a.pod.namespace, name=a.pod.name,
                      creation_time_unix_ms=a.pod.created_ms),
        node=node,
        state=al.ASSIGNMENT_STATE_CONFIRMED if a.confirmed else al.ASSIGNMENT_STATE_PENDING,
        containers=[al.ContainerAssignment(container=c.container, devices=[
            al.DeviceAssignment(uuid=g.uuid, index=g.index, vendor=str(g.vendor), model=g.model,
                                vram_bytes=g.vram_bytes, tflops_milli=g.tflops_milli, island=g.island)
            for g in c.devices]) for c in a.containers],
    )
    return str(json_format.MessageToJson(msg, indent=None, sort_keys=True))


def assignment_from_annotation(text: str) -> Assignment:
    """The ``hcs.io/assignment`` annotation: proto3 JSON of ``hcs.allocator.v1.Assignment`` (camelCase or
    snake_case field names). Raises ValueError saying what is wrong. (Parsing only: trust comes from
    :meth:`hcs.records.RecordKey.check`.)"""
    msg = al.Assignment()
    try:
        json_format.Parse(text, msg, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(f"not an hcs.allocator.v1.Assignment in JSON: {exc}") from exc
    return _from_message(msg)


def _from_message(msg: Any) -> Assignment:
    try:
        containers = tuple(
            ContainerAssignment(c.container, tuple(
                DeviceGrant(Vendor(g.vendor), g.index, g.uuid, g.vram_bytes, g.tflops_milli, g.model, g.island)
                for g in c.devices))
            for c in msg.containers)
    except ValueError as exc:
        raise ValueError(f"unknown vendor ({exc})") from exc
    return Assignment(PodRef(msg.pod.uid, msg.pod.namespace, msg.pod.name, msg.pod.creation_time_unix_ms),
                      containers, msg.state == al.ASSIGNMENT_STATE_CONFIRMED)
