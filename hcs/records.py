"""Integrity of the ``hcs.io/assignment`` record (which pod holds which devices and bytes).

The record lives on the pod, and tenants can write their pods' annotations. Admission (the chart's
ValidatingAdmissionPolicy, or the webhook's ``/validate``) stops a tenant from writing it; this module
is the second line: every record carries an HMAC-SHA256 (annotation ``hcs.io/assignment-signature``)
made with a key only the allocator and the node agents hold (a chart-generated Secret mounted into
those two, never into tenant pods). The MAC binds the pod's uid, namespace and name, the node, and
every device (vendor, index, uuid) with its bytes and compute share, so a record can be neither
forged nor copied onto another pod. Readers also check the record against the pod it sits on
(uid — never empty —, namespace, name, node).

Key: the file named by ``$HCS_RECORD_KEY_FILE``, else ``/etc/hcs-record-key/key`` when that exists
(where the chart mounts it). Without a key (a developer's shell, unit tests) records are written
unsigned and read without the MAC check, and the process logs that once; the identity checks apply
in every mode. A record that fails a check is logged and counted in
``hcs_assignment_records_rejected_total{component,reason}`` (once per record and pod, however often it
is read); the caller then ignores it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from prometheus_client import Counter

from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
from hcs.errors import ConfigError

log = logging.getLogger(__name__)

ASSIGNMENT_ANNOTATION = "hcs.io/assignment"
SIGNATURE_ANNOTATION = "hcs.io/assignment-signature"
KEY_ENV = "HCS_RECORD_KEY_FILE"
DEFAULT_KEY_FILE = "/etc/hcs-record-key/key"
SCHEME = "hmac-sha256"
MIN_KEY_BYTES = 32

#: Not registered anywhere by default; the node agent's registry (and tests) register it.
REJECTED = Counter("hcs_assignment_records_rejected", "hcs.io/assignment records ignored, by reason.",
                   ("component", "reason"), registry=None)

class RecordError(ValueError):
    """A record that must not be trusted; ``reason`` is the metric label (short, fixed set)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical(msg: Any) -> bytes:
    """What the MAC covers: the binding fields of an ``hcs.allocator.v1.Assignment`` message."""
    body = [1, msg.pod.uid, msg.pod.namespace, msg.pod.name, msg.node,
            [[c.container, [[d.vendor, int(d.index), d.uuid, int(d.vram_bytes), int(d.tflops_milli)]
                            for d in c.devices]] for c in msg.containers]]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


def parse_record(text: str) -> Any:
    """The annotation text → ``hcs.allocator.v1.Assignment``; RecordError when it is not one."""
    if len(text) > 256 * 1024:
        raise RecordError("malformed", f"{ASSIGNMENT_ANNOTATION}: {len(text)} characters, more than any record")
    try:
        return json_format.Parse(text, pb.Assignment(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise RecordError("malformed", f"{ASSIGNMENT_ANNOTATION}: not an hcs.allocator.v1.Assignment ({exc})") from exc


@dataclass(frozen=True)
class PodIdentity:
    """The pod a record sits on, as the API server reports it."""

    uid: str
    namespace: str
    name: str
    node: str = ""  # spec.nodeName ("" while unbound)

    @classmethod
    def of(cls, pod: Any) -> PodIdentity:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        return cls(str(meta.get("uid") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or ""),
                   str(spec.get("nodeName") or ""))

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


class RecordKey:
    """Signs and checks records. ``key=None``: development mode (no MAC, identity checks only)."""

    def __init__(self, key: bytes | None, source: str = "") -> None:
        if key is not None and len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"assignment record key {source or '(given)'}: {len(key)} bytes; use at least "
                              f"{MIN_KEY_BYTES} random bytes (the chart generates 64)")
        self._key = key
        self.source = source

    @property
    def enforced(self) -> bool:
        return self._key is not None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RecordKey:
        try:
            data = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"assignment record key {path}: {exc.strerror or exc}; mount the chart's "
                              f"record-key Secret there or unset {KEY_ENV}") from exc
        return cls(data, str(path))

    @classmethod
    def from_env(cls) -> RecordKey:
        """``$HCS_RECORD_KEY_FILE`` (must exist), else the chart's mount point when present, else no key."""
        named = os.environ.get(KEY_ENV, "")
        if named:
            return cls.load(named)
        if Path(DEFAULT_KEY_FILE).is_file():
            return cls.load(DEFAULT_KEY_FILE)
        _warn_unsigned_once()
        return cls(None)

    # ------------------------------------------------------------------ signing
    def sign_message(self, msg: Any) -> str:
        """The signature annotation's value for a record ("" without a key)."""
        if self._key is None:
            return ""
        mac = hmac.new(self._key, canonical(msg), hashlib.sha256).digest()
        return f"{SCHEME}:{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def sign(self, text: str) -> str:
        return self.sign_message(parse_record(text))

    def annotations(self, text: str | None) -> dict[str, str | None]:
        """Both annotations for a merge patch (``None`` removes them)."""
        if text is None:
            return {ASSIGNMENT_ANNOTATION: None, SIGNATURE_ANNOTATION: None}
        return {ASSIGNMENT_ANNOTATION: text, SIGNATURE_ANNOTATION: self.sign(text) or None}

    # ------------------------------------------------------------------ checking
    def check(self, text: str, signature: str | None, pod: PodIdentity, *, node: str = "",
              component: str = "") -> Any:
        """The record parsed, after every check; RecordError (logged and counted) when one fails.

        ``node``: the node the record must name (the agent passes its own); else the pod's
        ``spec.nodeName`` when bound, else any non-empty node.
        """
        try:
            msg = parse_record(text)
            self._check(msg, signature, pod, node)
        except RecordError as exc:
            if _first_rejection(component, pod, text, signature):  # once per record, not per list
                REJECTED.labels(component or "unknown", exc.reason).inc()
                log.warning("pod %s: %s record ignored: %s", pod.ref, ASSIGNMENT_ANNOTATION, exc)
            raise
        return msg

    def _check(self, msg: Any, signature: str | None, pod: PodIdentity, node: str) -> None:
        if not msg.pod.uid or not pod.uid:
            raise RecordError("uid", "the record names no pod uid; only records bound to one pod are trusted")
        if msg.pod.uid != pod.uid:
            raise RecordError("uid", f"the record is for pod uid {msg.pod.uid}, not this pod's {pod.uid}")
        if (msg.pod.namespace, msg.pod.name) != (pod.namespace, pod.name):
            raise RecordError("pod", f"the record is for pod {msg.pod.namespace}/{msg.pod.name}")
        want = node or pod.node
        if not msg.node or (want and msg.node != want):
            raise RecordError("node", f"the record is for node {msg.node or '(none)'}, not {want or 'a node'}")
        if self._key is None:
            return
        if not signature:
            raise RecordError("unsigned", f"no {SIGNATURE_ANNOTATION}; only the allocator and node agents "
                              "can sign records")
        scheme, _, value = signature.partition(":")
        if scheme != SCHEME:
            raise RecordError("signature", f"{SIGNATURE_ANNOTATION}: unknown scheme {scheme[:20]!r}")
        expected = self.sign_message(msg).partition(":")[2]
        if not hmac.compare_digest(expected.encode(), value.strip().encode()):
            raise RecordError("signature", f"{SIGNATURE_ANNOTATION} does not match the record (forged or "
                              "changed after the allocator wrote it)")


_warned = threading.Event()
_rejected: OrderedDict[str, None] = OrderedDict()
_rejected_lock = threading.Lock()


def _first_rejection(component: str, pod: PodIdentity, text: str, signature: str | None) -> bool:
    """True the first time this component rejects this record on this pod (readers re-list often)."""
    digest = hashlib.sha256(f"{text}\0{signature or ''}".encode()).hexdigest()[:24]
    key = f"{component}|{pod.uid}|{pod.namespace}/{pod.name}|{pod.node}|{digest}"
    with _rejected_lock:
        if key in _rejected:
            _rejected.move_to_end(key)
            return False
        _rejected[key] = None
        while len(_rejected) > 4096:
            _rejected.popitem(last=False)
    return True


def _warn_unsigned_once() -> None:
    if not _warned.is_set():
        _warned.set()
        log.warning("no assignment record key (%s unset, %s absent): %s records are neither signed nor "
                    "MAC-checked; development only", KEY_ENV, DEFAULT_KEY_FILE, ASSIGNMENT_ANNOTATION)
