"""Helpers of the checkpoint tests: pods running e2e/checkpoint/vram_counter.c, their progress lines."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

WORKLOAD_IMAGE = "hcs.local/vram-counter:1"
STEP_RE = re.compile(r"^step=(\d+) t=(\d+\.\d+) vram_mib=(\d+) ok=(\d) device=(\S+)$")


def kubectl(env: dict[str, Any], *args: str, check: bool = True, timeout: float = 180) -> str:
    r = subprocess.run([str(Path(env["bin_dir"]) / "kubectl"), f"--kubeconfig={env['kubeconfig']}", *args],
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def counter_pod(name: str, node: str, device: str, *, mode: str = "auto", vram_mib: int = 32,
                interval: str | None = None, memory_limit: str | None = None,
                restart_policy: str = "Always") -> dict[str, Any]:
    ann = {"hcs.io/device": device}
    if mode:
        ann["hcs.io/checkpoint"] = mode
    if interval:
        ann["hcs.io/checkpoint-interval"] = interval
    c: dict[str, Any] = {
        "name": "main", "image": WORKLOAD_IMAGE, "imagePullPolicy": "Never",
        "command": ["/vram_counter", str(vram_mib)],
        "env": [{"name": "HCS_DEVICE_FILE", "value": "/etc/hcs-device/uuid"}],
        "volumeMounts": [{"name": "dev", "mountPath": "/etc/hcs-device"}]}
    if memory_limit:
        c["resources"] = {"limits": {"memory": memory_limit}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": ann,
                         "labels": {"app": "hcs-ckpt-test"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "restartPolicy": restart_policy,
                     "terminationGracePeriodSeconds": 0, "containers": [c],
                     "volumes": [{"name": "dev", "downwardAPI": {"items": [
                         {"path": "uuid", "fieldRef": {"fieldPath": "metadata.annotations['hcs.io/device']"}}]}}]}}


def create_pod(migrator: Any, body: dict[str, Any], *, min_step: int = 10, timeout: float = 120) -> None:
    migrator.c.kube.request("POST", "/api/v1/namespaces/default/pods", body=body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = read_steps(migrator, body["metadata"]["name"])
        if steps and steps[-1][0] >= min_step:
            return
        time.sleep(0.3)
    raise AssertionError(f"pod {body['metadata']['name']} did not count to {min_step} in {timeout} s")


def read_steps(migrator: Any, name: str) -> list[tuple[int, float, int, str]]:
    """(step, t, ok, device) of every line the pod's container printed (a restored container's log holds the
    checkpointed container's lines too)."""
    try:
        resp = migrator.c.kube._send("GET", f"/api/v1/namespaces/default/pods/{name}/log")
    except Exception:
        return []
    if resp.status != 200:
        return []
    out = []
    for line in resp.read().decode(errors="replace").splitlines():
        m = STEP_RE.match(line.strip())
        if m:
            out.append((int(m.group(1)), float(m.group(2)), int(m.group(4)), m.group(5)))
    return out


def pods_named(migrator: Any, base: str) -> list[dict[str, Any]]:
    items = migrator.c.kube.request("GET", "/api/v1/namespaces/default/pods").get("items", [])
    return [p for p in items if re.fullmatch(rf"{re.escape(base)}(-m\d+)?", p["metadata"]["name"])
            and not p["metadata"].get("deletionTimestamp")]


def cleanup(migrator: Any) -> None:
    items = migrator.c.kube.request("GET", "/api/v1/namespaces/default/pods",
                                    query={"labelSelector": "app=hcs-ckpt-test"}).get("items", [])
    for p in items:
        migrator.delete_pod("default", p["metadata"]["name"])
    for n in migrator.c.nodes:
        migrator.c.kube.request("PATCH", f"/api/v1/nodes/{n}", content_type="application/merge-patch+json",
                                body={"metadata": {"annotations": {"hcs.io/device-verdicts": None}},
                                      "spec": {"unschedulable": None}})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and migrator.c.kube.request(
            "GET", "/api/v1/namespaces/default/pods", query={"labelSelector": "app=hcs-ckpt-test"}).get("items"):
        time.sleep(0.5)


def wait_for(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
