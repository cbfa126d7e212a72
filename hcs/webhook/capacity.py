"""The cluster's interconnect islands: how much VRAM the largest one holds, overall and per vendor.

The webhook asks through the :class:`IslandCapacity` protocol, whose one method answers a
:class:`ClusterIslands`: the largest :class:`Island` overall and the largest per vendor (so a pod
pinned with ``hcs.io/vendor`` is checked against the vendors it may run on, and a denial can say
where the island is). Implementations:

* :class:`AllocatorCapacity` asks the allocator (``hcs.allocator.v1`` ``GetCapacity``) over gRPC: the
  allocator already holds the parsed inventory, so the webhook needs no ComputeNode read access.
* :class:`FallbackCapacity` tries one source, then another (allocator, then ComputeNodes).
* :class:`ComputeNodeCapacity` reads ComputeNode objects (``hetero.zrs.io/v1alpha1``) from the API
  server and runs them through the allocator's own parser and island arithmetic
  (:func:`~hcs.cluster_inventory.parse_computenode`, :func:`~hcs.cluster_inventory.capacity_of`),
  so both sources give the same answer in the same shape. An object the parser rejects is skipped
  (logged once while it stays broken): one bad object never blocks admission.
* :class:`StaticCapacity` is a fixed size (tests, air-gapped set-ups: ``largestIsland`` in config); it
  knows neither vendors nor locations, so vendor-pinned pods are checked against that one number.
* :class:`CachedCapacity` wraps another with a TTL so admission latency does not include an API call;
  failures are cached briefly too, so an outage does not turn every admission into a timeout. It
  caches the whole answer; filtering by vendor happens in :mod:`hcs.webhook.validate`.

Any implementation raises :class:`CapacityUnavailable` when it cannot answer; the webhook's
``allocatorFailurePolicy`` then decides between admitting with a warning and denying.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from hcs.allocator_client import channel as allocator_channel
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg
from hcs.cluster_inventory import ExchangeRates, InventoryError, NodeInventory, capacity_of, parse_computenode
from hcs.quantity import format_bytes

log = logging.getLogger(__name__)

COMPUTENODE_GROUP = "hetero.zrs.io"
COMPUTENODE_VERSION = "v1alpha1"
COMPUTENODE_PLURAL = "computenodes"


class CapacityUnavailable(Exception):
    """The inventory could not be read (allocator or API server down, forbidden, ...)."""


@dataclass(frozen=True)
class Island:
    """One interconnect island: the healthy devices of one node sharing an island id.

    ``id`` is empty for a device outside any island (an island of its own). A configured size
    (:class:`StaticCapacity`) has only ``vram_bytes``: vendor, node and devices are unknown.
    """

    vram_bytes: int
    vendor: str = ""
    node: str = ""
    id: str = ""
    devices: tuple[str, ...] = ()

    def where(self) -> str:
        """``island nvl-a on node big, 4 devices``; empty when the location is unknown."""
        if not self.node:
            return ""
        if self.id:
            n = len(self.devices)
            return f"island {self.id} on node {self.node}, {n} device{'' if n == 1 else 's'}"
        device = self.devices[0] if self.devices else "a device"
        return f"device {device} on node {self.node}, outside any interconnect island"

    def describe(self) -> str:
        """``320Gi: island nvl-a on node big, 4 devices`` (just ``320Gi`` when the location is unknown)."""
        size = format_bytes(self.vram_bytes)
        where = self.where()
        return f"{size}: {where}" if where else size


@dataclass(frozen=True)
class ClusterIslands:
    """What an :class:`IslandCapacity` knows about the cluster's islands (healthy devices only)."""

    #: The largest island of any vendor; None when no healthy accelerator is registered.
    largest: Island | None
    #: The largest island per vendor; None when the source does not know vendors (a configured size).
    by_vendor: Mapping[str, Island] | None = None
    nodes: int = 0  # nodes with a ComputeNode (0 when unknown)
    devices: int = 0  # all devices, healthy or not (0 when unknown)
    healthy_devices: int = 0

    @property
    def knows_vendors(self) -> bool:
        return self.by_vendor is not None

    def largest_among(self, vendors: Collection[str] | None) -> Island | None:
        """The largest island of one of ``vendors``; None when none of them has a healthy device.

        ``vendors=None`` (no filter), or a source that does not know vendors, answers :attr:`largest`.
        Equal sizes go to the vendor first in name order, so repeated answers are stable.
        """
        if vendors is None or self.by_vendor is None:
            return self.largest
        best: Island | None = None
        for vendor in sorted(vendors):
            island = self.by_vendor.get(vendor)
            if island is not None and (best is None or island.vram_bytes > best.vram_bytes):
                best = island
        return best

    @classmethod
    def of_size(cls, largest_bytes: int | None) -> ClusterIslands:
        """A configured size: no vendors, no location."""
        return cls(Island(largest_bytes) if largest_bytes is not None else None)


def _island(msg: pb.Island) -> Island:
    return Island(vram_bytes=msg.vram_bytes, vendor=msg.vendor, node=msg.node, id=msg.island,
                  devices=tuple(msg.devices))


def islands_of(resp: pb.GetCapacityResponse) -> ClusterIslands:
    """The allocator's ``GetCapacity`` answer (or :func:`capacity_of`'s) in plain Python."""
    return ClusterIslands(
        largest=_island(resp.largest) if resp.HasField("largest") else None,
        by_vendor={i.vendor: _island(i) for i in resp.largest_by_vendor},
        nodes=resp.nodes,
        devices=resp.devices,
        healthy_devices=resp.healthy_devices,
    )


class IslandCapacity(Protocol):
    def islands(self) -> ClusterIslands:
        """The cluster's largest islands; raises :class:`CapacityUnavailable` when it cannot tell."""
        ...


class StaticCapacity:
    """A fixed largest-island size (``largestIsland``); None: nothing registered."""

    def __init__(self, largest: int | None) -> None:
        self._answer = ClusterIslands.of_size(largest)

    def islands(self) -> ClusterIslands:
        return self._answer


class ComputeNodeCapacity:
    """Reads ComputeNode objects through a ``kubernetes.client.ApiClient``.

    Parsing and island arithmetic are the allocator's (:func:`inventory_of`), so this fallback and
    :class:`AllocatorCapacity` agree. A 404 (CRD not installed) means nothing is registered yet.
    """

    def __init__(self, api_client: Any, rates: ExchangeRates | None = None) -> None:
        client: Any = importlib.import_module("kubernetes.client")
        self._api = client.CustomObjectsApi(api_client)
        self._rates = rates
        self._broken: set[str] = set()  # names of objects already logged as unusable

    def islands(self) -> ClusterIslands:
        try:
            result = self._api.list_cluster_custom_object(
                COMPUTENODE_GROUP, COMPUTENODE_VERSION, COMPUTENODE_PLURAL, _request_timeout=3
            )
        except Exception as exc:  # ApiException, urllib3 errors: all mean "cannot answer"
            status = getattr(exc, "status", None)
            if status == 404:  # CRD not installed: nothing registered yet
                return islands_of(capacity_of(()))
            raise CapacityUnavailable(f"listing ComputeNodes failed ({status or type(exc).__name__})") from exc
        items = result.get("items") if isinstance(result, Mapping) else None
        if self._rates is None:
            self._rates = ExchangeRates.from_config(None)
        nodes, self._broken = inventory_of(items if isinstance(items, list) else [], self._rates, self._broken)
        return islands_of(capacity_of(nodes))


def inventory_of(
    items: Iterable[Any], rates: ExchangeRates | None = None, logged: Collection[str] = (),
) -> tuple[list[NodeInventory], set[str]]:
    """Parse ComputeNode objects with the allocator's parser, skipping the ones it rejects.

    Returns the parsed nodes and the names of the rejected objects. A rejection is logged at warning
    level unless its name is in ``logged`` (pass the previous call's set: one line per broken object
    while it stays broken, and again if it breaks after being fixed).
    """
    rates = rates or ExchangeRates.from_config(None)
    nodes: list[NodeInventory] = []
    broken: set[str] = set()
    for i, obj in enumerate(items):
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        name = str(meta.get("name") or f"#{i}") if isinstance(meta, Mapping) else f"#{i}"
        try:
            if not isinstance(obj, Mapping):
                raise InventoryError(f"ComputeNode {name}: not an object")
            nodes.append(parse_computenode(obj, rates))
        except InventoryError as exc:
            broken.add(name)
            if name not in logged:
                log.warning("%s; skipped for the island check until the node agent rewrites it", exc)
    return nodes, broken


class AllocatorCapacity:
    """Asks the allocator's ``GetCapacity`` over gRPC (``host:port`` or ``unix:/path``).

    One channel for the process's lifetime (gRPC reconnects by itself); reconnect back-off is capped
    at a few seconds so the check comes back soon after an allocator restart instead of after gRPC's
    default two minutes. Any RPC failure becomes :class:`CapacityUnavailable`.
    """

    def __init__(self, address: str, timeout_s: float = 1.0, *, token_file: str = "", ca_file: str = "",
                 server_name: str = "") -> None:
        """``token_file``/``ca_file``: the webhook's identity and the allocator's CA (see
        :func:`hcs.allocator.auth.channel`); both empty only against an ``--insecure-dev`` allocator."""
        self.address = address
        self._timeout = timeout_s
        self._channel = allocator_channel(address, token_file=token_file, ca_file=ca_file, server_name=server_name,
                                          options=[
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 1000),
            ("grpc.max_reconnect_backoff_ms", 3000),
        ])
        self._stub = pbg.AllocatorStub(self._channel)  # type: ignore[no-untyped-call]

    def islands(self) -> ClusterIslands:
        try:
            resp = self._stub.GetCapacity(pb.GetCapacityRequest(), timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else type(exc).__name__
            detail = (exc.details() if hasattr(exc, "details") else "") or ""
            hint = {
                "DEADLINE_EXCEEDED": f"no answer within {self._timeout:g}s",
                "UNIMPLEMENTED": "the allocator predates GetCapacity; upgrade it",
                "UNAUTHENTICATED": f"{detail[:200]}; check webhook.allocatorTokenFile",
                "PERMISSION_DENIED": f"{detail[:200]}; the webhook's ServiceAccount needs get on "
                                     "capacity.allocator.hcs.io (the chart binds it)",
            }.get(name, detail[:200])
            raise CapacityUnavailable(
                f"allocator {self.address}: {name} ({hint}); check that `hcs allocator` runs and "
                "webhook.allocatorAddress points at it") from exc
        return islands_of(resp)

    def close(self) -> None:
        self._channel.close()


class FallbackCapacity:
    """``primary``'s answer, else ``secondary``'s when the primary cannot answer.

    A primary that answers "nothing registered" (no largest island) is believed: that is an answer, not an outage.
    Only when both fail does the webhook's ``allocatorFailurePolicy`` apply.
    """

    def __init__(self, primary: IslandCapacity, secondary: IslandCapacity, what: str = "the fallback") -> None:
        self._primary = primary
        self._secondary = secondary
        self._what = what

    def islands(self) -> ClusterIslands:
        try:
            return self._primary.islands()
        except CapacityUnavailable as first:
            log.warning("%s; asking %s instead", first, self._what)
            try:
                return self._secondary.islands()
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
        self._value: ClusterIslands | None = None
        self._error: CapacityUnavailable | None = None
        self._until = float("-inf")

    def islands(self) -> ClusterIslands:
        with self._lock:
            now = self._clock()
            if now < self._until:
                if self._error is not None:
                    raise self._error
                assert self._value is not None
                return self._value
            try:
                value = self._value = self._inner.islands()
                self._error = None
                self._until = now + self._ttl
                return value
            except CapacityUnavailable as exc:
                log.warning("island capacity unavailable: %s", exc)
                self._error = exc
                self._until = now + self._error_ttl
                raise
