"""The DRA driver's checkpoint: which claims this node prepared, written atomically with a checksum.

A claim is recorded ``PrepareCompleted`` (durably) after its files are written; files without an
entry after a crash are swept by the caller's recovery. ``PrepareStarted`` entries (written by
earlier versions before any file) are still read and cleaned up. A corrupt file is moved aside and
reported; the caller rebuilds from the CDI specs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcs.fileio import atomic_write

log = logging.getLogger(__name__)

VERSION = 1
STARTED = "PrepareStarted"
COMPLETED = "PrepareCompleted"


class CheckpointCorrupt(Exception):
    pass


@dataclass(frozen=True)
class PreparedDevice:
    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]
    share_id: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PreparedDevice:
        return cls(
            request_names=tuple(d.get("requestNames", ())),
            pool_name=str(d["poolName"]),
            device_name=str(d["deviceName"]),
            cdi_device_ids=tuple(d.get("cdiDeviceIds", ())),
            share_id=str(d.get("shareId", "")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "requestNames": list(self.request_names),
            "poolName": self.pool_name,
            "deviceName": self.device_name,
            "cdiDeviceIds": list(self.cdi_device_ids),
            "shareId": self.share_id,
        }


@dataclass(frozen=True)
class ClaimEntry:
    uid: str
    namespace: str
    name: str
    state: str
    cdi_spec: str = ""
    claim_dir: str = ""
    devices: tuple[PreparedDevice, ...] = ()
    prepared_at: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClaimEntry:
        return cls(
            uid=str(d["uid"]),
            namespace=str(d["namespace"]),
            name=str(d["name"]),
            state=str(d["state"]),
            cdi_spec=str(d.get("cdiSpec", "")),
            claim_dir=str(d.get("claimDir", "")),
            devices=tuple(PreparedDevice.from_json(x) for x in d.get("devices", [])),
            prepared_at=float(d.get("preparedAt", 0.0)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "namespace": self.namespace,
            "name": self.name,
            "state": self.state,
            "cdiSpec": self.cdi_spec,
            "claimDir": self.claim_dir,
            "devices": [x.to_json() for x in self.devices],
            "preparedAt": self.prepared_at,
        }


def _checksum(claims: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load(path: Path) -> dict[str, ClaimEntry]:
    """Claims from ``path``; empty when the file does not exist; CheckpointCorrupt when unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    return parse(raw, path)


def parse(raw: bytes, path: Path) -> dict[str, ClaimEntry]:
    """Claims from a checkpoint's bytes (``path`` only names it in errors); CheckpointCorrupt when invalid."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise CheckpointCorrupt(f"{path}: unknown format or version {data.get('version')!r}")
        claims = data["claims"]
        if data.get("checksum") != _checksum(claims):
            raise CheckpointCorrupt(f"{path}: checksum mismatch (file truncated or edited)")
        return {uid: ClaimEntry.from_json(e) for uid, e in claims.items()}
    except CheckpointCorrupt:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointCorrupt(f"{path}: not a valid checkpoint ({exc})") from exc


def save(path: Path, claims: dict[str, ClaimEntry], *, durable: bool = True) -> None:
    """Write atomically; ``durable`` also fsyncs (needed only where losing the write would lose a
    prepared claim; removals are safe without: recovery sweeps leftovers)."""
    body = {uid: e.to_json() for uid, e in claims.items()}
    # serialize once: the checksummed canonical text is also what the file embeds
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    text = f'{{"version":{VERSION},"checksum":"{digest}","claims":{canonical}}}'
    atomic_write(path, text, durable=durable, mode=0o600)


def quarantine(path: Path) -> Path:
    """Move a corrupt checkpoint aside (kept for debugging) and return its new path."""
    dest = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    path.replace(dest)
    return dest
