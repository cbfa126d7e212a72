"""helm uninstall, pre-delete hook: stop the allocator pods while the chart's RBAC still exists, then
delete the leader-election Leases.

Without it Helm deletes the Roles with the Deployment, so the terminating allocator and kube-scheduler
(hcs-scheduler) containers can no longer release their Leases: the Leases stay behind, naming pods that
are gone, and a later install's hcs-scheduler waits for them to expire before it schedules anything.

Standard library only (runs in the hcs image with the hook's ServiceAccount). Environment: NAMESPACE,
DEPLOYMENT, POD_SELECTOR (label selector of the allocator pods), LEASES (comma-separated), TIMEOUT_S.
A Lease still held after the wait is deleted anyway. Always exits 0: a hook that fails would stop the
uninstall itself, which is worse than a Lease left behind; what it could not do is logged.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def api(method: str, path: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    with open(f"{SA}/token") as f:
        token = f.read().strip()
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"https://{host}:{port}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": content_type,
                                          "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")[:300]


def main() -> int:
    ns = os.environ["NAMESPACE"]
    deployment = os.environ["DEPLOYMENT"]
    selector = os.environ["POD_SELECTOR"]
    leases = [x for x in os.environ.get("LEASES", "").split(",") if x]
    timeout_s = float(os.environ.get("TIMEOUT_S", "90"))

    code, out = api("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/{deployment}/scale",
                    {"spec": {"replicas": 0}}, "application/merge-patch+json")
    if code == 404:
        print(f"deployment {ns}/{deployment} not found; nothing to stop")
    elif code >= 300:
        print(f"scaling {ns}/{deployment} to 0 failed: HTTP {code}: {out}", file=sys.stderr)
    else:
        print(f"scaled {ns}/{deployment} to 0; waiting for its pods to exit (they release their Leases)")
    deadline = time.monotonic() + timeout_s
    query = urllib.parse.urlencode({"labelSelector": selector})
    while True:
        code, out = api("GET", f"/api/v1/namespaces/{ns}/pods?{query}")
        if code >= 300:
            print(f"listing pods {selector}: HTTP {code}: {out}", file=sys.stderr)
            break
        left = [p["metadata"]["name"] for p in out.get("items") or []]
        if not left:
            break
        if time.monotonic() > deadline:
            print(f"pods {left} still there after {timeout_s:g} s; deleting the Leases anyway", file=sys.stderr)
            break
        time.sleep(1)
    for name in leases:
        code, out = api("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}")
        if code in (200, 202):
            print(f"deleted Lease {ns}/{name}")
        elif code == 404:
            print(f"Lease {ns}/{name} not found")
        else:
            print(f"deleting Lease {ns}/{name}: HTTP {code}: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
