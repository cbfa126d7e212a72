"""What every vendor backend provides, and the health scoring they share."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass

from hcs.devices.catalog import Catalog
from hcs.devices.libraries import LoadedLibrary
from hcs.devices.model import Device, Health, Vendor
from hcs.devices.subhealth import Signals

#: Health penalties: critical problems make a device unusable; warnings degrade it.
CRITICAL = 100
WARNING = 20
NOTICE = 5


@dataclass(frozen=True)
class Finding:
    """One health observation: how many points it costs and why."""

    penalty: int
    reason: str


def score(findings: list[Finding]) -> Health:
    total = sum(f.penalty for f in findings)
    return Health(score=max(0, 100 - total), reasons=tuple(f.reason for f in findings))


class VendorError(Exception):
    """A vendor library call failed; message names the call and the vendor's error code."""


class Backend(abc.ABC):
    """One vendor's management library. Opened once; all calls after ``open`` are cheap."""

    vendor: Vendor
    has_events = False  # True when wait_events blocks on pushed driver events

    def __init__(self, lib: LoadedLibrary, catalog: Catalog) -> None:
        self.lib = lib
        self.catalog = catalog

    @abc.abstractmethod
    def open(self) -> None:
        """Initialise the library (raise VendorError on failure)."""

    @abc.abstractmethod
    def devices(self) -> list[Device]:
        """Enumerate devices with links to peers (island left empty: topology assigns it)."""

    @abc.abstractmethod
    def health(self, index: int) -> Health:
        """Poll the device's current health."""

    def signals(self, index: int) -> Signals:
        """One sub-health sample (hcs.devices.subhealth); backends override with their library's calls."""
        health = self.health(index)
        return Signals(vendor_health=health, lost=health.score == 0)

    def start_events(self) -> None:  # noqa: B027 - optional hook
        """Subscribe to pushed events now, so none raised after this call is missed."""

    def wait_events(self, timeout_s: float) -> dict[int, Finding]:
        """Block up to ``timeout_s`` for pushed health events (vendors without events just sleep)."""
        time.sleep(timeout_s)
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the library."""


def temperature_finding(temp_c: int | None, limit_c: int = 85) -> list[Finding]:
    if temp_c is not None and temp_c >= limit_c:
        return [Finding(WARNING, f"temperature {temp_c} C at or above {limit_c} C")]
    return []
