"""Thin JSON-in/JSON-out access to the API server through a kubernetes ``ApiClient``.

The 37.x client is pydantic based: its typed methods validate and convert every body, which
costs milliseconds per 128-device ResourceSlice and hides fields the client does not know yet.
HCS components (node agent, DRA driver, allocator) speak the wire format (camelCase dicts, exactly
as in the API reference) and reuse the ApiClient only for its configuration: host, TLS, authentication.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

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
    ) -> dict[str, Any]:
        resp = self._send(method, path, query=query, body=body, content_type=content_type)
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
