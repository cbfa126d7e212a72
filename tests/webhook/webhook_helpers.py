"""Helpers for the webhook tests (imported by the tests and conftest; unique module name)."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def apply_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Minimal RFC 6902 (add/replace/remove/test) for checking the webhook's patches."""
    out = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = out
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent[last]
            assert current == op["value"], f"patch test failed at {op['path']}"
        elif op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif op["op"] == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                if op["op"] == "replace":
                    assert last in parent, f"replace of missing {op['path']}"
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise AssertionError(f"unexpected op {op}")
    return out


def review(obj: dict[str, Any] | None, *, kind: str = "Pod", operation: str = "CREATE", namespace: str = "default",
           dry_run: bool = False) -> dict[str, Any]:
    group = {"Pod": ("", "v1"), "Deployment": ("apps", "v1"), "Job": ("batch", "v1"),
             "CronJob": ("batch", "v1")}.get(kind, ("example.com", "v1"))
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": str(uuid.uuid4()), "kind": {"group": group[0], "version": group[1], "kind": kind},
                    "operation": operation, "namespace": namespace, "object": obj, "dryRun": dry_run},
    }


def pod(requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None, *,
        annotations: dict[str, str] | None = None, image: str = "busybox", name: str = "p",
        privileged: bool = False) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    container: dict[str, Any] = {"name": "main", "image": image, "resources": resources}
    if privileged:
        container["securityContext"] = {"privileged": True}
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [container]}}


class Client:
    """HTTPS client with one keep-alive connection, trusting the test CA."""

    def __init__(self, port: int, ca: Path) -> None:
        self.ca_path = ca
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.port = port
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.ctx, timeout=10)

    def raw(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def admit(self, endpoint: str, rev: dict[str, Any]) -> dict[str, Any]:
        status, body = self.raw("POST", f"/{endpoint}", json.dumps(rev).encode(),
                                {"Content-Type": "application/json"})
        assert status == 200, body
        out = json.loads(body)
        assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
        assert out["response"]["uid"] == rev["request"]["uid"]
        return dict(out["response"])

    def mutated(self, obj: dict[str, Any], **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        resp = self.admit("mutate", review(obj, **kw))
        ops = json.loads(base64.b64decode(resp["patch"])) if "patch" in resp else []
        return apply_patch(obj, ops), resp

    def close(self) -> None:
        self.conn.close()




#: ``serve(cfg=None, capacity=None, api_client=None, cert=None, key=None, cert_check_s=5.0)`` → (server, client)
ServerFactory = Callable[..., tuple[Any, Client]]
