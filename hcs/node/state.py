"""Allocations the agent handed out, one small JSON file per container, written atomically.

One file per container (not one file for the node) means a torn or corrupt file loses at most one
record, which the agent rebuilds from the kubelet's pod-resources API plus the assignment source.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcs.devices.model import Vendor
from hcs.fileio import atomic_write
from hcs.node.assignments import DeviceGrant, PodRef, compute_policy_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Allocation:
    """What one container got: the kubelet's slot IDs and the physical devices behind them."""

    pod: PodRef
    container: str
    slots: tuple[str, ...]
    devices: tuple[DeviceGrant, ...]

    @property
    def id(self) -> str:
        return f"{self.pod.uid}_{self.container}"

    def to_json(self) -> dict[str, Any]:
        return {
            "pod": {"uid": self.pod.uid, "namespace": self.pod.namespace, "name": self.pod.name,
                    "createdMs": self.pod.created_ms, "computePolicy": self.pod.compute_policy},
            "container": self.container,
            "slots": list(self.slots),
            "devices": [{"vendor": str(g.vendor), "index": g.index, "uuid": g.uuid, "vramBytes": g.vram_bytes,
                         "tflopsMilli": g.tflops_milli, "model": g.model, "island": g.island}
                        for g in self.devices],
        }

    @staticmethod
    def from_json(data: Any) -> Allocation:
        try:
            pod = data["pod"]
            return Allocation(
                PodRef(str(pod["uid"]), str(pod["namespace"]), str(pod["name"]), int(pod.get("createdMs", 0)),
                       compute_policy=compute_policy_of(pod.get("computePolicy"))),
                str(data["container"]),
                tuple(str(s) for s in data["slots"]),
                tuple(DeviceGrant(Vendor(g["vendor"]), int(g["index"]), str(g["uuid"]), int(g["vramBytes"]),
                                  int(g.get("tflopsMilli", 0)), str(g.get("model", "")), str(g.get("island", "")))
                      for g in data["devices"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad or missing field ({exc!r})") from exc


class AllocationStore:
    """``<dir>/<pod uid>_<container>.json`` per allocation."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, allocation_id: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in allocation_id)
        return self.dir / f"{safe}.json"

    def load(self) -> tuple[list[Allocation], list[Path]]:
        """All readable allocations, and the files that were corrupt (already moved aside)."""
        good: list[Allocation] = []
        bad: list[Path] = []
        if not self.dir.is_dir():
            return good, bad
        for p in sorted(self.dir.glob("*.json")):
            try:
                good.append(Allocation.from_json(json.loads(p.read_text())))
            except (OSError, ValueError) as exc:
                log.error("state file %s is corrupt (%s); moving it aside to %s.corrupt and rebuilding "
                          "that allocation from the kubelet and the assignment source", p, exc, p.name)
                with contextlib.suppress(OSError):
                    os.replace(p, p.with_suffix(".corrupt"))
                bad.append(p)
        return good, bad

    def put(self, a: Allocation) -> None:
        atomic_write(self._path(a.id), json.dumps(a.to_json(), sort_keys=True))

    def remove(self, a: Allocation) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(a.id).unlink()

    def put_all(self, allocations: Iterable[Allocation]) -> None:
        for a in allocations:
            self.put(a)
