"""Prometheus metrics of the allocator (``hcs_allocator_*``), served on the extender port at ``/metrics``.

Counters and the latency histogram are updated where decisions are made (extender verbs, gRPC
methods); reservation counts and free / fragmented VRAM are computed from the state when scraped,
so keeping them costs nothing between scrapes.

- ``hcs_allocator_decisions_total{verb,outcome}``: filter / prioritize / bind (extender) and
  reserve / confirm / release / explain / capacity (gRPC); outcome ``ok``, ``nofit``, ``error``,
  ``not_leader``.
- ``hcs_allocator_decision_seconds{verb}``: time to answer, histogram; ``hcs_allocator_decision_cpu_seconds``
  the answering thread's CPU time (the same minus waiting for a core on a busy machine);
  ``hcs_allocator_decision_runqueue_seconds`` how long that thread waited for a core (Linux schedstat run
  delay). Wall minus CPU minus run-queue wait is what the decision waited for the GIL and locks;
  ``hcs_allocator_decision_active_seconds`` is wall minus the run-queue wait, per decision.
- ``hcs_allocator_reservations{state}``: pending / confirmed reservations held.
- ``hcs_allocator_vram_free_bytes{vendor,model}``: VRAM not reserved, healthy devices only.
- ``hcs_allocator_vram_fragmented_bytes{vendor,model}``: the part of it on devices that are partly
  reserved (free VRAM a whole-device request cannot use).
- ``hcs_allocator_conflicts_total{kind}``: a reservation read back from the API server that the
  state could not hold (``restore``), or a bind that raced another writer (``bind``).
- ``hcs_allocator_leader``: 1 on the replica holding the Lease.
- ``hcs_allocator_watch_events_total{resource}``, ``hcs_allocator_watch_relists_total{resource}``,
  ``hcs_allocator_inflight_binds``: the live sync.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from hcs.allocator.state import AllocatorState

__all__ = ["CONTENT_TYPE_LATEST", "AllocatorMetrics", "vram_summary"]

BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def vram_summary(state: AllocatorState) -> dict[tuple[str, str], tuple[int, int]]:
    """(vendor, model) → (free bytes, fragmented bytes) over healthy devices."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for inv in state.nodes():
        used = state.usage(inv.name)
        for d in inv.devices:
            if not d.healthy:
                continue
            u = used.get(d.name, (0, 0))[0]
            free = max(0, d.vram_bytes - u)
            frag = free if 0 < u < d.vram_bytes else 0
            f0, g0 = out.get((d.vendor, d.model), (0, 0))
            out[(d.vendor, d.model)] = (f0 + free, g0 + frag)
    return out


class _StateCollector:
    def __init__(self, state: AllocatorState) -> None:
        self.state = state

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        res = GaugeMetricFamily("hcs_allocator_reservations", "Reservations held, by state", labels=["state"])
        counts = {"pending": 0, "confirmed": 0}
        for r in self.state.reservations():
            counts[r.state] = counts.get(r.state, 0) + 1
        for k, v in sorted(counts.items()):
            res.add_metric([k], v)
        yield res
        free = GaugeMetricFamily("hcs_allocator_vram_free_bytes", "Unreserved VRAM on healthy devices",
                                 labels=["vendor", "model"])
        frag = GaugeMetricFamily("hcs_allocator_vram_fragmented_bytes",
                                 "Unreserved VRAM on partly reserved devices (unusable by whole-device requests)",
                                 labels=["vendor", "model"])
        for (vendor, model), (f, g) in sorted(vram_summary(self.state).items()):
            free.add_metric([vendor, model], f)
            frag.add_metric([vendor, model], g)
        yield free
        yield frag


_SCHEDSTAT = "/proc/thread-self/schedstat"
_schedstat_ok = os.path.exists(_SCHEDSTAT)


def run_delay_s() -> float | None:
    """This thread's total time spent runnable but waiting for a core (seconds; Linux schedstat's second
    field), or None where the kernel does not provide it."""
    global _schedstat_ok
    if not _schedstat_ok:
        return None
    try:
        with open(_SCHEDSTAT, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        _schedstat_ok = False
        return None


class AllocatorMetrics:
    """One registry per allocator (tests run several in one process)."""

    def __init__(self, state: AllocatorState | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("hcs_allocator_decisions", "Allocator decisions by verb and outcome",
                                 ["verb", "outcome"], registry=r)
        self.latency = Histogram("hcs_allocator_decision_seconds", "Time to answer a decision, by verb",
                                 ["verb"], buckets=BUCKETS, registry=r)
        self.cpu = Histogram("hcs_allocator_decision_cpu_seconds",
                             "CPU time of the answering thread per decision (excludes waiting for a core)",
                             ["verb"], buckets=BUCKETS, registry=r)
        self.runqueue = Histogram("hcs_allocator_decision_runqueue_seconds",
                                  "Time the answering thread waited for a core per decision (Linux schedstat "
                                  "run delay: other processes and this one's own threads); wall - cpu - this "
                                  "is the wait for the GIL and locks", ["verb"], buckets=BUCKETS, registry=r)
        self.active = Histogram("hcs_allocator_decision_active_seconds",
                                "Time to answer minus the answering thread's wait for a core (CPU, GIL, locks: "
                                "what the allocator controls on a machine busy with other work)", ["verb"],
                                buckets=BUCKETS, registry=r)
        self.conflicts = Counter("hcs_allocator_conflicts", "Reservations the state could not hold", ["kind"],
                                 registry=r)
        self.leader = Gauge("hcs_allocator_leader", "1 when this replica holds the leader Lease", registry=r)
        self.watch_events = Counter("hcs_allocator_watch_events", "Watch events applied", ["resource"],
                                    registry=r)
        self.relists = Counter("hcs_allocator_watch_relists", "Full LISTs (start, 410 Gone, broken watch)",
                               ["resource"], registry=r)
        self.inflight = Gauge("hcs_allocator_inflight_binds", "Binds between reserve and the watch seeing them",
                              registry=r)
        if state is not None:
            r.register(_StateCollector(state))
        #: raw decision times per verb (seconds), kept only when a caller sets a dict here (bench)
        self.samples: dict[str, list[float]] | None = None

    @contextmanager
    def decision(self, verb: str) -> Iterator[Callable[[str], None]]:
        """``with m.decision("bind") as outcome: ... outcome("nofit")`` (default ``ok``; an exception
        counts as ``error``)."""
        result = ["ok"]
        start = time.perf_counter()
        cpu0 = time.thread_time()
        rq0 = run_delay_s()
        try:
            yield lambda o: result.__setitem__(0, o)
        except BaseException:
            if result[0] == "ok":
                result[0] = "error"
            raise
        finally:
            took = time.perf_counter() - start
            self.latency.labels(verb).observe(took)
            self.cpu.labels(verb).observe(time.thread_time() - cpu0)
            if rq0 is not None:
                rq1 = run_delay_s()
                if rq1 is not None:
                    self.runqueue.labels(verb).observe(max(0.0, rq1 - rq0))
                    self.active.labels(verb).observe(max(0.0, took - (rq1 - rq0)))
            if self.samples is not None:
                self.samples.setdefault(verb, []).append(took)
            self.decisions.labels(verb, result[0]).inc()

    def grpc_interceptor(self) -> Any:
        """A gRPC server interceptor counting and timing every unary method (verb = method name, lower case;
        RESOURCE_EXHAUSTED → nofit, UNAVAILABLE → not_leader, other errors → error)."""
        metrics = self

        class _Interceptor(grpc.ServerInterceptor):  # type: ignore[misc]
            def intercept_service(self, continuation: Any, details: Any) -> Any:
                handler = continuation(details)
                if handler is None or handler.unary_unary is None:
                    return handler
                verb = str(details.method).rsplit("/", 1)[-1].lower()
                inner = handler.unary_unary

                def wrapped(request: Any, context: Any) -> Any:
                    with metrics.decision(verb) as outcome:
                        try:
                            return inner(request, context)
                        except BaseException:
                            code = context.code()
                            outcome("nofit" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else
                                    "not_leader" if code == grpc.StatusCode.UNAVAILABLE else "error")
                            raise

                return grpc.unary_unary_rpc_method_handler(
                    wrapped, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

        return _Interceptor()

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
