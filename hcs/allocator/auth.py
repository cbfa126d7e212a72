"""Who may call the allocator's gRPC API: authentication, authorisation, transport credentials.

Callers send a Kubernetes ServiceAccount token as gRPC metadata ``authorization: Bearer <token>``;
the token is a bound, projected token for the audience ``hcs-allocator`` (the chart mounts one into
the node agents and the webhook). The allocator checks it with a TokenReview restricted to that
audience, then authorises the call:

* every verb is a SubjectAccessReview on a virtual resource of the API group ``allocator.hcs.io``
  (:data:`VERBS`), so RBAC decides who may call what (the chart binds the node agents to the
  ``nodeassignments`` verbs and the webhook to ``capacity``; operators get a ClusterRole to bind);
* a **node agent** (a user in ``nodeAgentUsers``, by default the chart's node-agent ServiceAccount)
  is restricted to its own node, like the API server's NodeRestriction: its token must be bound to a
  pod (the TokenReview then carries the pod's node in ``authentication.kubernetes.io/node-name``),
  it may only use the node verbs, and only for that node.

TokenReview and SubjectAccessReview answers are cached (TTL, bounded LRU) so the hot path (the node
agent's GetNodeAssignments on each Allocate) costs a dictionary lookup, not an API call. A token's
cached answer never outlives the token (its ``exp``).

Transport: TCP listeners serve TLS (cert and key files, re-read when they change); ``unix://``
listeners use gRPC local credentials (the socket's file mode guards it; tokens are still required).
``--insecure-dev`` turns all of this off (plaintext, no caller identity) and logs a warning.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc

from hcs.errors import ConfigError
from hcs.kube import KubeError, KubeRest

log = logging.getLogger(__name__)

DEFAULT_AUDIENCE = "hcs-allocator"
API_GROUP = "allocator.hcs.io"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


@dataclass(frozen=True)
class Verb:
    """One RPC as an RBAC request: ``verb`` on ``resource`` of :data:`API_GROUP`."""

    rpc: str
    resource: str
    verb: str
    node_scoped: bool  # a node agent may call it (for its own node only)


VERBS: dict[str, Verb] = {v.rpc: v for v in (
    Verb("GetNodeAssignments", "nodeassignments", "get", True),
    Verb("Confirm", "nodeassignments", "update", True),
    Verb("Release", "nodeassignments", "delete", True),
    Verb("Reserve", "assignments", "create", False),
    Verb("Explain", "placements", "get", False),
    Verb("GetCapacity", "capacity", "get", False),
)}


@dataclass(frozen=True)
class Caller:
    """An authenticated caller, as the TokenReview described it."""

    user: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def node(self) -> str:
        """The node of the pod the token is bound to ("" for a token not bound to a scheduled pod)."""
        for key, values in self.extra:
            if key == NODE_NAME_EXTRA and values:
                return values[0]
        return ""

    def describe(self) -> str:
        pod = next((v[0] for k, v in self.extra if k == POD_NAME_EXTRA and v), "")
        where = f" (pod {pod} on node {self.node})" if pod or self.node else ""
        return f"{self.user}{where}"


class Denied(Exception):
    """The call is refused; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class CallAuthorizer(Protocol):
    """What :class:`~hcs.allocator.service.AllocatorService` asks before it acts."""

    def authorize(self, metadata: Sequence[tuple[str, Any]], rpc: str, node: str | None) -> Caller | None:
        """The caller, or raise :class:`Denied`. ``node``: the node the call acts on (None: no one node)."""
        ...


class AllowAll:
    """``--insecure-dev`` and in-process tests: no caller identity, everything allowed."""

    def authorize(self, metadata: Sequence[tuple[str, Any]], rpc: str, node: str | None) -> Caller | None:
        return None


K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A thread-safe LRU of at most ``size`` entries, each with its own expiry (monotonic seconds)."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = max(1, size)
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            if hit[0] <= self._clock():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return hit[1]

    def put(self, key: K, value: V, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        with self._lock:
            self._data[key] = (self._clock() + ttl_s, value)
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def token_expiry(token: str) -> float | None:
    """The JWT's ``exp`` (unix seconds), read without verifying (only to bound the cache lifetime)."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = payload.get("exp") if isinstance(payload, dict) else None
        return float(exp) if isinstance(exp, int | float) else None
    except (ValueError, UnicodeDecodeError):
        return None


def bearer_token(metadata: Sequence[tuple[str, Any]]) -> str:
    """The token of the ``authorization: Bearer`` metadata entry; :class:`Denied` when absent or malformed."""
    for key, value in metadata:
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or len(token) > 16384:
                raise Denied(grpc.StatusCode.UNAUTHENTICATED,
                             "malformed authorization metadata: expected 'Bearer <ServiceAccount token>'")
            return token
    raise Denied(grpc.StatusCode.UNAUTHENTICATED,
                 "no caller identity: send 'authorization: Bearer <token>' with a ServiceAccount token for the "
                 "audience of this allocator (a projected serviceAccountToken volume)")


class KubeAuthorizer:
    """TokenReview (audience-checked) + SubjectAccessReview + node restriction, all cached."""

    def __init__(self, rest: KubeRest, *, audience: str = DEFAULT_AUDIENCE, node_agent_users: Sequence[str] = (),
                 ttl_s: float = 60.0, denied_ttl_s: float = 10.0, cache_size: int = 4096,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.rest = rest
        self.audience = audience
        self.node_agent_users = frozenset(node_agent_users)
        self.ttl_s = ttl_s
        self.denied_ttl_s = denied_ttl_s
        self._wall = wall
        self._tokens: TTLCache[bytes, Caller | str] = TTLCache(cache_size, clock)  # str: why refused
        self._access: TTLCache[tuple[Any, ...], str] = TTLCache(cache_size, clock)  # "" allowed, else why not
        self.reviews = 0  # API calls made (TokenReview + SubjectAccessReview), for tests and the bench

    def _review(self, api_version: str, kind: str, plural: str, spec: dict[str, Any], what: str) -> dict[str, Any]:
        """POST one review object; its ``status``. An API server that does not answer: UNAVAILABLE."""
        body = {"apiVersion": api_version, "kind": kind, "spec": spec}
        try:
            self.reviews += 1
            out = self.rest.request("POST", f"/apis/{api_version}/{plural}", body=body)
        except KubeError as exc:
            raise Denied(grpc.StatusCode.UNAVAILABLE, f"cannot {what} now ({exc}); retry") from exc
        status: dict[str, Any] = out.get("status") or {}
        return status

    # ----------------------------------------------------------------- authentication

    def authenticate(self, token: str) -> Caller:
        key = hashlib.sha256(token.encode()).digest()
        hit = self._tokens.get(key)
        if hit is None:
            hit, ttl = self._review_token(token)
            self._tokens.put(key, hit, ttl)
        if isinstance(hit, str):
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, hit)
        return hit

    def _review_token(self, token: str) -> tuple[Caller | str, float]:
        status = self._review("authentication.k8s.io/v1", "TokenReview", "tokenreviews",
                              {"token": token, "audiences": [self.audience]}, "verify the caller's token")
        if not status.get("authenticated"):
            why = str(status.get("error") or "token not valid")[:200]
            return (f"token refused by the API server for audience {self.audience!r}: {why}", self.denied_ttl_s)
        if self.audience not in (status.get("audiences") or []):
            return (f"token is not for audience {self.audience!r}", self.denied_ttl_s)
        user = status.get("user") or {}
        extra = tuple(sorted((str(k), tuple(str(x) for x in v)) for k, v in (user.get("extra") or {}).items()
                             if isinstance(v, list)))
        caller = Caller(str(user.get("username") or ""), str(user.get("uid") or ""),
                        tuple(str(g) for g in user.get("groups") or ()), extra)
        ttl = self.ttl_s
        exp = token_expiry(token)
        if exp is not None:
            ttl = min(ttl, exp - self._wall())
        return caller, ttl

    # ----------------------------------------------------------------- authorisation

    def authorize(self, metadata: Sequence[tuple[str, Any]], rpc: str, node: str | None) -> Caller:
        verb = VERBS.get(rpc)
        if verb is None:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"{rpc}: no authorisation rule for this method")
        caller = self.authenticate(bearer_token(metadata))
        if caller.user in self.node_agent_users:
            if not verb.node_scoped:
                raise self._deny(caller, rpc, "a node agent may only read, confirm and release its own node's "
                                              "assignments")
            if not caller.node:
                raise self._deny(caller, rpc, "the node agent's token is not bound to a pod on a node "
                                              f"(no {NODE_NAME_EXTRA}); mount a projected serviceAccountToken")
            if node is not None and node != caller.node:
                raise self._deny(caller, rpc, f"a node agent on {caller.node} may not act on node {node}")
        why = self._access_review(caller, verb, node)
        if why:
            raise self._deny(caller, rpc, why)
        return caller

    @staticmethod
    def _deny(caller: Caller, rpc: str, why: str) -> Denied:
        log.warning("allocator API: %s refused for %s: %s", rpc, caller.describe(), why)
        return Denied(grpc.StatusCode.PERMISSION_DENIED, f"{rpc} refused for {caller.user}: {why}")

    def _access_review(self, caller: Caller, verb: Verb, node: str | None) -> str:
        key = (caller.user, caller.uid, caller.groups, caller.extra, verb.resource, verb.verb, node)
        hit = self._access.get(key)
        if hit is not None:
            return hit
        attrs = {"group": API_GROUP, "resource": verb.resource, "verb": verb.verb}
        if node:
            attrs["name"] = node
        spec: dict[str, Any] = {"user": caller.user, "groups": list(caller.groups), "resourceAttributes": attrs}
        if caller.uid:
            spec["uid"] = caller.uid
        if caller.extra:
            spec["extra"] = {k: list(v) for k, v in caller.extra}
        status = self._review("authorization.k8s.io/v1", "SubjectAccessReview", "subjectaccessreviews", spec,
                              "authorise the call")
        if status.get("allowed") and not status.get("denied"):
            self._access.put(key, "", self.ttl_s)
            return ""
        what = f"{verb.verb} {verb.resource}.{API_GROUP}" + (f" {node!r}" if node else "")
        why = f"RBAC does not allow {what}"
        self._access.put(key, why, self.denied_ttl_s)
        return why


# --------------------------------------------------------------------------- server transport


class _CertReloader:
    """``grpc.dynamic_ssl_server_credentials`` fetcher: new files are served from the next handshake."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._stamp = self._mtimes()

    def _mtimes(self) -> tuple[float, float]:
        return os.stat(self.cert_file).st_mtime, os.stat(self.key_file).st_mtime

    def config(self) -> Any:
        key, cert = Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes()
        return grpc.ssl_server_certificate_configuration([(key, cert)])

    def __call__(self) -> Any:
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return None
            cfg = self.config()
        except OSError as exc:  # mid-rotation: keep serving the old pair
            log.warning("allocator TLS: cannot re-read %s / %s (%s); keeping the current certificate",
                        self.cert_file, self.key_file, exc)
            return None
        self._stamp = stamp
        log.info("allocator TLS: serving the renewed certificate from %s", self.cert_file)
        return cfg


def server_credentials(address: str, cert_file: str, key_file: str) -> grpc.ServerCredentials:
    """TLS from the files for ``host:port``; local (UDS) credentials for ``unix://`` addresses."""
    if address.startswith("unix:"):
        return grpc.local_server_credentials(grpc.LocalConnectionType.UDS)
    if not cert_file or not key_file:
        raise ConfigError(f"allocator gRPC {address}: TLS needs allocator.tls.certFile and allocator.tls.keyFile "
                          "(the chart mounts them from the allocator's TLS Secret); for a local plaintext "
                          "set-up pass --insecure-dev")
    for f in (cert_file, key_file):
        if not os.path.isfile(f):
            raise ConfigError(f"allocator TLS file {f} does not exist; check allocator.tls in the config")
    reloader = _CertReloader(cert_file, key_file)
    return grpc.dynamic_ssl_server_credentials(reloader.config(), reloader, require_client_authentication=False)
