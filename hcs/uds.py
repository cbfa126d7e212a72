"""Unix-socket listen addresses for gRPC servers.

grpcio 1.85 parses ``unix://PATH`` as a URI and refuses to listen on a path of 106 or 107 bytes, which the
kernel accepts (``sun_path`` holds 107 bytes and a NUL); ``unix:PATH`` listens on every path the kernel
takes. Kubelet plugin sockets are checked against the kernel's limit, so servers listen with this form.
"""

from __future__ import annotations

import os

_URI = "unix://"


def listen_address(target: str | os.PathLike[str]) -> str:
    """``unix:<absolute path>`` for a socket path (a ``Path`` or an absolute string) or a ``unix://``
    address; any other address (``host:port``, ``unix:PATH``) unchanged."""
    text = os.fspath(target)
    if text.startswith(_URI):
        return "unix:" + os.path.abspath(text[len(_URI):])
    if isinstance(target, os.PathLike) or text.startswith("/"):
        return "unix:" + os.path.abspath(text)
    return text
