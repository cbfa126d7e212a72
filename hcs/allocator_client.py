"""How node agents and the webhook dial the allocator's gRPC API (the server side is hcs.allocator.auth).

The caller's ServiceAccount token (a projected token file, audience ``hcs-allocator``) goes with each
call as ``authorization: Bearer <token>``, only over TLS or a unix socket (local credentials).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from hcs.errors import ConfigError

log = logging.getLogger(__name__)


class TokenFile:
    """The bearer token in a projected token file.

    The kubelet rotates the file (atomic symlink swap) well before the token expires; the file is
    re-read when its mtime changes and at least every ``reread_s`` seconds.
    """

    def __init__(self, path: str, reread_s: float = 60.0) -> None:
        self.path = path
        self.reread_s = reread_s
        self._lock = threading.Lock()
        self._token = ""
        self._stamp: tuple[float, float] = (-1.0, 0.0)  # (mtime, read at)

    def token(self) -> str:
        now = time.monotonic()
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError as exc:
            if self._token:
                return self._token
            raise ConfigError(f"allocator token file {self.path}: {exc.strerror}; mount a projected "
                              "serviceAccountToken volume there (audience hcs-allocator)") from exc
        with self._lock:
            if mtime != self._stamp[0] or now - self._stamp[1] > self.reread_s or not self._token:
                try:
                    text = Path(self.path).read_text().strip()
                except OSError as exc:
                    if self._token:
                        return self._token
                    raise ConfigError(f"allocator token file {self.path}: {exc.strerror}") from exc
                if not text:
                    raise ConfigError(f"allocator token file {self.path} is empty")
                self._token, self._stamp = text, (mtime, now)
            return self._token


_Details = collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                                "compression"))


class _CallDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer`` to each call, inline in the caller's thread (a call-credentials
    plugin runs on a separate thread and cost ~0.4 ms per call; bench/allocator_auth.py). Only ever
    installed on a TLS or local (unix socket) channel."""

    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens
        self._last_error = ""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = list(details.metadata or ())
        try:
            metadata.append(("authorization", f"Bearer {self.tokens.token()}"))
        except ConfigError as exc:  # sent without: the allocator answers UNAUTHENTICATED, the caller copes
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                log.error("%s", exc)
        return continuation(_CallDetails(details.method, details.timeout, metadata, details.credentials,
                                         details.wait_for_ready, details.compression), request)


def channel(address: str, *, token_file: str = "", ca_file: str = "", server_name: str = "",
            options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to the allocator.

    Without ``token_file`` and ``ca_file``: plaintext and anonymous (for an ``--insecure-dev``
    allocator). With a token over TCP, ``ca_file`` is required (the token is never sent in clear);
    ``unix:`` addresses use local credentials. ``server_name`` overrides the name checked against the
    certificate (default: the host of ``address``).
    """
    opts = list(options)
    if not token_file and not ca_file:
        return grpc.insecure_channel(address, options=opts)
    if address.startswith("unix:"):
        base = grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
    else:
        if not ca_file:
            raise ConfigError(f"allocator {address}: a token file is set but no CA file; the token would travel "
                              "in clear. Set the allocator CA file (the chart mounts ca.crt from the allocator's "
                              "TLS Secret)")
        try:
            root = Path(ca_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"allocator CA file {ca_file}: {exc.strerror}") from exc
        base = grpc.ssl_channel_credentials(root_certificates=root)
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
    ch = grpc.secure_channel(address, base, options=opts)
    return grpc.intercept_channel(ch, _BearerToken(TokenFile(token_file))) if token_file else ch
