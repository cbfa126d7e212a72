"""A watch-fed cache of the ResourceClaims allocated to this node's devices.

Why: reading the claim from the API server was most of a NodePrepareResources call (a GET per
claim, ~10 ms on a busy control plane). The cache lists and then watches ``resource.k8s.io/v1``
resourceclaims in all namespaces and keeps only claims with an allocation result of our driver in
our pool (pool = node name), trimmed to what prepare reads, so memory stays proportional to this
node's claims.

It is an optimisation only; correctness never depends on it. ``lookup`` answers only while the
watch is connected (``synced``) and only for the exact UID the kubelet asked for; anything else
(miss, other UID, not synced) makes the caller GET the claim as before. When the watch breaks (API
server down, network), the content stays but is not served until the watch is back; an expired
resourceVersion (410 Gone) relists. The remaining staleness window is the watch delivery delay,
much shorter than the kubelet's own path from reading the claim to calling NodePrepareResources.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from hcs.kube import RESOURCE_API, KubeError, KubeRest
from hcs.node.dra.metadata import POD_CLAIM_ANNOTATION

log = logging.getLogger(__name__)

CLAIMS = f"{RESOURCE_API}/resourceclaims"

_META_KEYS = ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
_STATUS_KEYS = ("allocation",)


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist."""


def ours(claim: Any, driver: str, pool: str) -> bool:
    """True when ``claim`` has an allocation result of ``driver`` in ``pool`` (tolerates any shape)."""
    try:
        results = claim["status"]["allocation"]["devices"]["results"]
        return any(isinstance(r, dict) and r.get("driver") == driver and r.get("pool") == pool for r in results)
    except (KeyError, TypeError):
        return False


def trim(claim: dict[str, Any]) -> dict[str, Any]:
    """Only what prepare and the claim-status patch read (drops managedFields, spec, conditions)."""
    meta = claim.get("metadata") or {}
    status = claim.get("status") or {}
    kept = {k: meta[k] for k in _META_KEYS if k in meta}
    annotations = meta.get("annotations") or {}
    if POD_CLAIM_ANNOTATION in annotations:  # device metadata paths of template-generated claims
        kept["annotations"] = {POD_CLAIM_ANNOTATION: annotations[POD_CLAIM_ANNOTATION]}
    return {
        "apiVersion": claim.get("apiVersion", "resource.k8s.io/v1"),
        "kind": "ResourceClaim",
        "metadata": kept,
        "status": {k: status[k] for k in _STATUS_KEYS if k in status},
    }


class ClaimCache:
    """List+watch of the claims allocated on this node. Thread-safe; never raises from its thread."""

    def __init__(
        self,
        rest: KubeRest,
        driver: str,
        node: str,
        *,
        watch_timeout_s: float = 60.0,
        page_size: int = 500,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.rest = rest
        self.driver = driver
        self.node = node
        self.watch_timeout_s = watch_timeout_s
        self.page_size = page_size
        self.max_backoff_s = max_backoff_s
        self._lock = threading.Lock()
        self._claims: dict[tuple[str, str], dict[str, Any]] = {}
        self._rv = ""
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None
        self._resume_rv: str | None = None
        self._reconnect_requested = False
        self._events_at_expiry = -1
        # counters (tests, debugging)
        self.hits = 0
        self.misses = 0
        self.relists = 0
        self.events = 0
        self.last_error = ""

    # ----------------------------------------------------------------- public
    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def resource_version(self) -> str:
        return self._rv

    def __len__(self) -> int:
        return len(self._claims)

    def wait_synced(self, timeout_s: float) -> bool:
        return self._synced.wait(timeout_s)

    def lookup(self, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
        """The cached claim when the cache is synced and holds exactly this UID; else None (GET it)."""
        obj = self._claims.get((namespace, name)) if self._synced.is_set() else None
        if obj is None or obj["metadata"].get("uid") != uid:
            self.misses += 1
            return None
        self.hits += 1
        return obj

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dra-claim-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._close_stream()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._synced.clear()

    def reconnect(self, resource_version: str | None = None) -> None:
        """Drop the current watch stream; the loop resumes from ``resource_version`` (default: the
        last one seen). Lets tests and operators exercise the resume and 410 paths."""
        with self._lock:
            self._resume_rv = resource_version
            self._reconnect_requested = True  # a stream opening right now closes itself (_keep_resp)
        self._close_stream()

    # --------------------------------------------------------------- internals
    def _close_stream(self) -> None:
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):  # best effort on a socket the cache thread reads
                resp.shutdown()

    def _keep_resp(self, resp: Any) -> None:
        with self._lock:
            self._resp = resp
            pending = self._reconnect_requested
        if pending:  # reconnect() came after this stream chose its resourceVersion
            self._close_stream()

    def _run(self) -> None:
        backoff = 0.2
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self.relist()
                    need_list = False
                self._watch()  # returns when the server ends the stream (its timeout): resume at once
                backoff = 0.2
            except _Expired as exc:
                # resume point too old: the cache may have missed events; stop serving until relisted
                self._synced.clear()
                need_list = True
                log.info("claim watch: %s; relisting", exc)
                if self.events == self._events_at_expiry:  # expired again without progress: do not spin
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                self._events_at_expiry = self.events
            except Exception as exc:  # noqa: BLE001 - API down, TLS, bad JSON: keep content, stop serving it
                if self._stop.is_set():
                    break
                # once per distinct problem (an RBAC or TLS error would otherwise repeat every 10 s)
                level = logging.WARNING if self._synced.is_set() or str(exc) != self.last_error else logging.DEBUG
                log.log(level, "claim cache not usable (%s); prepare reads claims with GETs until it is back", exc)
                self.last_error = str(exc)
                self._synced.clear()
                need_list = True  # events may have been missed while disconnected
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            finally:
                self._resp = None
        self._synced.clear()

    def relist(self) -> None:
        """Read every claim (paged) and replace the content at once; the list's RV starts the watch.

        The cache thread calls it at start and after a broken or expired watch; raises KubeError."""
        fresh: dict[tuple[str, str], dict[str, Any]] = {}
        query = {"limit": str(self.page_size)}
        while True:
            page = self.rest.request("GET", CLAIMS, query=query)
            for c in page.get("items") or []:
                self._keep(fresh, c)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
            query = {"limit": str(self.page_size), "continue": token}
        with self._lock:
            self._claims = fresh
            self._rv = str(meta.get("resourceVersion") or "")
        self.relists += 1
        self._synced.set()
        log.debug("claim cache: listed %d claim(s) of this node at resourceVersion %s", len(fresh), self._rv)

    def _keep(self, into: dict[tuple[str, str], dict[str, Any]], claim: Any) -> None:
        if not isinstance(claim, dict):
            return
        meta = claim.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if ours(claim, self.driver, self.node):
            into[key] = trim(claim)
        else:
            into.pop(key, None)

    def _watch(self) -> None:
        with self._lock:  # a new stream satisfies any pending reconnect()
            rv, self._resume_rv = (self._resume_rv or self._rv), None
            self._reconnect_requested = False
        query = {"resourceVersion": rv, "allowWatchBookmarks": "true"}
        try:
            for event in self.rest.watch(CLAIMS, query=query, timeout_s=self.watch_timeout_s,
                                         on_open=self._keep_resp):
                if self._stop.is_set():
                    return
                self._apply(event)
        except _Expired:
            raise
        except KubeError as exc:
            if exc.status == 410:
                raise _Expired(str(exc)) from exc
            if not self._reconnect_requested:
                raise
        except Exception:
            if not self._reconnect_requested:  # a stream we closed ourselves ends with a read error
                raise

    def _apply(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        etype = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            return
        if etype == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Expired(str(obj.get("message") or "resourceVersion expired"))
            raise KubeError(int(code) if isinstance(code, int) else 0, f"claim watch error: {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        self.events += 1
        with self._lock:
            if etype in ("ADDED", "MODIFIED"):
                self._keep(self._claims, obj)
            elif etype == "DELETED":
                meta = obj.get("metadata") or {}
                self._claims.pop((str(meta.get("namespace", "")), str(meta.get("name", ""))), None)
            if rv:  # BOOKMARK carries only the resourceVersion
                self._rv = str(rv)
