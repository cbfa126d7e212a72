"""gRPC service ``hcs.allocator.v1.Allocator`` and the assignment wire forms (proto, annotation JSON).

The ``hcs.io/assignment`` pod annotation is the proto3 JSON mirror of ``Assignment`` (camelCase,
int64 as strings), so the node agent and a restarted allocator read the same thing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from hcs.allocator.auth import AllowAll, CallAuthorizer, Caller, Denied
from hcs.allocator.placement import (  # bounds (issue 16)
    MAX_HOST_AMOUNT,
    MAX_TFLOPS_MILLI,
    MAX_VRAM_BYTES,
    Constraints,
    ContainerDemand,
    Grant,
    PodDemand,
    PodRef,
    RequestError,
    Verdict,
    parse_constraints,
)
from hcs.allocator.state import CONFIRMED, PENDING, AllocatorState, Conflict, NoFit, Reservation
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import capacity_of
from hcs.uds import listen_address

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- conversions


def reservation_to_proto(r: Reservation) -> pb.Assignment:
    return pb.Assignment(
        pod=pb.PodRef(uid=r.pod.uid, namespace=r.pod.namespace, name=r.pod.name,
                      creation_time_unix_ms=r.pod.created_ms),
        node=r.node,
        state=pb.ASSIGNMENT_STATE_CONFIRMED if r.state == CONFIRMED else pb.ASSIGNMENT_STATE_PENDING,
        containers=[pb.ContainerAssignment(container=name, devices=[
            pb.DeviceAssignment(uuid=g.uuid, index=g.index, vendor=g.vendor, model=g.model,
                                vram_bytes=g.vram_bytes, tflops_milli=g.tflops_milli, island=g.island)
            for g in grants]) for name, grants in r.containers],
        reserved_at_unix_ms=r.reserved_at_ms,
    )


def reservation_from_proto(a: pb.Assignment, cpu_milli: int = 0, memory_bytes: int = 0) -> Reservation:
    return Reservation(
        PodRef(a.pod.uid, a.pod.namespace, a.pod.name, a.pod.creation_time_unix_ms), a.node,
        tuple((c.container, tuple(Grant(f"{d.vendor}-{d.index}", d.uuid, d.index, d.vendor, d.model, d.island,
                                        d.vram_bytes, d.tflops_milli) for d in c.devices))
              for c in a.containers),
        CONFIRMED if a.state == pb.ASSIGNMENT_STATE_CONFIRMED else PENDING, a.reserved_at_unix_ms,
        cpu_milli, memory_bytes)


def annotation_json(r: Reservation) -> str:
    return str(json_format.MessageToJson(reservation_to_proto(r), indent=None, sort_keys=True))


def reservation_from_annotation(text: str, where: str = "pod") -> Reservation:
    """Parse an ``hcs.io/assignment`` annotation; ValueError names the pod and what is wrong."""
    try:
        msg = json_format.Parse(text, pb.Assignment(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(f"{where} annotation hcs.io/assignment: not a valid Assignment ({exc})") from exc
    if not msg.pod.uid or not msg.node:
        raise ValueError(f"{where} annotation hcs.io/assignment: pod.uid and node are required")
    return reservation_from_proto(msg)


#: Most devices one container may ask for explicitly (ContainerRequest.device_count); no node has more.
MAX_DEVICE_COUNT = 64


def demand_from_proto(req: pb.PodRequest) -> PodDemand:
    cons = req.constraints
    ann = {"hcs.io/topology-preference": cons.topology_preference,
           "hcs.io/vendor": ",".join(cons.vendors), "hcs.io/model": ",".join(cons.models),
           "hcs.io/scheduling-policy": cons.scheduling_policy}
    where = f"pod {req.pod.namespace}/{req.pod.name}"
    constraints = parse_constraints(ann, where) if any(ann.values()) else Constraints()
    containers = []
    if not (0 <= req.cpu_milli <= MAX_HOST_AMOUNT and 0 <= req.memory_bytes <= MAX_HOST_AMOUNT):
        raise RequestError(f"{where}: cpu_milli and memory_bytes must be 0..{MAX_HOST_AMOUNT}")
    for c in req.containers:
        if c.vram_bytes < 0 or c.tflops_milli < 0:
            raise RequestError(f"{where} container {c.container}: vram_bytes and tflops_milli must be >= 0")
        if c.vram_bytes > MAX_VRAM_BYTES or c.tflops_milli > MAX_TFLOPS_MILLI:
            raise RequestError(f"{where} container {c.container}: vram_bytes (at most {MAX_VRAM_BYTES}) or "
                               f"tflops_milli (at most {MAX_TFLOPS_MILLI}) larger than any node could hold")
        if not 0 <= c.device_count <= MAX_DEVICE_COUNT:
            raise RequestError(f"{where} container {c.container}: device_count {c.device_count} is out of range; "
                               f"use 0 (derive from the sizes) to {MAX_DEVICE_COUNT}")
        if c.vram_bytes or c.tflops_milli:
            containers.append(ContainerDemand(c.container, c.vram_bytes, c.tflops_milli))
    if not containers:
        raise RequestError(f"{where}: no container asks for ai.compute/vram or ai.compute/tflops-fp16")
    return PodDemand(PodRef(req.pod.uid, req.pod.namespace, req.pod.name, req.pod.creation_time_unix_ms),
                     tuple(containers), constraints, max(0, req.cpu_milli), max(0, req.memory_bytes))


def verdict_to_proto(v: Verdict) -> pb.NodeVerdict:
    out = pb.NodeVerdict(node=v.node, fits=v.fits, reason=v.reason, score=v.score)
    if v.plan is not None:
        for name, grants in v.plan.containers:
            out.proposal.append(pb.ContainerAssignment(container=name, devices=[
                pb.DeviceAssignment(uuid=g.uuid, index=g.index, vendor=g.vendor, model=g.model,
                                    vram_bytes=g.vram_bytes, tflops_milli=g.tflops_milli, island=g.island)
                for g in grants]))
    return out


# --------------------------------------------------------------------------- service


class Persister(Protocol):
    """Writes reservation changes to the source of truth (the pod annotation). No-op when absent."""

    def reserved(self, r: Reservation) -> None: ...

    def confirmed(self, r: Reservation) -> None: ...

    def released(self, r: Reservation) -> None: ...


class NullPersister:
    def reserved(self, r: Reservation) -> None:
        pass

    def confirmed(self, r: Reservation) -> None:
        pass

    def released(self, r: Reservation) -> None:
        pass


PodResolver = Callable[[str, str, str], PodDemand | None]  # (uid, namespace, name) -> demand


class AllocatorService(pbg.AllocatorServicer):
    """The gRPC API. ``auth`` decides who may call what (:mod:`hcs.allocator.auth`); the default,
    :class:`~hcs.allocator.auth.AllowAll`, is for in-process tests and ``--insecure-dev`` only:
    ``hcs allocator`` passes a :class:`~hcs.allocator.auth.KubeAuthorizer` unless told otherwise."""

    def __init__(self, state: AllocatorState, persister: Persister | None = None,
                 resolve_pod: PodResolver | None = None, is_leader: Callable[[], bool] | None = None,
                 auth: CallAuthorizer | None = None) -> None:
        self.state = state
        self.persister: Persister = persister or NullPersister()
        self.resolve_pod = resolve_pod
        self.is_leader = is_leader or (lambda: True)
        self.auth: CallAuthorizer = auth or AllowAll()

    def _authorize(self, context: Any, rpc: str, node: str | None = None) -> Caller | None:
        try:
            return self.auth.authorize(context.invocation_metadata() or (), rpc, node)
        except Denied as exc:
            context.abort(exc.code, str(exc))
            raise AssertionError("unreachable") from exc

    def _leader(self, context: Any) -> None:
        if not self.is_leader():
            context.abort(grpc.StatusCode.UNAVAILABLE, "this allocator replica is not the leader; retry")

    def Reserve(self, request: pb.ReserveRequest, context: Any) -> pb.ReserveResponse:  # noqa: N802
        self._authorize(context, "Reserve", request.node or None)
        self._leader(context)
        try:
            demand = demand_from_proto(request.request)
            res = self.state.reserve(demand, request.node or None)
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NoFit as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Conflict as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        try:
            self.persister.reserved(res)
        except Exception as exc:  # the source of truth refused: undo, never leak
            self.state.release(res.pod.uid)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"could not record the reservation: {exc}")
        return pb.ReserveResponse(assignment=reservation_to_proto(res))

    def Confirm(self, request: pb.ConfirmRequest, context: Any) -> pb.ConfirmResponse:  # noqa: N802
        # A node agent confirms on its own node only; state.confirm checks the reservation is on it.
        self._authorize(context, "Confirm", request.node)
        self._leader(context)
        try:
            res = self.state.confirm(request.pod_uid, request.node)
        except NoFit as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except Conflict as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        try:
            self.persister.confirmed(res)
        except Exception:
            log.exception("pod %s: could not record the confirmation; state stays confirmed in memory", res.pod.ref)
        return pb.ConfirmResponse(assignment=reservation_to_proto(res))

    def Release(self, request: pb.ReleaseRequest, context: Any) -> pb.ReleaseResponse:  # noqa: N802
        # Authorised against the node the reservation is on: a node agent frees only its node's pods.
        held = self.state.reservation(request.pod_uid) if request.pod_uid else None
        self._authorize(context, "Release", held.node if held is not None else None)
        self._leader(context)
        res = self.state.release(request.pod_uid) if held is not None else None
        if res is not None:
            try:
                self.persister.released(res)
            except Exception:
                log.exception("pod %s: could not clear the assignment annotation", res.pod.ref)
        return pb.ReleaseResponse(released=res is not None)

    def GetNodeAssignments(self, request: pb.GetNodeAssignmentsRequest,  # noqa: N802
                           context: Any) -> pb.GetNodeAssignmentsResponse:
        self._authorize(context, "GetNodeAssignments", request.node)
        if not request.node:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node is required")
        # A standby's watch lags the leader's binds: its answer could miss the pod being admitted (the
        # node agent then reads the pod's signed record from the API server instead).
        self._leader(context)
        return pb.GetNodeAssignmentsResponse(
            assignments=[reservation_to_proto(r) for r in self.state.reservations(request.node)])

    def Explain(self, request: pb.ExplainRequest, context: Any) -> pb.ExplainResponse:  # noqa: N802
        self._authorize(context, "Explain")
        try:
            if request.HasField("request"):
                demand = demand_from_proto(request.request)
            else:
                ref = request.pod
                found = self.resolve_pod(ref.uid, ref.namespace, ref.name) if self.resolve_pod else None
                if found is None:
                    context.abort(grpc.StatusCode.NOT_FOUND,
                                  f"pod {ref.namespace}/{ref.name or ref.uid}: not found or asks for no accelerator")
                    raise AssertionError("unreachable")
                demand = found
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        held = self.state.reservation(demand.pod.uid) if demand.pod.uid else None
        verdicts = self.state.explain(demand, list(request.nodes) or None)
        fits = sum(1 for v in verdicts if v.fits)
        summary = f"{fits} of {len(verdicts)} nodes fit"
        if held is not None:
            summary += f"; pod already holds devices on {held.node} ({held.state})"
        return pb.ExplainResponse(verdicts=[verdict_to_proto(v) for v in verdicts], summary=summary)

    def GetCapacity(self, request: pb.GetCapacityRequest, context: Any) -> pb.GetCapacityResponse:  # noqa: N802
        # Only the leader keeps its inventory in sync with the ComputeNodes; a standby would answer
        # from an empty or stale one, and the webhook would admit (or deny) on a wrong island size.
        self._authorize(context, "GetCapacity")
        self._leader(context)
        return capacity_of(self.state.nodes())


def serve(service: AllocatorService, address: str, workers: int = 8,
          credentials: grpc.ServerCredentials | None = None, interceptors: tuple[Any, ...] = ()) -> grpc.Server:
    """Start the gRPC server on ``address`` (``unix:///path`` or ``host:port``).

    ``credentials`` (see :func:`hcs.allocator.auth.server_credentials`): TLS or local; None serves plaintext,
    which only ``--insecure-dev`` and in-process tests use. ``interceptors``: e.g. the decision metrics.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=interceptors)
    pbg.add_AllocatorServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    listen = listen_address(address)
    port = (server.add_secure_port(listen, credentials) if credentials is not None
            else server.add_insecure_port(listen))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server


def demand_to_proto(d: PodDemand) -> pb.PodRequest:
    c = d.constraints
    vendors = sorted(c.vendors_in) + [f"!{v}" for v in sorted(c.vendors_out)]
    models = sorted(c.models_in) + [f"!{m}" for m in sorted(c.models_out)]
    return pb.PodRequest(
        pod=pb.PodRef(uid=d.pod.uid, namespace=d.pod.namespace, name=d.pod.name,
                      creation_time_unix_ms=d.pod.created_ms),
        containers=[pb.ContainerRequest(container=x.name, vram_bytes=x.vram_bytes, tflops_milli=x.tflops_milli)
                    for x in d.containers],
        constraints=pb.Constraints(topology_preference="high-bandwidth" if c.high_bandwidth else "",
                                   vendors=vendors, models=models, scheduling_policy=c.policy),
        cpu_milli=d.cpu_milli, memory_bytes=d.memory_bytes)


def annotations_of(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return ((pod.get("metadata") or {}).get("annotations")) or {}
