"""CDI spec files (container-device-interface SPEC.md), the one writer for both request paths.

* DRA: one transient spec per prepared claim (``spec_file_name``: ``<vendor>-<class>_<claim uid>.json``),
  one CDI device per allocated request.
* Device plugin: one spec per slot whose owner is resolved at PreStartContainer (containerd reads it at
  CreateContainer): ``<vendor>-<class>-<slot>.json``, kind ``ai.compute/slot``, device name = slot ID.

Both go through ``build_spec``: one shape, one version rule, one mount option set. The spec declares
the minimum ``cdiVersion`` its features need (loaders reject specs that use a feature newer than the
declared version, and old loaders reject versions they do not know: the lowest works with the most
runtimes). Device nodes name ``hostPath`` only when it differs from the container path (it is a 0.5.0
field). Mounts are ``bind`` mounts with ``MOUNT_OPTIONS`` (see there). Files are written atomically
(hidden temp + rename), so the runtime never reads half a spec.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcs.devices.injection import ContainerEdits
from hcs.fileio import atomic_write

log = logging.getLogger(__name__)

#: annotation on each spec: the claim it belongs to (lets us rebuild a lost checkpoint)
CLAIM_ANNOTATION = "hcs.io/claim"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0")

#: Options of every CDI mount after ``ro``/``rw`` (the set ``nvidia-ctk cdi generate`` writes too).
#: ``bind``, not ``rbind``: what we mount (libraries, tools, the driver tree, quota state) has no mounts
#: beneath it, and a recursive bind would carry whatever the host mounts there later into the container;
#: ``nosuid`` and ``nodev``: nothing mounted needs set-uid or device files (device nodes come only
#: through ``deviceNodes``). No ``noexec``: libraries are mapped executable. containerd 2 (runc) takes
#: them as they are into the OCI spec; the local cluster's pods run with them (tests/dra).
MOUNT_OPTIONS = ("nosuid", "nodev", "bind")


@dataclass(frozen=True)
class CdiDevice:
    name: str
    edits: ContainerEdits


def spec_file_name(vendor: str, cls: str, claim_uid: str) -> str:
    """The transient spec name the Go CDI library would generate: ``<vendor>-<class>_<uid>.json``."""
    return f"{vendor}-{cls}_{claim_uid}.json"


def qualified_name(kind: str, device: str) -> str:
    return f"{kind}={device}"


def _edits_json(edits: ContainerEdits) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if edits.env:
        out["env"] = edits.env_list()
    if edits.device_nodes:
        nodes = []
        for n in edits.device_nodes:
            node: dict[str, Any] = {"path": n.path, "permissions": n.permissions}
            if n.host_path and n.host_path != n.path:
                node["hostPath"] = n.host_path
            nodes.append(node)
        out["deviceNodes"] = nodes
    if edits.mounts:
        out["mounts"] = [
            {
                "hostPath": m.host_path,
                "containerPath": m.container_path,
                "type": "bind",
                "options": ["ro" if m.read_only else "rw", *MOUNT_OPTIONS],
            }
            for m in edits.mounts
        ]
    return out


def minimum_version(spec: Mapping[str, Any]) -> str:
    """The lowest cdiVersion that has every feature ``spec`` uses."""
    need = 0
    if spec.get("annotations") or any(d.get("annotations") for d in spec.get("devices", [])):
        need = max(need, 3)
    kind_class = str(spec.get("kind", "")).partition("/")[2]
    if "." in kind_class:
        need = max(need, 3)
    for dev in spec.get("devices", []):
        if dev["name"][:1].isdigit():
            need = max(need, 2)
        edits = dev.get("containerEdits", {})
        if any("hostPath" in n for n in edits.get("deviceNodes", [])):
            need = max(need, 2)
        if any("type" in m for m in edits.get("mounts", [])):
            need = max(need, 1)
    return _VERSIONS[need]


def build_spec(kind: str, devices: Sequence[CdiDevice], annotations: Mapping[str, str]) -> dict[str, Any]:
    if not devices:
        raise ValueError("a CDI spec needs at least one device")
    for d in devices:
        if not _NAME_OK.match(d.name):
            raise ValueError(f"CDI device name {d.name!r} has characters outside [A-Za-z0-9_.:-]")
    spec: dict[str, Any] = {
        "cdiVersion": "",
        "kind": kind,
        "annotations": dict(annotations),
        "devices": [{"name": d.name, "containerEdits": _edits_json(d.edits)} for d in devices],
    }
    spec["cdiVersion"] = minimum_version(spec)
    return spec


# ------------------------------------------------------------------ device-plugin slots
def spec_path(cdi_dir: Path, kind: str, slot: str) -> Path:
    """The device plugin's spec file for ``slot``: ``<vendor>-<class>-<slot>.json``."""
    vendor, cls = kind.split("/", 1)
    return cdi_dir / f"{vendor}-{cls}-{slot}.json"


def spec_for(kind: str, slot: str, edits: ContainerEdits, annotations: Mapping[str, str]) -> dict[str, Any]:
    """The spec of one slot: one device named after the slot."""
    return build_spec(kind, [CdiDevice(slot, edits)], annotations)


def write_slot_spec(cdi_dir: Path, kind: str, slot: str, edits: ContainerEdits,
                    annotations: Mapping[str, str]) -> Path:
    return write_spec(cdi_dir, spec_path(cdi_dir, kind, slot).name, spec_for(kind, slot, edits, annotations))


def remove_spec(cdi_dir: Path, kind: str, slot: str) -> None:
    remove(spec_path(cdi_dir, kind, slot))


# ------------------------------------------------------------------ files
def write_spec(cdi_dir: Path, file_name: str, spec: Mapping[str, Any]) -> Path:
    path = cdi_dir / file_name
    atomic_write(path, json.dumps(spec, sort_keys=True, separators=(",", ":")))
    return path


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        path.unlink()


def our_specs(cdi_dir: Path, vendor: str, cls: str) -> Iterable[Path]:
    """Spec files in ``cdi_dir`` that this driver wrote (by file-name prefix)."""
    prefix = f"{vendor}-{cls}_"
    try:
        entries = list(cdi_dir.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:  # not a directory, no permission: prepare will report it per claim
        log.warning("cannot list CDI dir %s: %s", cdi_dir, exc)
        return []
    return sorted(p for p in entries if p.name.startswith(prefix) and p.suffix == ".json")


def validate_spec(spec: Mapping[str, Any]) -> list[str]:
    """Structural checks a CDI loader makes; returns problems (empty = valid). Used by tests/tools."""
    problems: list[str] = []
    allowed_top = {"cdiVersion", "kind", "annotations", "devices", "containerEdits"}
    for k in spec:
        if k not in allowed_top:
            problems.append(f"unknown top-level field {k!r}")
    version = spec.get("cdiVersion")
    if version not in (*_VERSIONS, "0.7.0", "0.8.0", "1.0.0", "1.1.0"):
        problems.append(f"cdiVersion {version!r} is not a known version")
    elif version != minimum_version(spec):
        problems.append(f"cdiVersion {version} is not the minimum required {minimum_version(spec)}")
    kind = str(spec.get("kind", ""))
    vendor, _, cls = kind.partition("/")
    if not vendor or not cls or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", cls):
        problems.append(f"kind {kind!r} is not '<vendor>/<class>'")
    devices = spec.get("devices") or []
    if not devices:
        problems.append("no devices")
    names = set()
    edit_keys = {"env", "deviceNodes", "mounts", "hooks", "additionalGIDs", "intelRdt", "netDevices"}
    for d in devices:
        name = d.get("name", "")
        if not _NAME_OK.match(name):
            problems.append(f"device name {name!r} is invalid")
        if name in names:
            problems.append(f"device name {name!r} repeated")
        names.add(name)
        edits = d.get("containerEdits", {})
        for k in edits:
            if k not in edit_keys:
                problems.append(f"device {name}: unknown containerEdits field {k!r}")
        for e in edits.get("env", []):
            if "=" not in e:
                problems.append(f"device {name}: env entry {e!r} is not KEY=VALUE")
        for n in edits.get("deviceNodes", []):
            if not str(n.get("path", "")).startswith("/"):
                problems.append(f"device {name}: device node path {n.get('path')!r} is not absolute")
        for m in edits.get("mounts", []):
            if not str(m.get("hostPath", "")).startswith("/") or not str(m.get("containerPath", "")).startswith("/"):
                problems.append(f"device {name}: mount {m} needs absolute hostPath and containerPath")
    return problems
