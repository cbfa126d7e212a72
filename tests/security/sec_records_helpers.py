"""Helpers of the sec-records security tests (attacks 2, 7, 8, 10 of issue 16); unique module name."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from hcs.webhook.capacity import StaticCapacity
from hcs.webhook.certs import CertPaths
from hcs.webhook.config import WebhookConfig
from hcs.webhook.kube import ClusterView
from hcs.webhook.review import Admission
from hcs.webhook.server import WebhookServer

GI = 2**30
REPO = Path(__file__).resolve().parents[2]


class HttpsClient:
    """Posts AdmissionReviews to the real HTTPS webhook, as the API server (or an attacker) would."""

    def __init__(self, port: int, ca: Path) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(ca))

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        try:
            data = json.dumps(body).encode()
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw.startswith(b"{") else {"text": raw.decode()})
        finally:
            conn.close()

    def admit(self, endpoint: str, review: dict[str, Any]) -> dict[str, Any]:
        status, out = self.post(f"/{endpoint}", review)
        assert status == 200, (status, out)
        assert out["response"]["uid"] == review["request"]["uid"]
        return dict(out["response"])


@contextmanager
def webhook(certs: CertPaths, cfg: WebhookConfig | None = None, api_client: Any = None) -> Iterator[HttpsClient]:
    cfg = cfg or WebhookConfig()
    admission = Admission(cfg, StaticCapacity(80 * GI), ClusterView(cfg, api_client))
    server = WebhookServer("127.0.0.1", 0, str(certs.cert), str(certs.key), admission)
    server.start()
    try:
        yield HttpsClient(server.port, certs.ca)
    finally:
        server.stop()


def review(obj: dict[str, Any], *, operation: str = "CREATE", old: dict[str, Any] | None = None,
           namespace: str = "team-a", user: str = "system:serviceaccount:team-a:default",
           extra: dict[str, list[str]] | None = None, sub_resource: str = "",
           kind: str = "Pod") -> dict[str, Any]:
    group = {"Pod": "", "Deployment": "apps"}[kind]
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()), "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
        "operation": operation, "namespace": namespace, "name": obj["metadata"].get("name", ""),
        "object": obj, "userInfo": {"username": user, "extra": extra or {}},
    }
    if old is not None:
        request["oldObject"] = old
    if sub_resource:
        request["subResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def pod(name: str = "p", vram: str | None = "1Gi", *, annotations: dict[str, str] | None = None,
        node: str = "", image: str = "hcs.local/busybox:1.35") -> dict[str, Any]:
    # limits = requests: extended resources need both when no webhook normalises them
    res: dict[str, Any] = {"requests": {"ai.compute/vram": vram}, "limits": {"ai.compute/vram": vram}} if vram else {}
    spec: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False,
                            "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                            "command": ["true"], "resources": res}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
        except Exception as exc:  # the API server is eventually consistent
            result, last = None, exc
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what} (last error: {last})"
        time.sleep(interval)


def render_chart(helm: str, release: str, namespace: str, **values: Any) -> list[dict[str, Any]]:
    """The chart rendered by the real helm binary (``--set`` values)."""
    args = [helm, "template", release, str(REPO / "helm" / "hcs"), "--namespace", namespace,
            "--kube-version", "1.37.2"]
    for k, v in values.items():
        args += ["--set", f"{k}={json.dumps(v) if isinstance(v, bool) else v}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find_helm() -> str | None:
    import sys

    sys.path.insert(0, str(REPO / "tests" / "helm"))
    try:
        from helm_chart import find_helm as _find

        return _find()
    finally:
        sys.path.pop(0)


def impersonating(kubeconfig: Path, user: str, groups: tuple[str, ...] = (),
                  extra: dict[str, list[str]] | None = None) -> Any:
    """A KubeRest acting as ``user`` (the admin kubeconfig impersonates it: the API server then
    authorises and admits the request exactly as it would that user's)."""
    from urllib.parse import quote

    from kubernetes import config

    from hcs.kube import KubeRest

    client = config.new_client_from_config(config_file=str(kubeconfig))
    client.set_default_header("Impersonate-User", user)
    for g in groups or ("system:authenticated",):
        client.set_default_header("Impersonate-Group", g)  # one header value (urllib3 keeps the last)
    for key, values in (extra or {}).items():
        for v in values:
            client.set_default_header(f"Impersonate-Extra-{quote(key, safe='')}", v)
    return KubeRest(client)


def sa_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def ensure(rest: Any, path: str, body: dict[str, Any]) -> None:
    from hcs.kube import KubeError

    try:
        rest.request("POST", path, body=body)
    except KubeError as exc:
        if exc.status != 409:
            raise


def delete(rest: Any, path: str) -> None:
    from hcs.kube import KubeError

    try:
        rest.request("DELETE", path)
    except KubeError as exc:
        if exc.status != 404:
            raise


def grant_in_namespace(rest: Any, namespace: str, name: str, users: list[str],
                       rules: list[dict[str, Any]]) -> None:
    """A Role + RoleBinding giving ``users`` (service-account users) ``rules`` in ``namespace``."""
    ensure(rest, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
           {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
            "rules": rules})
    subjects = []
    for u in users:
        _, _, ns, sa = u.split(":", 3)
        subjects.append({"kind": "ServiceAccount", "name": sa, "namespace": ns})
    ensure(rest, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
           {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subjects})


def taint_node(rest: Any, name: str) -> None:
    """A kubelet-less Node nothing gets scheduled to (NoSchedule taint): pods are bound to it by name."""
    ensure(rest, "/api/v1/nodes", {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"hcs.io/fake-node": "true"}},
        "spec": {"taints": [{"key": "hcs.io/sec-records-test", "effect": "NoSchedule"}]}})
