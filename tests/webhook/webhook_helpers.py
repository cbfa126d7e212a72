"""Helpers for the webhook tests (imported by the tests and conftest; unique module name)."""

from __future__ import annotations

import base64
import copy
import http.client
import http.server
import json
import ssl
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hcs.devices.model import FABRIC_OF, Compute, Device, Health, Vendor
from hcs.node.computenode import IslandInfo, build_spec, build_status

GI = 2**30
_MODEL = {Vendor.NVIDIA: "a100-80g", Vendor.ASCEND: "910b1", Vendor.HYGON: "k100", Vendor.CAMBRICON: "mlu370-x8"}


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


def hb_pod(requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None, *,
           annotations: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    """A pod asking for one interconnect island (``high-bandwidth``): the only kind the island check applies to."""
    return pod(requests, limits, annotations={"hcs.io/topology-preference": "high-bandwidth", **(annotations or {})},
               **kw)


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


def accel(vendor: str, index: int, gib: int, island: str = "", health: int = 100) -> Device:
    """A device as a vendor backend reports it (the node agent turns it into a ComputeNode entry)."""
    v = Vendor(vendor)
    return Device(
        vendor=v, model=_MODEL[v], name=f"{v} test device", uuid=f"{v.upper()}-UUID-{index:04d}", index=index,
        pci_bus_id=f"0000:{index + 16:02x}:00.0", numa_node=0, vram_total_bytes=gib * GI, vram_used_bytes=0,
        compute=Compute(312.0, 19.5, 624.0, 1.0),
        health=Health(health, () if health == 100 else (f"test: score {health}",)), island=island)


def computenode(node: str, devices: list[Device]) -> dict[str, Any]:
    """The ComputeNode object the node agent writes for ``devices`` (hcs/node/computenode.py's builders)."""
    members: dict[str, list[Device]] = {}
    for d in devices:
        if d.island:
            members.setdefault(d.island, []).append(d)
    islands = [IslandInfo(iid, str(ds[0].vendor), str(FABRIC_OF[ds[0].vendor]), tuple(d.key for d in ds), 100.0)
               for iid, ds in members.items()]
    return {"apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNode", "metadata": {"name": node},
            "spec": build_spec(node, devices, islands), "status": build_status(devices, {}, now="2025-01-01T00:00:00Z")}


class ComputeNodeApi:
    """A loopback HTTP stand-in for the API server's ComputeNode list (what ``ComputeNodeCapacity`` reads),
    reached through a real ``kubernetes.client.ApiClient`` (:attr:`client`)."""

    PATH = "/apis/hetero.zrs.io/v1alpha1/computenodes"

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.status = 200
        self.requests = 0
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                api.requests += 1
                if self.path.split("?")[0] != api.PATH or api.status != 200:
                    code = 404 if api.status == 200 else api.status
                    body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "code": code}).encode()
                else:
                    code = 200
                    body = json.dumps({"apiVersion": "hetero.zrs.io/v1alpha1", "kind": "ComputeNodeList",
                                       "metadata": {"resourceVersion": "1"}, "items": api.items}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        from kubernetes import client as k8s

        conf = k8s.Configuration()
        conf.host = f"http://127.0.0.1:{self._server.server_address[1]}"
        conf.retries = 0
        self.client = k8s.ApiClient(conf)

    def close(self) -> None:
        self.client.close()
        self._server.shutdown()
        self._server.server_close()
