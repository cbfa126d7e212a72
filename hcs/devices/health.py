"""Watch device health: pushed driver events (NVML Xid/ECC) plus polling of every backend.

Event findings (an Xid) are sticky: a device that reported a hardware Xid stays unhealthy until
``clear(key)`` (the operator's decision, as with NVIDIA's plugin). Polled findings (ECC counters,
vendor health codes, temperature, a lost device) recover by themselves, and recovery is reported.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass

from hcs.devices.backend import Backend, Finding, score
from hcs.devices.catalog import Catalog
from hcs.devices.inventory import Inventory, open_backends
from hcs.devices.model import Health, Vendor

POLL_INTERVAL_S = 0.1


@dataclass(frozen=True)
class HealthChange:
    device_key: str
    old: Health
    new: Health


def combine(polled: Health, events: list[Finding]) -> Health:
    """Polled health lowered by sticky event findings."""
    if not events:
        return polled
    penalty = 100 - score(events).score
    return Health(max(0, polled.score - penalty), polled.reasons + tuple(f.reason for f in events))


class HealthMonitor:
    def __init__(self, inventory: Inventory, catalog: Catalog | None = None) -> None:
        vendors = tuple(dict.fromkeys(d.vendor for d in inventory.devices))
        self._stack = ExitStack()
        backends, _ = self._stack.enter_context(open_backends(catalog, vendors or ()))
        self._backends: dict[Vendor, Backend] = {b.vendor: b for b in backends}
        self._keys = {d.key: (d.vendor, d.index) for d in inventory.devices}
        self._current = {d.key: d.health for d in inventory.devices}
        self._sticky: dict[str, list[Finding]] = {}
        for backend in self._backends.values():
            backend.start_events()

    def current(self) -> dict[str, Health]:
        return dict(self._current)

    def clear(self, key: str) -> None:
        """Forget sticky event findings for a device (e.g. after a reset)."""
        self._sticky.pop(key, None)

    def wait(self, timeout_s: float) -> list[HealthChange]:
        """Block up to ``timeout_s``; return the devices whose health changed (possibly none)."""
        deadline = time.monotonic() + timeout_s
        event_backends = [b for b in self._backends.values() if b.has_events]
        while True:
            remaining = deadline - time.monotonic()
            slice_s = max(0.0, min(remaining, POLL_INTERVAL_S))
            if event_backends:
                for b in event_backends:
                    for index, finding in b.wait_events(slice_s / len(event_backends)).items():
                        self._sticky.setdefault(f"{b.vendor}-{index}", []).append(finding)
            elif slice_s > 0:
                time.sleep(slice_s)
            changes = self.poll()
            if changes or time.monotonic() >= deadline:
                return changes

    def poll(self) -> list[HealthChange]:
        changes = []
        for key, (vendor, index) in self._keys.items():
            backend = self._backends.get(vendor)
            if backend is None:
                continue
            new = combine(backend.health(index), self._sticky.get(key, []))
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
