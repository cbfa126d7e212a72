"""The webhook's reads and writes against the API server, cached so admission stays fast.

* the mode of a namespace (label ``hcs.io/mode: dra|device-plugin``), TTL-cached;
* the image map ConfigMap (data key ``images.yaml``: image → vendor → image), TTL-cached;
(ResourceClaimTemplates are created by :mod:`hcs.webhook.claims` from admitted pods, not here.)

A failed read falls back to the last good value (or the cluster default) and is logged; the
admission path never raises because the API server is slow or down.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import yaml

from hcs.devices.model import Vendor
from hcs.webhook.config import Mode, WebhookConfig
from hcs.webhook.mutate import ImageMap

log = logging.getLogger(__name__)

IMAGE_MAP_KEY = "images.yaml"


def parse_image_map(text: str, *, source: str) -> dict[str, dict[str, str]]:
    """Parse ``images.yaml``; bad entries are skipped with a warning naming them."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        log.warning("%s: not valid YAML, image retargeting off until fixed: %s", source, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("%s: expected a mapping image -> {vendor: image}", source)
        return {}
    vendors = {v.value for v in Vendor}
    out: dict[str, dict[str, str]] = {}
    for image, targets in data.items():
        if not isinstance(targets, dict):
            log.warning("%s: entry %r: expected a mapping vendor -> image; skipped", source, image)
            continue
        good = {str(v): str(i) for v, i in targets.items() if str(v) in vendors and isinstance(i, str) and i}
        bad = sorted(str(v) for v in targets if str(v) not in vendors)
        if bad:
            log.warning("%s: entry %r: unknown vendor(s) %s (known: %s); ignored", source, image,
                        ", ".join(bad), ", ".join(sorted(vendors)))
        if good:
            out[str(image)] = good
    return out


class _Ttl:
    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl_s
        self.clock = clock
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[float, Any]] = {}

    def get(self, key: str, load: Callable[[], Any], fallback: Any) -> Any:
        now = self.clock()
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None and now < hit[0]:
                return hit[1]
        try:
            value = load()
        except Exception as exc:  # API down / forbidden: keep serving from the last good value
            log.warning("API lookup %s failed (%s); using %s", key, getattr(exc, "status", type(exc).__name__),
                        "the cached value" if hit else "the default")
            value = hit[1] if hit is not None else fallback
            with self.lock:
                self.entries[key] = (now + min(self.ttl, 2.0), value)
            return value
        with self.lock:
            if len(self.entries) > 4096:
                self.entries.clear()
            self.entries[key] = (now + self.ttl, value)
        return value


class ClusterView:
    """Cached API-server lookups for one webhook process (``api_client`` may be None: no cluster)."""

    def __init__(self, cfg: WebhookConfig, api_client: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._api_client = api_client
        self._cache = _Ttl(cfg.cache_ttl_s, clock)

    def _get_json(self, path: str) -> Any:
        resp = self._api_client.call_api(
            *self._api_client.param_serialize(method="GET", resource_path=path, auth_settings=["BearerToken"]),
            _request_timeout=3,
        )
        resp.read()
        if resp.status == 404:
            return None
        if resp.status >= 300:
            err = RuntimeError(f"GET {path}: HTTP {resp.status}")
            err.status = resp.status  # type: ignore[attr-defined]
            raise err
        return json.loads(resp.data)

    @property
    def connected(self) -> bool:
        """Whether this webhook has API-server credentials (DRA mode's template controller needs them)."""
        return self._api_client is not None

    def namespace_mode(self, namespace: str) -> Mode:
        """The namespace's ``hcs.io/mode`` label, else the cluster-wide ``webhook.mode``."""
        if self._api_client is None or not namespace:
            return self._cfg.mode

        def load() -> Mode:
            ns = self._get_json(f"/api/v1/namespaces/{namespace}") or {}
            value = (ns.get("metadata", {}).get("labels") or {}).get(self._cfg.mode_label)
            if value is None:
                return self._cfg.mode
            try:
                return Mode(value)
            except ValueError:
                log.warning("namespace %s: label %s=%r is not one of %s; using %s", namespace,
                            self._cfg.mode_label, value, ", ".join(m.value for m in Mode), self._cfg.mode.value)
                return self._cfg.mode

        mode: Mode = self._cache.get(f"ns/{namespace}", load, self._cfg.mode)
        return mode

    def image_map(self) -> ImageMap:
        if self._api_client is None or not self._cfg.image_map:
            return {}
        namespace, name = self._cfg.image_map.split("/", 1)

        def load() -> ImageMap:
            cm = self._get_json(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
            if cm is None:
                return {}
            text = (cm.get("data") or {}).get(IMAGE_MAP_KEY, "")
            return parse_image_map(text, source=f"ConfigMap {namespace}/{name} key {IMAGE_MAP_KEY}")

        result: ImageMap = self._cache.get("imagemap", load, {})
        return result
