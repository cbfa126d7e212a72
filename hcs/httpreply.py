"""One-write HTTP/1.1 replies for the stdlib ``BaseHTTPRequestHandler`` servers (webhook, extender).

Headers and body go out in a single write: written as two, the body waits for the client's ACK of
the headers, which delayed ACK holds back up to 40 ms (Nagle). The handlers also set
``disable_nagle_algorithm``.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


def send_once(handler: BaseHTTPRequestHandler, status: int, body: bytes,
              content_type: str = "application/json") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler._headers_buffer.append(b"\r\n" + body)  # type: ignore[attr-defined]  # the pending header lines
    handler.flush_headers()
