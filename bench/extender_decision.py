"""The allocator's scheduler-extender decisions in-process, at scheduler-benchmark scale (no API server).

``--nodes`` nodes with ``--devices`` 80Gi devices each (as bench/scheduler.py registers them) in an
:class:`AllocatorState`; ``--pods`` 16Gi pods go through the extender's verbs as kube-scheduler calls them:
``filter`` with the node names the scheduler sends (``--names``; default what kube-scheduler's adaptive
``percentageOfNodesToScore`` gives at this size: max(5, 50 - nodes/125) % of the nodes, at least 100, a
window that rotates like its ``nextStartNodeIndex``; ``all`` for every node), ``prioritize`` with the
filter's nodes, then the reservation on the best node (the decision inside ``bind``; the real bind adds its
two API writes). ``--http`` sends the verbs as JSON over the extender's real HTTP listener instead of
calling it directly.

Prints one JSON object: per verb ``*_cpu_p50_ms``/``*_cpu_p99_ms`` (thread CPU time of the decision, as
the daemon's ``hcs_allocator_decision_cpu_seconds``) and ``*_wall_p50_ms``/``*_wall_p99_ms`` (wall clock;
with ``--http`` the client's, JSON and HTTP included); ``decision_p99_ms``/``decision_cpu_p99_ms``:
filter and prioritize together, the issue's key; ``decision_runqueue_p99_ms``: how long the deciding thread
waited for a core (Linux schedstat run delay: the machine's load), ``decision_wall_minus_runqueue_p99_ms``:
wall time without that wait (CPU, GIL, locks: what the allocator itself controls); ``gc_max_ms``: the
longest garbage collection during the
run (the inventory is frozen out of the collector first, as the daemon does; ``--no-gc-freeze``: not);
``rss_mib``.

    .venv/bin/python bench/extender_decision.py [--nodes 5000] [--devices 8] [--pods 3000] [--names all] [--http]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import resource
import sys
import time
from typing import Any

import numpy as np

from hcs.allocator.extender import Extender, serve_http
from hcs.allocator.metrics import run_delay_s
from hcs.allocator.placement import demand_from_pod
from hcs.allocator.state import AllocatorState
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30


def scheduler_window(nodes: int) -> int:
    """How many feasible nodes kube-scheduler looks for (and sends the extender) at this cluster size."""
    if nodes < 100:
        return nodes
    pct = max(5, 50 - nodes // 125)
    return max(100, nodes * pct // 100)


def pod(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"hcs-{i:05d}", "namespace": "hcs-bench", "uid": f"uid-{i}",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "main", "resources": {"requests": {"ai.compute/vram": "16Gi"},
                                                                   "limits": {"ai.compute/vram": "16Gi"}}}]}}


def q(values: list[float], p: float) -> float:
    return round(float(np.percentile(values, p)), 3) if values else 0.0


#: per filter/prioritize call: how long the deciding thread waited for a core (schedstat run delay, ms)
RUNQ: list[float] = []


class Direct:
    def __init__(self, ext: Extender) -> None:
        self.ext = ext

    def __call__(self, verb: str, args: dict[str, Any]) -> tuple[Any, float, float]:
        t0, c0, r0 = time.perf_counter(), time.thread_time(), run_delay_s()
        out = self.ext.decide(verb, args)
        wall = (time.perf_counter() - t0) * 1000
        r1 = run_delay_s()
        RUNQ.append(((r1 or 0.0) - (r0 or 0.0)) * 1000)
        return out, wall, (time.thread_time() - c0) * 1000


class OverHttp:
    """The verbs as kube-scheduler sends them: JSON over HTTP (keep-alive) to the extender's listener; the CPU
    time is the serving thread's (from the allocator's decision histogram, per call)."""

    def __init__(self, ext: Extender) -> None:
        self.server = serve_http(ext, "127.0.0.1", 0, insecure_dev=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        self.cpu: list[float] = []
        ext.metrics = None  # timed here instead
        self.ext = ext
        inner = ext.decide

        def timed(verb: str, args: Any) -> Any:
            c0, r0 = time.thread_time(), run_delay_s()
            try:
                return inner(verb, args)
            finally:
                self.cpu.append((time.thread_time() - c0) * 1000)
                RUNQ.append(((run_delay_s() or 0.0) - (r0 or 0.0)) * 1000)

        ext.decide = timed  # type: ignore[method-assign]

    def __call__(self, verb: str, args: dict[str, Any]) -> tuple[Any, float, float]:
        body = json.dumps(args).encode()
        t0 = time.perf_counter()
        self.conn.request("POST", f"/{verb}", body, {"Content-Type": "application/json"})
        out = json.loads(self.conn.getresponse().read())
        return out, (time.perf_counter() - t0) * 1000, self.cpu[-1]

    def close(self) -> None:
        self.conn.close()
        self.server.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--pods", type=int, default=3000)
    ap.add_argument("--names", default="", help="node names per filter: a number, or 'all' (default: what "
                                                 "kube-scheduler sends at this cluster size)")
    ap.add_argument("--http", action="store_true", help="through the extender's HTTP listener (JSON)")
    ap.add_argument("--start-burst", type=int, default=4,
                    help="allocator.startBurstPerNode as the daemon runs it [4]; the bench's pods never run, so "
                         "every node that took that many in the last 60 s ranks later; 0: off")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--no-gc-freeze", action="store_true", help="leave the loaded inventory to the cyclic garbage "
                                                              "collector (the daemon freezes it once synced)")
    args = ap.parse_args()
    if args.pods > args.nodes * args.devices * 5:
        ap.error(f"--pods {args.pods}: at most {args.nodes * args.devices * 5} fit")
    window = args.nodes if args.names == "all" else int(args.names) if args.names else scheduler_window(args.nodes)
    state = AllocatorState(start_burst=args.start_burst)
    names = [f"hcs-bench-{i:04d}" for i in range(args.nodes)]
    for n in names:
        state.set_node(NodeInventory(n, tuple(
            DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{n}-{i}", i, 80 * GI, 312_000, f"nvl-{i // 4}")
            for i in range(args.devices)), 64_000, 512 * GI))
    ext = Extender(state)
    if not args.no_gc_freeze:  # as the daemon does once its watches have listed (hcs/allocator/cli.py)
        gc.collect()
        gc.freeze()
    call: Direct | OverHttp = OverHttp(ext) if args.http else Direct(ext)
    pauses: list[float] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((time.perf_counter() - started[0]) * 1000)

    times: dict[str, tuple[list[float], list[float]]] = {v: ([], []) for v in ("filter", "prioritize", "reserve")}
    runq: list[float] = []  # per filter/prioritize: the deciding thread's wait for a core (ms)
    own: list[float] = []  # per filter/prioritize: wall minus that wait (ms)
    start = 0
    refused = 0
    try:
        for i in range(args.warmup + args.pods):
            if i == args.warmup:
                for wall, cpu in times.values():
                    wall.clear()
                    cpu.clear()
                runq.clear()
                own.clear()
                gc.callbacks.append(on_gc)
            p = pod(i)
            sent = [names[(start + j) % args.nodes] for j in range(window)]
            start = (start + window) % args.nodes
            got, w, c = call("filter", {"Pod": p, "NodeNames": sent})
            times["filter"][0].append(w)
            times["filter"][1].append(c)
            runq.append(RUNQ[-1])
            own.append(w - RUNQ[-1])
            fit = got["NodeNames"] or []
            if not fit:
                refused += 1
                continue
            got, w, c = call("prioritize", {"Pod": p, "NodeNames": fit})
            times["prioritize"][0].append(w)
            times["prioritize"][1].append(c)
            runq.append(RUNQ[-1])
            own.append(w - RUNQ[-1])
            best = max(got, key=lambda h: h["Score"])["Host"]
            demand = demand_from_pod(p)
            assert demand is not None
            t0, c0 = time.perf_counter(), time.thread_time()
            state.reserve(demand, best)
            times["reserve"][0].append((time.perf_counter() - t0) * 1000)
            times["reserve"][1].append((time.thread_time() - c0) * 1000)
    finally:
        if on_gc in gc.callbacks:
            gc.callbacks.remove(on_gc)
        if isinstance(call, OverHttp):
            call.close()
    state.check_invariants()
    out: dict[str, Any] = {"nodes": args.nodes, "devices_per_node": args.devices, "pods": args.pods,
                           "start_burst": args.start_burst, "names_per_filter": window, "http": args.http,
                           "gc_freeze": not args.no_gc_freeze,
                           "refused": refused}
    for verb, (wall, cpu) in times.items():
        out.update({f"{verb}_cpu_p50_ms": q(cpu, 50), f"{verb}_cpu_p99_ms": q(cpu, 99),
                    f"{verb}_wall_p50_ms": q(wall, 50), f"{verb}_wall_p99_ms": q(wall, 99)})
    both_wall = times["filter"][0] + times["prioritize"][0]
    both_cpu = times["filter"][1] + times["prioritize"][1]
    # own: wall time without the waits for a core (what the allocator itself spends: CPU, GIL, locks)
    out.update(decision_p99_ms=q(both_wall, 99), decision_cpu_p99_ms=q(both_cpu, 99),
               decision_runqueue_p99_ms=q(runq, 99), decision_wall_minus_runqueue_p99_ms=q(own, 99),
               load_avg_1m=round(os.getloadavg()[0], 2),
               gc_max_ms=round(max(pauses, default=0.0), 2), gc_collections=len(pauses),
               rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
