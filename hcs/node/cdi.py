"""CDI spec files for slots whose owner is resolved at PreStartContainer (containerd reads them at
CreateContainer). One spec file per slot, kind ``ai.compute/slot``, device name = slot ID."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from hcs.fileio import atomic_write
from hcs.node.dra.injection import ContainerEdits

log = logging.getLogger(__name__)

#: Emit the minimum version the spec needs: deviceNodes[].hostPath needs 0.5.0, annotations 0.6.0.
CDI_VERSION = "0.5.0"
CDI_VERSION_ANNOTATIONS = "0.6.0"


def spec_path(cdi_dir: Path, kind: str, slot: str) -> Path:
    vendor, cls = kind.split("/", 1)
    return cdi_dir / f"{vendor}-{cls}-{slot}.json"


def qualified_name(kind: str, slot: str) -> str:
    return f"{kind}={slot}"


def spec_for(kind: str, slot: str, edits: ContainerEdits, annotations: dict[str, str]) -> dict[str, Any]:
    container_edits: dict[str, Any] = {"env": [f"{k}={v}" for k, v in edits.env]}
    if edits.device_nodes:
        container_edits["deviceNodes"] = [
            {"path": n.path, "hostPath": n.source, "permissions": n.permissions}
            for n in edits.device_nodes
        ]
    if edits.mounts:
        container_edits["mounts"] = [
            {"hostPath": m.host_path, "containerPath": m.container_path, "type": "bind",
             "options": ["ro" if m.read_only else "rw", "rbind", "nosuid"]}
            for m in edits.mounts
        ]
    spec: dict[str, Any] = {
        "cdiVersion": CDI_VERSION_ANNOTATIONS if annotations else CDI_VERSION,
        "kind": kind,
        "devices": [{"name": slot, "containerEdits": container_edits}],
    }
    if annotations:
        spec["annotations"] = annotations
    return spec


def write_spec(cdi_dir: Path, kind: str, slot: str, edits: ContainerEdits, annotations: dict[str, str]) -> Path:
    path = spec_path(cdi_dir, kind, slot)
    atomic_write(path, json.dumps(spec_for(kind, slot, edits, annotations), indent=1, sort_keys=True))
    return path


def remove_spec(cdi_dir: Path, kind: str, slot: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        spec_path(cdi_dir, kind, slot).unlink()
