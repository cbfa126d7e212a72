"""How much VRAM the largest interconnect island in the cluster holds.

The webhook asks through the :class:`IslandCapacity` protocol. Implementations:

* :class:`ComputeNodeCapacity` reads ComputeNode objects (``hetero.zrs.io/v1alpha1``) from the API
  server: per node, devices that share an island sum up; a device outside any island is its own.
* :class:`StaticCapacity` is a fixed answer (tests, air-gapped set-ups: ``largestIsland`` in config).
* :class:`CachedCapacity` wraps another with a TTL so admission latency does not include an API call;
  failures are cached briefly too, so an outage does not turn every admission into a timeout.

Any implementation raises :class:`CapacityUnavailable` when it cannot answer; the webhook's
``allocatorFailurePolicy`` then decides between admitting with a warning and denying.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from hcs.devices.model import HEALTHY_THRESHOLD
from hcs.errors import QuantityError
from hcs.quantity import parse_bytes

log = logging.getLogger(__name__)

COMPUTENODE_GROUP = "hetero.zrs.io"
COMPUTENODE_VERSION = "v1alpha1"
COMPUTENODE_PLURAL = "computenodes"

_VRAM_KEYS = ("vramTotalBytes", "vramBytes", "vramTotal", "vram", "memoryTotalBytes", "memory")


class CapacityUnavailable(Exception):
    """The inventory could not be read (allocator or API server down, forbidden, ...)."""


class IslandCapacity(Protocol):
    def largest_island_bytes(self) -> int | None:
        """Total VRAM of the largest interconnect island; None when no accelerator is registered."""
        ...


class StaticCapacity:
    def __init__(self, largest: int | None) -> None:
        self._largest = largest

    def largest_island_bytes(self) -> int | None:
        return self._largest


def _device_vram(dev: Mapping[str, Any]) -> int:
    for key in _VRAM_KEYS:
        if key in dev:
            value = dev[key]
            try:
                return parse_bytes(value if isinstance(value, str | int | float) else str(value))
            except QuantityError:
                return 0
    return 0


def _unhealthy(dev: Mapping[str, Any]) -> bool:
    if dev.get("healthy") is False or dev.get("health") in ("Unhealthy", "unhealthy"):
        return True
    score = dev.get("healthScore")
    return isinstance(score, int | float) and not isinstance(score, bool) and score < HEALTHY_THRESHOLD


def largest_island_of(computenodes: Iterable[Mapping[str, Any]]) -> int | None:
    """Largest island VRAM over ComputeNode objects (dicts); None when there are no devices.

    Reads ``spec.devices[]`` (``name``, ``vramBytes``, ``topology.island``, health) and
    ``spec.islands[] {id, members}`` as the node agent writes them (hcs/node/crds/computenode.yaml).
    Unhealthy devices do not count; a device outside any island is an island of its own.
    """
    best: int | None = None
    for cn in computenodes:
        if not isinstance(cn, Mapping):
            continue
        spec = cn.get("spec")
        if not isinstance(spec, Mapping):
            continue
        devices = [d for d in spec.get("devices") or [] if isinstance(d, Mapping)]
        member_of: dict[str, str] = {}
        for isl in spec.get("islands") or []:
            if isinstance(isl, Mapping):
                for m in isl.get("members") or []:
                    member_of[str(m)] = str(isl.get("id", ""))
        totals: dict[str, int] = {}
        for i, dev in enumerate(devices):
            if _unhealthy(dev):
                continue
            topology = dev.get("topology")
            island = str(topology.get("island") or "") if isinstance(topology, Mapping) else ""
            island = island or member_of.get(str(dev.get("name", "")), "")
            key = island or f"\0single-{i}"
            totals[key] = totals.get(key, 0) + _device_vram(dev)
        for total in totals.values():
            if total > 0 and (best is None or total > best):
                best = total
    return best


class ComputeNodeCapacity:
    """Reads ComputeNode objects through a ``kubernetes.client.ApiClient``."""

    def __init__(self, api_client: Any) -> None:
        client: Any = importlib.import_module("kubernetes.client")
        self._api = client.CustomObjectsApi(api_client)

    def largest_island_bytes(self) -> int | None:
        try:
            result = self._api.list_cluster_custom_object(
                COMPUTENODE_GROUP, COMPUTENODE_VERSION, COMPUTENODE_PLURAL, _request_timeout=3
            )
        except Exception as exc:  # ApiException, urllib3 errors: all mean "cannot answer"
            status = getattr(exc, "status", None)
            if status == 404:  # CRD not installed: nothing registered yet
                return None
            raise CapacityUnavailable(f"listing ComputeNodes failed ({status or type(exc).__name__})") from exc
        items = result.get("items", []) if isinstance(result, Mapping) else []
        return largest_island_of(items)


class CachedCapacity:
    """TTL cache around another source; failures are remembered for ``error_ttl_s``."""

    def __init__(
        self, inner: IslandCapacity, ttl_s: float, *, error_ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._ttl = ttl_s
        self._error_ttl = error_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._value: int | None = None
        self._error: CapacityUnavailable | None = None
        self._until = float("-inf")

    def largest_island_bytes(self) -> int | None:
        with self._lock:
            now = self._clock()
            if now < self._until:
                if self._error is not None:
                    raise self._error
                return self._value
            try:
                self._value = self._inner.largest_island_bytes()
                self._error = None
                self._until = now + self._ttl
                return self._value
            except CapacityUnavailable as exc:
                log.warning("island capacity unavailable: %s", exc)
                self._error = exc
                self._until = now + self._error_ttl
                raise
