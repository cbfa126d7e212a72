"""How much VRAM the largest interconnect island in the cluster holds.

The webhook asks through the :class:`IslandCapacity` protocol. Implementations:

* :class:`AllocatorCapacity` asks the allocator (``hcs.allocator.v1`` ``GetCapacity``) over gRPC: the
  allocator already holds the parsed inventory, so the webhook needs no ComputeNode read access.
* :class:`FallbackCapacity` tries one source, then another (allocator, then ComputeNodes).
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
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
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


@dataclass(frozen=True)
class IslandSummary:
    """The allocator's ``GetCapacity`` answer in plain Python (kept for logs and a vendor selector)."""

    largest_bytes: int | None
    node: str = ""
    island: str = ""
    devices: tuple[str, ...] = ()
    by_vendor: Mapping[str, int] = field(default_factory=dict)
    nodes: int = 0
    healthy_devices: int = 0

    def describe(self) -> str:
        """``node n1 island nvl0 (nvidia-0, nvidia-1)``: where the largest island is."""
        if self.largest_bytes is None:
            return "no healthy accelerator registered"
        where = f"island {self.island}" if self.island else "device without interconnect island"
        return f"node {self.node} {where} ({', '.join(self.devices)})"


def summary_of(resp: pb.GetCapacityResponse) -> IslandSummary:
    largest = resp.largest if resp.HasField("largest") else None
    return IslandSummary(
        largest_bytes=largest.vram_bytes if largest is not None else None,
        node=largest.node if largest is not None else "",
        island=largest.island if largest is not None else "",
        devices=tuple(largest.devices) if largest is not None else (),
        by_vendor={i.vendor: i.vram_bytes for i in resp.largest_by_vendor},
        nodes=resp.nodes,
        healthy_devices=resp.healthy_devices,
    )


class AllocatorCapacity:
    """Asks the allocator's ``GetCapacity`` over gRPC (``host:port`` or ``unix:/path``).

    One channel for the process's lifetime (gRPC reconnects by itself); reconnect back-off is capped
    at a few seconds so the check comes back soon after an allocator restart instead of after gRPC's
    default two minutes. Any RPC failure becomes :class:`CapacityUnavailable`.
    """

    def __init__(self, address: str, timeout_s: float = 1.0) -> None:
        self.address = address
        self._timeout = timeout_s
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 1000),
            ("grpc.max_reconnect_backoff_ms", 3000),
        ])
        self._stub = pbg.AllocatorStub(self._channel)  # type: ignore[no-untyped-call]

    def summary(self) -> IslandSummary:
        try:
            resp = self._stub.GetCapacity(pb.GetCapacityRequest(), timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else type(exc).__name__
            detail = (exc.details() if hasattr(exc, "details") else "") or ""
            hint = {
                "DEADLINE_EXCEEDED": f"no answer within {self._timeout:g}s",
                "UNIMPLEMENTED": "the allocator predates GetCapacity; upgrade it",
            }.get(name, detail[:200])
            raise CapacityUnavailable(
                f"allocator {self.address}: {name} ({hint}); check that `hcs allocator` runs and "
                "webhook.allocatorAddress points at it") from exc
        return summary_of(resp)

    def largest_island_bytes(self) -> int | None:
        return self.summary().largest_bytes

    def close(self) -> None:
        self._channel.close()


class FallbackCapacity:
    """``primary``'s answer, else ``secondary``'s when the primary cannot answer.

    A primary that answers "nothing registered" (None) is believed: that is an answer, not an outage.
    Only when both fail does the webhook's ``allocatorFailurePolicy`` apply.
    """

    def __init__(self, primary: IslandCapacity, secondary: IslandCapacity, what: str = "the fallback") -> None:
        self._primary = primary
        self._secondary = secondary
        self._what = what

    def largest_island_bytes(self) -> int | None:
        try:
            return self._primary.largest_island_bytes()
        except CapacityUnavailable as first:
            log.warning("%s; asking %s instead", first, self._what)
            try:
                return self._secondary.largest_island_bytes()
            except CapacityUnavailable as second:
                raise CapacityUnavailable(f"{first}; {self._what} failed too: {second}") from second


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
