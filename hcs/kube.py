"""Thin JSON-in/JSON-out access to the API server through a kubernetes ``ApiClient``.

The 37.x client is pydantic based: its typed methods validate and convert every body, which
costs milliseconds per 128-device ResourceSlice and hides fields the client does not know yet.
HCS components (node agent, DRA driver, allocator) speak the wire format (camelCase dicts, exactly
as in the API reference) and reuse the ApiClient only for its configuration: host, TLS, authentication.

:class:`Informer` is the one list+watch loop of the code base (the allocator's Nodes, ComputeNodes and
pods; the DRA driver's claim cache): list (paged), then watch from the list's resourceVersion with
bookmarks; a broken stream relists after a backoff, an expired resourceVersion (410 Gone) relists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

RESOURCE_API = "/apis/resource.k8s.io/v1"


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class KubeRest:
    def __init__(self, api_client: Any, *, timeout_s: float = 10.0) -> None:
        self.api_client = api_client
        self.timeout_s = timeout_s

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: Any = None,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            m, url, hdrs, b, _ = self.api_client.param_serialize(
                method=method,
                resource_path=path,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            return self.api_client.call_api(m, url, hdrs, b, None, _request_timeout=timeout or self.timeout_s)
        except Exception as exc:  # urllib3 connection errors, TLS errors
            raise KubeError(0, f"{method} {path}: API server unreachable: {exc}") from exc

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One call; ``timeout`` (seconds) overrides the client's for this call."""
        resp = self._send(method, path, query=query, body=body, content_type=content_type, timeout=timeout)
        data = resp.read()
        if not 200 <= resp.status < 300:
            message = data.decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(data).get("message", message)
            raise KubeError(resp.status, f"{method} {path}: HTTP {resp.status}: {message}")
        result: dict[str, Any] = json.loads(data) if data else {}
        return result

    def watch(
        self,
        path: str,
        *,
        query: Mapping[str, str],
        timeout_s: float = 60.0,
        on_open: Callable[[Any], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Watch events (``{"type": ..., "object": ...}``) until the server closes the stream.

        ``on_open`` receives the urllib3 response, so another thread can ``shutdown()`` it.
        """
        q = {**query, "watch": "true", "timeoutSeconds": str(int(timeout_s))}
        resp = self._send("GET", path, query=q, timeout=(5.0, timeout_s + 10.0))
        raw = resp.response
        if on_open is not None:
            on_open(raw)
        try:
            if not 200 <= resp.status < 300:
                raise KubeError(resp.status, f"watch {path}: HTTP {resp.status}: {raw.data[:300]!r}")
            buf = b""
            for chunk in raw.stream(amt=None, decode_content=False):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            raw.release_conn()


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist."""


def object_key(obj: Any) -> tuple[str, str]:
    """(namespace, name) of an object; empty strings for what is missing."""
    meta = (obj or {}).get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def rv_int(obj: Any) -> int:
    """An object's resourceVersion as an integer (an etcd revision); 0 when absent or not a number."""
    return _revision(((obj or {}).get("metadata") or {}).get("resourceVersion"))


def _revision(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


#: ``on_change(type, old, new)``
Change = Callable[[str, "dict[str, Any] | None", "dict[str, Any] | None"], None]


class WatchMetrics(Protocol):
    """Counters labelled by resource (prometheus_client ``Counter``s); the allocator's metrics are one."""

    relists: Any
    watch_events: Any


class Informer:
    """List+watch of one resource: a local copy keyed by (namespace, name), kept by one thread.

    ``trim(obj)`` is what the copy keeps of an object (default: all of it); ``None`` leaves the object
    out (an object that stops matching leaves the copy as if deleted). ``on_change(type, old, new)``
    runs in that thread for every change: ``ADDED`` / ``MODIFIED`` / ``DELETED`` from the watch, and
    after a relist ``SYNC`` (listed) or ``DELETED`` (gone meanwhile). ``on_synced()`` runs after each
    relist. resourceVersions are compared as integers (etcd revisions). Never raises from its thread.
    """

    def __init__(self, rest: KubeRest, path: str, resource: str, *, query: dict[str, str] | None = None,
                 trim: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
                 on_change: Change | None = None, on_synced: Callable[[], object] | None = None,
                 metrics: WatchMetrics | None = None, watch_timeout_s: float = 60.0, page_size: int = 500,
                 max_backoff_s: float = 5.0, thread_name: str = "", broken_hint: str = "") -> None:
        self.rest = rest
        self.path = path
        self.resource = resource
        self.query = dict(query or {})
        self.trim: Callable[[dict[str, Any]], dict[str, Any] | None] = trim or (lambda o: o)
        self.on_change = on_change
        self.on_synced = on_synced
        self.metrics = metrics
        self.watch_timeout_s = watch_timeout_s
        self.page_size = page_size
        self.max_backoff_s = max_backoff_s
        self.thread_name = thread_name or f"hcs-watch-{resource}"
        #: appended to the warning about a broken watch (what the owner does meanwhile)
        self.broken_hint = broken_hint
        self._lock = threading.Lock()
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.rv = 0
        self._synced = threading.Event()
        self.ever_synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None
        self._resume_rv: str | None = None
        self._reconnect_requested = False
        # counters (metrics, tests, debugging)
        self.relists = 0
        self.events = 0
        self.disconnects = 0
        self.expired = 0
        self.last_error = ""

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout_s: float) -> bool:
        return self._synced.wait(timeout_s)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.items.get((namespace, name))

    def values(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.items.values())

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._close_stream()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._synced.clear()

    def reconnect(self, resource_version: int | str | None = None) -> None:
        """Drop the watch stream; resume from ``resource_version`` (default: the last seen). A too old
        one makes the server answer 410 Gone, and the informer relists. For tests and operators."""
        with self._lock:
            self._resume_rv = None if resource_version is None else str(resource_version)
            self._reconnect_requested = True  # a stream opening right now closes itself (_keep_resp)
        self._close_stream()

    def _close_stream(self) -> None:
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):  # best effort on a socket the informer thread reads
                resp.shutdown()

    def _keep_resp(self, resp: Any) -> None:
        with self._lock:
            self._resp = resp
            pending = self._reconnect_requested
        if pending:  # reconnect() came after this stream chose its resourceVersion
            self._close_stream()

    def _notify(self, etype: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(etype, old, new)
        except Exception:  # one bad object never stops the watch
            log.exception("%s watch: handling %s %s failed", self.resource, etype, object_key(new or old))

    def _run(self) -> None:
        backoff = 0.2
        need_list = True
        events_at_expiry = -1
        while not self._stop.is_set():
            try:
                if need_list:
                    self.relist()
                    need_list = False
                self._watch()  # returns when the server ends the stream (its timeout): resume at once
                backoff = 0.2
            except WatchExpired as exc:
                # resume point too old: the copy may have missed events; not synced until relisted
                self._synced.clear()
                self.expired += 1
                need_list = True
                log.info("%s watch: %s; relisting", self.resource, exc)
                if self.events == events_at_expiry:  # expired again without progress: do not spin
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                events_at_expiry = self.events
            except Exception as exc:  # noqa: BLE001 - API down, TLS, bad JSON: relist once back
                if self._stop.is_set():
                    break
                self.disconnects += 1
                # once per distinct problem (an RBAC or TLS error would otherwise repeat every few s)
                level = logging.WARNING if self._synced.is_set() or str(exc) != self.last_error else logging.DEBUG
                log.log(level, "%s watch broken (%s); relisting in %.1fs%s", self.resource, exc, backoff,
                        self.broken_hint)
                self.last_error = str(exc)
                self._synced.clear()
                need_list = True  # events may have been missed while disconnected
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            finally:
                self._resp = None
        self._synced.clear()

    def relist(self) -> None:
        """Read every object (paged), replace the copy, report the differences; the list's
        resourceVersion starts the next watch. Raises KubeError."""
        fresh: dict[tuple[str, str], dict[str, Any]] = {}
        query = {**self.query, "limit": str(self.page_size)}
        while True:
            page = self.rest.request("GET", self.path, query=query)
            for obj in page.get("items") or []:
                kept = self.trim(obj) if isinstance(obj, dict) else None
                if kept is not None:
                    fresh[object_key(obj)] = kept
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
            query = {**self.query, "limit": str(self.page_size), "continue": token}
        with self._lock:
            old, self.items = self.items, fresh
            self.rv = _revision(meta.get("resourceVersion"))
        self.relists += 1
        if self.metrics is not None:
            self.metrics.relists.labels(self.resource).inc()
        for k, obj in fresh.items():
            self._notify("SYNC", old.get(k), obj)
        for k, obj in old.items():
            if k not in fresh:
                self._notify("DELETED", obj, None)
        self._synced.set()
        self.ever_synced.set()
        log.debug("%s: listed %d object(s) at resourceVersion %s", self.resource, len(fresh), self.rv)
        if self.on_synced is not None:
            try:
                self.on_synced()
            except Exception:
                log.exception("%s: reconciliation after relist failed", self.resource)

    def _watch(self) -> None:
        with self._lock:  # a new stream satisfies any pending reconnect()
            rv, self._resume_rv = (self._resume_rv or str(self.rv)), None
            self._reconnect_requested = False
        query = {**self.query, "resourceVersion": rv, "allowWatchBookmarks": "true"}
        try:
            for event in self.rest.watch(self.path, query=query, timeout_s=self.watch_timeout_s,
                                         on_open=self._keep_resp):
                if self._stop.is_set():
                    return
                self._apply(event)
        except WatchExpired:
            raise
        except KubeError as exc:
            if exc.status == 410:
                raise WatchExpired(str(exc)) from exc
            if not self._reconnect_requested:
                raise
        except Exception:
            if not self._reconnect_requested:  # a stream we closed ourselves ends with a read error
                raise
        if self._reconnect_requested:
            self.disconnects += 1

    def _apply(self, event: Any) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            return
        etype, obj = str(event.get("type")), event["object"]
        if etype == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise WatchExpired(str(obj.get("message") or "resourceVersion expired"))
            raise KubeError(int(code) if isinstance(code, int) else 0,
                            f"{self.resource} watch error: {obj.get('message')}")
        rv = rv_int(obj)
        if etype == "BOOKMARK":  # carries only the resourceVersion
            self.rv = max(self.rv, rv)
            return
        key = object_key(obj)
        self.events += 1
        if self.metrics is not None:
            self.metrics.watch_events.labels(self.resource).inc()
        kept = self.trim(obj) if etype in ("ADDED", "MODIFIED", "DELETED") else None
        with self._lock:
            old = self.items.get(key)
            if etype in ("ADDED", "MODIFIED") and kept is not None:
                self.items[key] = kept
            elif etype in ("ADDED", "MODIFIED", "DELETED"):
                self.items.pop(key, None)
        if etype == "DELETED":
            gone = kept if kept is not None else old  # the event's copy: its resourceVersion is the deletion's
            if gone is not None:
                self._notify("DELETED", gone, None)
        elif etype in ("ADDED", "MODIFIED"):
            if kept is not None:
                self._notify(etype, old, kept)
            elif old is not None:  # stopped matching: leaves the copy
                self._notify("DELETED", old, None)
        if rv:
            self.rv = max(self.rv, rv)
