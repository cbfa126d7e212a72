"""Pin the node agent's threads to chosen CPUs (``node.cpuAffinity``).

The agent's Python runs under one GIL, so it never uses much more than one CPU. Every kubelet call
hands off between its threads (gRPC poller, handler, reply); when those threads sit on different
CPUs, each hand-off wakes another, often idle, CPU, and on a VM that wake-up is the slowest part of
the call. Keeping the agent on one CPU makes the hand-offs local: on the 2-vCPU bench VM it lowers
Allocate's median by about a fifth and its tail by about a third. Off by default: a pinned agent
cannot move away from a busy CPU, so pin it to a CPU kept free of workloads (kubelet
``--reserved-cpus``).

Values: ``""`` (no pinning), ``"auto"`` (the highest-numbered CPU the agent may use) or a cpuset
list such as ``"3"`` or ``"0-1,6"``.
"""

from __future__ import annotations

import logging
import os

from hcs.errors import ConfigError

log = logging.getLogger(__name__)


def parse_cpus(spec: str, allowed: set[int]) -> set[int]:
    """CPUs named by ``spec`` (see the module docstring); empty for no pinning."""
    spec = spec.strip()
    if not spec:
        return set()
    if spec == "auto":
        return {max(allowed)}
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ConfigError(f"node.cpuAffinity: {part.strip()!r} is not a CPU number or range; "
                              "write e.g. '3', '0-1,6' or 'auto'") from None
        if first < 0 or last < first:
            raise ConfigError(f"node.cpuAffinity: bad range {part.strip()!r}")
        cpus.update(range(first, last + 1))
    outside = sorted(cpus - allowed)
    if outside:
        raise ConfigError(f"node.cpuAffinity: CPUs {outside} are not available to the agent "
                          f"(it may use {_ranges(allowed)})")
    return cpus


def pin_process(spec: str) -> set[int]:
    """Apply ``spec`` to every thread of this process (threads started later inherit it).
    Returns the CPUs pinned to; empty when ``spec`` asks for no pinning."""
    allowed = os.sched_getaffinity(0)
    cpus = parse_cpus(spec, allowed)
    if not cpus:
        return cpus
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    log.info("pinned to CPU %s (cpuAffinity %r)", _ranges(cpus), spec)
    return cpus


def _ranges(cpus: set[int]) -> str:
    out: list[str] = []
    for c in sorted(cpus):
        if out and out[-1].split("-")[-1] == str(c - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)
