"""Bounded HTTP(S) serving for the webhook and the scheduler extender, on aiohttp.

Both endpoints are reachable by any pod, so every request's work is bounded here, before a handler
sees it (docs/architecture.md, "HTTP serving", has the measured comparison that chose aiohttp):

* one asyncio event loop in a background thread: an open connection costs a few KiB, not a thread;
  handlers (synchronous code that may call the API server) run in a small thread pool, health and
  metrics inline, so ``/healthz`` answers while every worker is busy;
* TLS handshakes end after ``handshake_timeout_s``; the request line and headers must arrive within
  ``header_timeout_s`` of their first byte (a slow-header client is cut off), the body within
  ``body_timeout_s``; an idle keep-alive connection is closed after ``idle_timeout_s``;
* at most ``max_connections`` connections: when a new one would exceed it, the connection idle (or
  stuck before its headers are complete) for longest is shed first; one serving a request never is;
* request line and each header at most 8 KiB, 128 headers; a body above ``max_body_bytes`` gets 413
  without being read; a bad ``Content-Length`` (``-1``, ``abc``) 400 from the HTTP parser; compressed
  bodies are not inflated (no decompression bombs);
* the certificate (and client CA, for mTLS) is re-read when its files change: the listening context
  hands each new connection the current pair (``sni_callback``, called with or without SNI).

A handler gets a :class:`Request` (body already read) and returns a :class:`Reply`; an exception in a
handler is logged and answered 500 without affecting other requests. An optional ``precheck`` sees the
request line, headers and client certificate before the body is read (authorisation).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import gc
import logging
import os
import ssl
import threading
import time
from asyncio import sslproto
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from hcs.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 3 * 2**20
    max_connections: int = 1024
    handshake_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    workers: int = 8


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    #: the verified client certificate (``SSLSocket.getpeercert()`` form) when the client sent one
    peer_cert: Mapping[str, Any] | None = None
    remote: str = ""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[Request], Reply]


@dataclass
class ConnStats:
    """Counters a daemon exports as metrics (plain ints; read them from any thread)."""

    handshake_errors: int = 0
    header_timeouts: int = 0
    idle_closed: int = 0
    shed: int = 0
    body_too_large: int = 0
    open: int = 0
    on_handshake_error: list[Callable[[], None]] = field(default_factory=list)


def cert_not_after(cert_file: str) -> float | None:
    """notAfter of the first certificate in a PEM file (unix time), None when it cannot be read."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        info = decode(cert_file)
        return float(ssl.cert_time_to_seconds(info["notAfter"]))
    except (OSError, ssl.SSLError, KeyError, ValueError):
        return None


class CertStore:
    """The current server ``SSLContext``; reloads when the files change.

    With ``client_ca_file`` the server asks for a client certificate and verifies it against that CA
    (a client without one is still let in: the handler decides which paths need it).
    """

    def __init__(self, cert_file: str, key_file: str, *, client_ca_file: str | None = None,
                 label: str = "TLS", hint: str = "check the certificate and key paths",
                 on_reload: Callable[[str], None] | None = None,
                 on_not_after: Callable[[float], None] | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._label = label
        self._hint = hint
        self._on_reload = on_reload or (lambda result: None)
        self._on_not_after = on_not_after or (lambda t: None)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._context = self._load()  # errors here are start-up errors: ConfigError
        self.not_after = self._note_expiry()
        self._front: ssl.SSLContext | None = None

    def _paths(self) -> tuple[str, ...]:
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())

    def _stat(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for path in self._paths():
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for path in self._paths():
            if not os.path.isfile(path):
                raise ConfigError(f"{self._label}: {path}: file not found; {self._hint}")
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{self._label}: cannot load certificate {self.cert_file} with key {self.key_file} "
                              f"({exc}); check both are PEM and belong together") from exc
        if self.client_ca_file:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"{self._label}: cannot load client CA {self.client_ca_file} ({exc}); "
                                  "it must be a PEM CA certificate") from exc
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def _note_expiry(self) -> float | None:
        not_after = cert_not_after(self.cert_file)
        self._on_not_after(not_after or 0)
        if not_after is not None and not_after < time.time():
            log.error("%s: certificate %s EXPIRED at %s; clients will refuse TLS until it is renewed",
                      self._label, self.cert_file, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after)))
        return not_after

    @property
    def context(self) -> ssl.SSLContext:
        with self._lock:
            return self._context

    @property
    def expired(self) -> bool:
        return self.not_after is not None and self.not_after < time.time()

    def server_context(self) -> ssl.SSLContext:
        """The listening context: each handshake switches to the current pair (reloads apply at once)."""
        if self._front is None:
            front = self._load()

            def pick(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
                sslobj.context = self.context

            front.sni_callback = pick
            self._front = front
        return self._front

    def maybe_reload(self) -> bool:
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        try:
            ctx = self._load()
        except ConfigError as exc:
            # keep the old pair; a half-written renewal (cert before key) lands here transiently
            log.warning("certificate files changed but cannot be loaded yet, keeping the old pair: %s", exc)
            self._on_reload("error")
            return False
        if self._front is not None and self.client_ca_file:
            # client verification runs with the listening context's store: add the new CA (a removed CA
            # stays trusted until restart)
            with contextlib.suppress(ssl.SSLError, OSError):
                self._front.load_verify_locations(cafile=self.client_ca_file)
        with self._lock:
            self._context = ctx
            self._stamp = stamp
        self.not_after = self._note_expiry()
        self._on_reload("ok")
        log.info("%s: reloaded certificate %s", self._label, self.cert_file)
        return True


def _malloc_trim() -> None:
    gc.collect()  # closed connections sit in reference cycles (asyncio TLS protocol <-> transport) until then
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _ConnState:
    __slots__ = ("busy", "idle_since", "pending_since", "transport")

    def __init__(self, transport: asyncio.BaseTransport, now: float) -> None:
        self.transport = transport
        self.busy = 0
        self.idle_since = now
        self.pending_since: float | None = None


class _Guard:
    """Per-connection bookkeeping: header timeout, idle timeout, connection cap (event-loop thread only)."""

    def __init__(self, limits: Limits, stats: ConnStats) -> None:
        self.limits = limits
        self.stats = stats
        self.conns: dict[Any, _ConnState] = {}
        self.peak = 0  # most connections open since the last trim

    def made(self, proto: Any, transport: asyncio.BaseTransport, handshaking: bool = False) -> bool:
        """Track a new connection (False: refused, every slot is serving a request)."""
        now = time.monotonic()
        if len(self.conns) >= self.limits.max_connections:
            victim = self._oldest_idle()
            self.stats.shed += 1
            if victim is None:
                transport.abort()  # type: ignore[attr-defined]
                return False
            if self.stats.shed % 100 == 1:
                log.warning("more than %d open connections: closing the one idle (or stuck before its request) "
                            "longest (%d shed so far)", self.limits.max_connections, self.stats.shed)
            self._close(victim)
        st = _ConnState(transport, now)
        if handshaking:
            st.pending_since = now
        self.conns[proto] = st
        self.stats.open = len(self.conns)
        return True

    def _oldest_idle(self) -> Any:
        best: Any = None
        best_t = float("inf")
        for proto, st in self.conns.items():
            if st.busy:
                continue
            t = st.pending_since if st.pending_since is not None else st.idle_since
            if t < best_t:
                best, best_t = proto, t
        return best

    def _close(self, proto: Any) -> None:
        st = self.conns.pop(proto, None)
        self.stats.open = len(self.conns)
        if st is not None:
            with contextlib.suppress(Exception):
                st.transport.abort()  # type: ignore[attr-defined]

    def lost(self, proto: Any) -> None:
        self.conns.pop(proto, None)
        self.stats.open = len(self.conns)

    def data(self, proto: RequestHandler) -> None:
        st = self.conns.get(proto)
        if st is not None and not st.busy and st.pending_since is None:
            st.pending_since = time.monotonic()

    def begin(self, proto: Any) -> None:
        st = self.conns.get(proto)
        if st is not None:
            st.busy += 1
            st.pending_since = None

    def end(self, proto: Any) -> None:
        st = self.conns.get(proto)
        if st is not None:
            st.busy = max(0, st.busy - 1)
            st.idle_since = time.monotonic()

    def sweep(self) -> None:
        now = time.monotonic()
        self.peak = max(self.peak, len(self.conns))
        if self.peak >= 64 and len(self.conns) <= self.peak // 4:
            # a burst of connections (an attack, a reconnect storm) is over: hand the freed buffers back to
            # the OS, or RSS stays at the burst's peak (glibc keeps freed heap memory)
            self.peak = len(self.conns)
            _malloc_trim()
        for proto, st in list(self.conns.items()):
            if st.busy:
                continue
            if st.pending_since is not None and now - st.pending_since > self.limits.header_timeout_s:
                self.stats.header_timeouts += 1
                log.debug("closing a connection that sent no complete request headers in %.0f s",
                          self.limits.header_timeout_s)
                self._close(proto)
            elif st.pending_since is None and now - st.idle_since > self.limits.idle_timeout_s:
                self.stats.idle_closed += 1
                self._close(proto)


class _Conn(RequestHandler):
    """aiohttp's connection protocol, reporting to the guard."""

    guard: _Guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.made(self, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.lost(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.guard.data(self)
        super().data_received(data)


class _Server(web.Server):
    conn_cls: type[_Conn]

    def __call__(self) -> RequestHandler:
        return self.conn_cls(self, loop=self._loop, **self._kwargs)


class _SSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a 32 KiB read buffer instead of 256 KiB per connection: a TLS record is
    at most 16 KiB, and 512 idle connections should not hold 128 MiB."""

    max_size = 32 * 1024


async def _start_tls(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, app: asyncio.BaseProtocol,
                     ctx: ssl.SSLContext, handshake_timeout_s: float) -> asyncio.Transport:
    """``loop.start_tls(server_side=True)`` with :class:`_SSLProtocol` (same steps as the stdlib's)."""
    waiter = loop.create_future()
    proto = _SSLProtocol(loop, app, ctx, waiter, server_side=True, call_connection_made=False,
                         ssl_handshake_timeout=handshake_timeout_s)  # type: ignore[arg-type]  # float works
    transport.pause_reading()
    transport.set_protocol(proto)
    conmade = loop.call_soon(proto.connection_made, transport)
    resume = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        conmade.cancel()
        resume.cancel()
        raise
    return proto._app_transport


class _TlsAccept(asyncio.Protocol):
    """A raw TCP connection until its TLS handshake is done; then aiohttp's protocol takes over.

    Doing the handshake here (``loop.start_tls``) rather than in ``create_server(ssl=...)`` lets the
    guard count connections still in their handshake against the cap, and count failed handshakes.
    """

    def __init__(self, svc: HttpService) -> None:
        self.svc = svc
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # nothing is read before start_tls takes the transport over
        self.transport = transport
        if not self.svc._guard.made(self, transport, handshaking=True):
            return
        self.task = asyncio.get_running_loop().create_task(self._upgrade(transport))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.svc._guard.lost(self)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        svc = self.svc
        app = svc._aio_server()
        loop = asyncio.get_running_loop()
        assert svc._certs is not None
        try:
            tls = await _start_tls(loop, transport, app, svc._certs.server_context(), svc.limits.handshake_timeout_s)
        except (OSError, ssl.SSLError, asyncio.CancelledError, ConnectionError, TimeoutError) as exc:
            svc._guard.lost(self)
            if not isinstance(exc, asyncio.CancelledError):
                svc._tls_failed(exc)
            transport.abort()
            return
        svc._guard.lost(self)
        if tls is None:
            transport.abort()
            return
        app.connection_made(tls)


class HttpService:
    """An HTTP(S) server in a background thread; ``start()``/``stop()``.

    ``handler`` runs in a worker thread for every request except those for which ``inline(request)``
    is true (cheap GETs: health, metrics), which run on the event loop so they answer under load.
    """

    def __init__(self, host: str, port: int, handler: Handler, *, certs: CertStore | None = None,
                 limits: Limits | None = None, name: str = "http",
                 inline: Callable[[str, str], bool] | None = None,
                 on_tls_error: Callable[[], None] | None = None, body_hint: str = "",
                 precheck: Callable[[Request], Reply | None] | None = None) -> None:
        self.limits = limits or Limits()
        self.stats = ConnStats()
        if on_tls_error is not None:
            self.stats.on_handshake_error.append(on_tls_error)
        self._handler = handler
        self._precheck = precheck
        self._body_hint = f" ({body_hint})" if body_hint else ""
        self._certs = certs
        self._name = name
        self._inline = inline or (lambda method, path: False)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.limits.workers,
                                                           thread_name_prefix=f"{name}-worker")
        self._loop = asyncio.new_event_loop()
        self._guard = _Guard(self.limits, self.stats)
        self._thread: threading.Thread | None = None
        self._stopped = False
        try:
            self._aio_server, self._listener = self._loop.run_until_complete(self._listen(host, port))
        except OSError as exc:
            self._loop.close()
            self._pool.shutdown(wait=False)
            raise ConfigError(f"{name}: cannot listen on {host}:{port} ({exc.strerror}); choose another "
                              "address") from exc

    async def _listen(self, host: str, port: int) -> tuple[_Server, asyncio.base_events.Server]:
        server = _Server(self._serve, handler_cancellation=False, keepalive_timeout=self.limits.idle_timeout_s,
                         lingering_time=1.0, max_line_size=8190, max_field_size=8190, max_headers=128,
                         auto_decompress=False, access_log=None)
        server.conn_cls = type("_GuardedConn", (_Conn,), {"guard": self._guard})
        self._aio_server = server
        factory: Callable[[], asyncio.BaseProtocol] = server
        if self._certs is not None:
            self._certs.server_context()
            factory = lambda: _TlsAccept(self)  # noqa: E731
        listener = await self._loop.create_server(factory, host=host or None, port=port, reuse_address=True,
                                                  backlog=1024)
        return server, listener

    def _tls_failed(self, exc: BaseException) -> None:
        self.stats.handshake_errors += 1
        log.debug("%s: TLS handshake failed: %r", self._name, exc)
        for cb in self.stats.on_handshake_error:
            with contextlib.suppress(Exception):
                cb()

    @property
    def port(self) -> int:
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self._listener.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise _TooLarge(size)
            chunks.append(chunk)

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        proto = request.protocol
        self._guard.begin(proto)
        try:
            return await self._serve_one(request)
        finally:
            self._guard.end(proto)

    async def _serve_one(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        peer = (transport.get_extra_info("peercert") if transport is not None else None) or None
        if self._precheck is not None:
            # before the body is read: a caller that may not call this path costs no body buffering
            early = self._precheck(Request(request.method, request.path, request.headers, b"", peer,
                                           request.remote or ""))
            if early is not None:
                resp = web.Response(status=early.status, body=early.body,
                                    headers={"Content-Type": early.content_type})
                if request.body_exists:
                    resp.force_close()
                return resp
        limit = self.limits.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            self.stats.body_too_large += 1
            resp = _text(413, f"request body of {length} bytes is larger than the {limit} bytes accepted"
                                 f"{self._body_hint}\n")
            resp.force_close()
            return resp
        body = b""
        if request.body_exists:
            try:
                body = await asyncio.wait_for(self._read_body(request), self.limits.body_timeout_s)
            except _TooLarge:
                self.stats.body_too_large += 1
                resp = _text(413, f"request body is larger than the {limit} bytes accepted{self._body_hint}\n")
                resp.force_close()
                return resp
            except TimeoutError:
                resp = _text(408, f"request body not received within {self.limits.body_timeout_s:g} s\n")
                resp.force_close()
                return resp
        req = Request(request.method, request.path, request.headers, body, peer, request.remote or "")
        try:
            if self._inline(req.method, req.path):
                reply = self._handler(req)
            else:
                reply = await self._loop.run_in_executor(self._pool, self._handler, req)
        except Exception:
            log.exception("%s: handler failed for %s %s", self._name, req.method, req.path)
            reply = Reply(500, b"internal error; see the server log\n", "text/plain")
        return web.Response(status=reply.status, body=reply.body, headers={"Content-Type": reply.content_type})

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                self._guard.sweep()
            except Exception:
                log.exception("%s: connection sweep failed", self._name)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        sweeper = self._loop.create_task(self._sweeper())
        try:
            self._loop.run_forever()
        finally:
            sweeper.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.gather(sweeper, return_exceptions=True))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True

        async def close() -> None:
            self._listener.close()
            for proto in list(self._guard.conns):
                self._guard._close(proto)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.wait_closed(), 2)
            self._loop.stop()

        if self._thread is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop)
            self._thread.join(timeout=5)
        else:
            self._listener.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._loop.is_running():
            with contextlib.suppress(Exception):
                self._loop.close()

    shutdown = stop  # the stdlib servers' name, kept for callers


class _TooLarge(Exception):
    pass


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
