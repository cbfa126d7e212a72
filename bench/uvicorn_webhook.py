"""The HCS webhook's admission logic behind uvicorn (h11), for the server comparison in
docs/architecture.md ("HTTP serving"); not used by HCS itself. Needs ``pip install uvicorn``.

    python bench/uvicorn_webhook.py --config F --listen 127.0.0.1:PORT --cert-file C --key-file K
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
from typing import Any

import uvicorn

from hcs.config import load_config, section
from hcs.webhook.cli import build_capacity
from hcs.webhook.config import webhook_config
from hcs.webhook.kube import ClusterView
from hcs.webhook.review import Admission

MAX_BODY = 3 * 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--cert-file", required=True)
    ap.add_argument("--key-file", required=True)
    args = ap.parse_args()
    cfg = webhook_config(section(load_config(args.config), "webhook", source=args.config), source=args.config)
    admission = Admission(cfg, build_capacity(cfg, None), ClusterView(cfg, None))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > MAX_BODY:
                await _reply(send, 413, b"too large\n")
                return
        path = scope["path"]
        if scope["method"] == "GET":
            await _reply(send, 200 if path == "/healthz" else 404, b"ok\n")
            return
        answer = await asyncio.get_running_loop().run_in_executor(pool, admission.handle, path.strip("/"), body)
        await _reply(send, answer.status, answer.body, answer.content_type.encode())

    host, _, port = args.listen.rpartition(":")
    uvicorn.run(app, host=host, port=int(port), ssl_certfile=args.cert_file, ssl_keyfile=args.key_file,
                http="h11", loop="asyncio", lifespan="off", log_level="warning", access_log=False,
                timeout_keep_alive=120, limit_concurrency=1024)


async def _reply(send: Any, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    main()
