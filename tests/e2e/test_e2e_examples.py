"""The copy-paste examples in examples/ applied to the local real cluster, so they cannot rot.

Each file is applied as written except for what only a real user's cluster has: the public image is
swapped for the local cluster's (no registry here), pulled never, and the pod is pinned to the one real
node (other suites publish slices for kubelet-less nodes). What the example's own command prints (the
injected env and the quota file) is checked against the pod's HCS assignment or DRA allocation.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_helpers import GiB, create, delete_pod, diagnose, get_pod, wait_phase

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEVICE_PLUGIN = sorted((EXAMPLES / "device-plugin").glob("*.yaml"))
DRA = sorted((EXAMPLES / "dra").glob("claimtemplate-*.yaml"))
#: file -> the pod's expected quota lines (bytes per device), None: whole devices (from the assignment)
EXPECTED_QUOTA = {"inference-16gi.yaml": [16 * GiB], "training-32gi-64gi.yaml": [32 * GiB],
                  "multi-gpu-160gi.yaml": None, "vendor-pinned.yaml": [24 * GiB],
                  "claimtemplate-16gi.yaml": [16 * GiB], "claimtemplate-first-available.yaml": None,
                  "claimtemplate-island.yaml": [80 * GiB] * 4}


def test_every_example_is_covered() -> None:
    assert {p.name for p in DEVICE_PLUGIN + DRA} == set(EXPECTED_QUOTA)


def localise(h: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """The example as the local cluster can run it: local image, never pulled, on the real node."""
    doc = copy.deepcopy(doc)
    if doc["kind"] == "Pod":
        spec = doc["spec"]
        spec["terminationGracePeriodSeconds"] = 1
        spec["nodeSelector"] = {"kubernetes.io/hostname": h.node}
        for c in spec["containers"]:
            c["image"] = h.cluster.busybox_image
            c["imagePullPolicy"] = "Never"
    return doc


def parse_log(log: str) -> tuple[dict[str, str], list[tuple[int, int]]]:
    """(env, quota lines) from what every example's command prints."""
    env_part, _, rest = log.partition("== quota")
    env = {}
    for line in env_part.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and not key.startswith("="):
            env[key] = value
    quota = []
    for line in rest.splitlines()[1:]:
        parts = line.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            quota.append((int(parts[0]), int(parts[1])))
    return env, quota


def running_log(h: Any, pod_name: str, timeout: float = 180) -> str:
    wait_phase(h, pod_name, ("Running",), timeout)
    deadline = time.monotonic() + 60
    while True:
        log = str(h.kubectl("logs", "-n", h.namespace, pod_name, check=False).stdout)
        if parse_log(log)[1]:  # the quota file has been printed
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {pod_name}: no report in its log: {log!r}" + diagnose(h, pod_name))
        time.sleep(0.5)


def assignment(h: Any, pod_name: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        ann = (get_pod(h, pod_name)["metadata"].get("annotations") or {}).get("hcs.io/assignment", "")
        if ann:
            return [d for c in json.loads(ann).get("containers", []) for d in c.get("devices", [])]
        assert time.monotonic() < deadline, f"pod {pod_name}: no hcs.io/assignment" + diagnose(h, pod_name)
        time.sleep(0.3)


@pytest.mark.parametrize("path", DEVICE_PLUGIN, ids=lambda p: p.name)
def test_device_plugin_example(hcs_e2e: Any, path: Path) -> None:
    h = hcs_e2e
    [pod] = [localise(h, d) for d in yaml.safe_load_all(path.read_text()) if d]
    if path.name == "multi-gpu-160gi.yaml" and not h.use_allocator:
        pytest.xfail("a request spanning devices needs `hcs allocator` (see test_multi_gpu_160gi_...)")
    pod_name = pod["metadata"]["name"]
    warnings = create(h, pod)
    try:
        log = running_log(h, pod_name)
        env, quota = parse_log(log)
        devs = assignment(h, pod_name)
        assert env.get("LD_PRELOAD", "").endswith("libhcs_interceptor.so"), log
        assert env.get("HCS_QUOTA_FILE") == "/var/run/hcs/quota", log
        expected = EXPECTED_QUOTA[path.name]
        if expected is None:  # whole devices on one island
            expected = [int(d["vramBytes"]) for d in devs]
            assert sum(expected) >= 160 * GiB and len({d["island"] for d in devs}) == 1, devs
        assert quota == list(enumerate(expected)), log
        vendors = {d["vendor"] for d in devs}
        wanted = (pod["metadata"].get("annotations") or {}).get("hcs.io/vendor")
        if wanted:
            assert vendors == {wanted}, devs
        if vendors == {"nvidia"}:
            assert env["NVIDIA_VISIBLE_DEVICES"].split(",") == [d["uuid"] for d in devs], (env, devs)
        if path.name == "training-32gi-64gi.yaml":
            assert "limit lowered to the request 32Gi" in warnings, warnings
    finally:
        delete_pod(h, pod_name)


@pytest.mark.parametrize("path", DRA, ids=lambda p: p.name)
def test_dra_example(hcs_e2e: Any, path: Path) -> None:
    from hcs.kube import KubeError

    h = hcs_e2e
    docs = [localise(h, d) for d in yaml.safe_load_all(path.read_text()) if d]
    [template] = [d for d in docs if d["kind"] == "ResourceClaimTemplate"]
    [pod] = [d for d in docs if d["kind"] == "Pod"]
    pod_name = pod["metadata"]["name"]
    tpl_path = (f"/apis/resource.k8s.io/v1/namespaces/{h.namespace}/resourceclaimtemplates/"
                f"{template['metadata']['name']}")
    for doc in docs:
        create(h, doc)
    try:
        log = running_log(h, pod_name, timeout=240)  # claims from templates wait for the controller-manager
        env, quota = parse_log(log)
        assert env.get("LD_PRELOAD", "").endswith("libhcs_interceptor.so"), log
        assert [k for k in ("NVIDIA_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES") if k in env], env
        expected = EXPECTED_QUOTA[path.name]
        if expected is None:  # firstAvailable: one 80Gi share, or two 40Gi shares on two devices
            assert [q for _, q in quota] in ([80 * GiB], [40 * GiB, 40 * GiB]), log
        else:
            assert [q for _, q in quota] == expected, log
        assert [i for i, _ in quota] == list(range(len(quota))), log
        claims = h.rest.request("GET", f"/apis/resource.k8s.io/v1/namespaces/{h.namespace}/resourceclaims")
        mine = [c for c in claims.get("items") or []
                if any(o.get("name") == pod_name for o in c["metadata"].get("ownerReferences") or [])]
        assert mine and all(c["status"]["allocation"]["devices"]["results"][0]["driver"] == "ai.compute"
                            for c in mine), mine
    finally:
        delete_pod(h, pod_name)
        with contextlib.suppress(KubeError):
            h.rest.request("DELETE", tpl_path)
