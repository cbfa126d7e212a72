"""Pod helpers for the e2e scenarios: create through kubectl (so admission warnings are seen), wait,
read the container's own output from its log."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GiB = 2**30

#: What every scenario container prints: its environment, its quota file and the Ascend driver mount.
REPORT = ("env | sort; echo '==QUOTA=='; cat \"$HCS_QUOTA_FILE\" 2>&1; echo '==ASCEND=='; "
          "cat /usr/local/Ascend/driver/version.info 2>&1; echo '==END=='")


@dataclass(frozen=True)
class Output:
    """A finished container's report."""

    pod: dict[str, Any]
    log: str
    warnings: str

    @property
    def env(self) -> dict[str, str]:
        head = self.log.split("==QUOTA==", 1)[0]
        out: dict[str, str] = {}
        for line in head.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    @property
    def quota(self) -> list[tuple[int, int]]:
        """(in-container index, bytes) lines of the quota file (``#`` lines: the agent's compute record)."""
        body = self.log.split("==QUOTA==", 1)[1].split("==ASCEND==", 1)[0]
        rows = []
        for line in body.strip().splitlines():
            if line.startswith("#"):
                continue
            idx, size = line.split()
            rows.append((int(idx), int(size)))
        return rows

    @property
    def ascend_mount(self) -> str:
        return self.log.split("==ASCEND==", 1)[1].split("==END==", 1)[0].strip()

    @property
    def assignment(self) -> dict[str, Any]:
        ann = (self.pod["metadata"].get("annotations") or {}).get("hcs.io/assignment", "")
        return json.loads(ann) if ann else {}


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``pred`` until it returns something truthy (returned), failing with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


def accel_pod(pod_name: str, image: str, resources: Mapping[str, Any], *, command: str = REPORT,
              annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The seed's pod shape: no schedulerName, no slot; the webhook adds both."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "annotations": dict(annotations or {})},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command], "resources": dict(resources)}]}}


def create(h: Any, manifest: Mapping[str, Any]) -> str:
    """kubectl create in the session namespace; returns kubectl's stderr (admission warnings)."""
    out = h.kubectl("create", "-n", h.namespace, "-f", "-", input_text=json.dumps(manifest), check=False)
    if out.returncode != 0:
        raise AssertionError(f"creating {manifest['kind']} {manifest['metadata']['name']} failed: {out.stderr}")
    return str(out.stderr)


def get_pod(h: Any, pod_name: str) -> dict[str, Any]:
    result: dict[str, Any] = h.rest.request("GET", f"/api/v1/namespaces/{h.namespace}/pods/{pod_name}")
    return result


def diagnose(h: Any, pod_name: str) -> str:
    events = h.kubectl("get", "events", "-n", h.namespace, "--field-selector",
                               f"involvedObject.name={pod_name}", "-o", "custom-columns=R:.reason,M:.message",
                               check=False).stdout
    tails = "\n".join(f"--- {n} ---\n{p.tail(15)}" for n, p in h.procs.items())
    if hasattr(h, "logs"):  # chart/kind target: the installed components' pod logs
        tails += "\n" + "\n".join(h.logs(c, tail=15) for c in ("allocator", "node-agent", "webhook"))
    try:
        status = json.dumps(get_pod(h, pod_name).get("status", {}))[:1500]
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        status = str(exc)
    return f"\npod {pod_name} status: {status}\nevents:\n{events}\n{tails}"


def wait_phase(h: Any, pod_name: str, phases: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pod = get_pod(h, pod_name)
        if pod["status"].get("phase") in phases:
            return pod
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {pod_name} not {'/'.join(phases)} after {timeout:.0f} s" + diagnose(h, pod_name))
        time.sleep(0.5)


def run_to_completion(h: Any, manifest: Mapping[str, Any], timeout: float = 90) -> Output:
    warnings = create(h, manifest)
    pod_name = manifest["metadata"]["name"]
    pod = wait_phase(h, pod_name, ("Succeeded", "Failed"), timeout)
    log = h.kubectl("logs", "-n", h.namespace, pod_name, check=False).stdout
    assert pod["status"]["phase"] == "Succeeded", f"pod {pod_name} failed; log:\n{log}" + diagnose(h, pod_name)
    if "hcs.io/assignment" not in (pod["metadata"].get("annotations") or {}):  # written asynchronously on confirm
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "hcs.io/assignment" not in (
                pod["metadata"].get("annotations") or {}):
            time.sleep(0.3)
            pod = get_pod(h, pod_name)
    return Output(pod, log, warnings)


def delete_pod(h: Any, pod_name: str, wait: bool = True) -> None:
    from hcs.kube import KubeError

    try:
        h.rest.request("DELETE", f"/api/v1/namespaces/{h.namespace}/pods/{pod_name}", query={"gracePeriodSeconds": "0"})
    except KubeError:
        return
    if wait:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                get_pod(h, pod_name)
            except KubeError:
                return
            time.sleep(0.3)


def visible_var(vendor: str) -> str:
    return {"nvidia": "NVIDIA_VISIBLE_DEVICES", "ascend": "ASCEND_VISIBLE_DEVICES"}[vendor]


def granted(out: Output) -> list[dict[str, Any]]:
    """Devices of the pod's assignment (``hcs.io/assignment``, proto3 JSON)."""
    a = out.assignment
    return [d for c in a.get("containers", []) for d in c.get("devices", [])]
