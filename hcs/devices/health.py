"""Watch device health: pushed driver events (NVML Xid/ECC) plus polling of every backend.

Event findings (an Xid) are sticky: a device that reported a hardware Xid stays failing until
``clear(key)`` (the operator's decision, as with NVIDIA's plugin). Polled signals (ECC counters and
rates, retired pages, PCIe and fabric link errors, throttling, clocks, temperature and its trend,
vendor health codes, a lost device, the workload-side straggler verdict) are graded with hysteresis
by ``hcs.devices.subhealth`` and recover by themselves; recovery is reported.

Polling runs every ``poll_interval_s`` (the node config's ``healthPollInterval``); pushed events are
waited for in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace

from hcs.devices.backend import Backend, Finding, score
from hcs.devices.catalog import Catalog
from hcs.devices.inventory import Inventory, open_backends
from hcs.devices.model import Health, Vendor
from hcs.devices.subhealth import CLEAR_S, Grader, Signals, Verdict

POLL_INTERVAL_S = 1.0  # default when the caller gives none (node config: healthPollInterval)


@dataclass(frozen=True)
class HealthChange:
    device_key: str
    old: Health
    new: Health


def combine(polled: Health, events: list[Finding]) -> Health:
    """Polled health lowered by sticky event findings (a device with a hardware Xid is failing)."""
    if not events:
        return polled
    penalty = 100 - score(events).score
    new_score = max(0, polled.score - penalty)
    grade = polled.grade
    if polled.grade and new_score < 50 and polled.grade in ("healthy", "degraded"):
        grade = "failing"
    return Health(new_score, polled.reasons + tuple(f.reason for f in events), grade)


class HealthMonitor:
    def __init__(self, inventory: Inventory, catalog: Catalog | None = None, *,
                 poll_interval_s: float = POLL_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 workload: Callable[[], dict[str, str]] | None = None, clear_s: float = CLEAR_S) -> None:
        """``clock`` dates samples for the grader (the benchmark passes the simulator's scenario
        clock); ``workload`` returns the straggler verdict text per device key (hcs.devices.workload);
        ``clear_s`` is how long a raised condition must stay false before it clears (hysteresis)."""
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._workload = workload
        self._grader = Grader(clear_s=clear_s)
        self._verdicts: dict[str, Verdict] = {}
        self._next_poll = 0.0
        vendors = tuple(dict.fromkeys(d.vendor for d in inventory.devices))
        self._stack = ExitStack()
        backends, _ = self._stack.enter_context(open_backends(catalog, vendors or ()))
        self._backends: dict[Vendor, Backend] = {b.vendor: b for b in backends}
        self._keys = {d.key: (d.vendor, d.index) for d in inventory.devices}
        self._current = {d.key: replace(d.health, grade=d.health.verdict) for d in inventory.devices}
        self._sticky: dict[str, list[Finding]] = {}
        for backend in self._backends.values():
            backend.start_events()

    def current(self) -> dict[str, Health]:
        return dict(self._current)

    def verdicts(self) -> dict[str, Verdict]:
        """The last graded verdict per device (with its reasons)."""
        return dict(self._verdicts)

    def signals(self) -> dict[str, Signals]:
        """The last signal sample per device (for metrics)."""
        return {k: g.history.last for k, g in self._grader.devices.items() if g.history.samples}

    def clear(self, key: str) -> None:
        """Forget sticky event findings for a device (e.g. after a reset)."""
        self._sticky.pop(key, None)

    def wait(self, timeout_s: float) -> list[HealthChange]:
        """Block up to ``timeout_s``; return the devices whose health changed (possibly none)."""
        deadline = time.monotonic() + timeout_s
        event_backends = [b for b in self._backends.values() if b.has_events]
        while True:
            now = time.monotonic()
            # wait for pushed events until the next poll is due (or the deadline)
            slice_s = max(0.0, min(deadline, self._next_poll) - now)
            got_event = False
            if event_backends and slice_s > 0:
                for b in event_backends:
                    for index, finding in b.wait_events(slice_s / len(event_backends)).items():
                        self._sticky.setdefault(f"{b.vendor}-{index}", []).append(finding)
                        got_event = True
            elif slice_s > 0:
                time.sleep(slice_s)
            changes: list[HealthChange] = []
            if got_event or time.monotonic() >= self._next_poll:
                changes = self.poll()
            if changes or time.monotonic() >= deadline:
                return changes

    def poll(self) -> list[HealthChange]:
        """Sample every device's signals once, grade them, and return the health changes."""
        self._next_poll = time.monotonic() + self.poll_interval_s
        t = self._clock()
        stragglers = self._workload() if self._workload is not None else {}
        changes = []
        for key, (vendor, index) in self._keys.items():
            backend = self._backends.get(vendor)
            if backend is None:
                continue
            sample = backend.signals(index)
            if stragglers.get(key):
                sample = replace(sample, straggler=stragglers[key])
            verdict = self._grader.observe(key, t, sample)
            self._verdicts[key] = verdict
            new = combine(verdict.health(), self._sticky.get(key, []))
            if new != self._current[key]:
                changes.append(HealthChange(key, self._current[key], new))
                self._current[key] = new
        return changes

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> HealthMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
