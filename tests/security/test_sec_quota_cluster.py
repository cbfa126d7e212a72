"""Issue 16, attack 5 through the real kubelet and containerd of the local cluster.

The node agent runs in-process as the device plugin of the real kubelet; a pod asks for 64Mi of a
simulated 1 GiB GPU. Its container (busybox image; the host's glibc and the repo's test programs are
hostPath-mounted so the simulated CUDA program can run) tries the escapes with ordinary tools:
``env -u LD_PRELOAD``, ``env -u HCS_QUOTA_FILE HCS_VRAM_QUOTA=100Gi``, overwriting the quota file and
the ledger. The container runtime (runc) applies the agent's mounts, so this checks that
/etc/ld.so.preload, the read-only quota file and the read-only ledger really reach a container.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "node"))

from node_helpers import device  # noqa: E402
from sec_quota_container import BUILD, DRIVER_LIB, MIB, PROFILE, build, library  # noqa: E402

from hcs.devices.model import Vendor  # noqa: E402
from hcs.kube import KubeError, KubeRest  # noqa: E402

pytestmark = pytest.mark.cluster

RESOURCE = "test.hcs.io/slot"
Q = 64 * MIB
T_CUDA = str(BUILD / "tests" / "t_cuda")


def _wait(pred: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


SCRIPT = f"""
echo "==NOPRELOAD_OVER=="; env -u LD_PRELOAD {T_CUDA} alloc {Q + 1}
echo "==NOENV_OVER=="; env -u LD_PRELOAD -u HCS_QUOTA_FILE HCS_VRAM_QUOTA=100Gi HCS_SHM_DIR=/tmp {T_CUDA} alloc {Q + 1}
echo "==EXACT=="; env -u LD_PRELOAD {T_CUDA} alloc {Q}
echo "==TAMPER=="
(echo '* 100Gi' > /var/run/hcs/quota) 2>/dev/null && echo quota-written
(: > /var/run/hcs/shm/hcs-vram.ledger) 2>/dev/null && echo ledger-written
rm -f /var/run/hcs/shm/hcs-vram.ledger 2>/dev/null; [ -e /var/run/hcs/shm/hcs-vram.ledger ] || echo ledger-removed
(: > /etc/ld.so.preload) 2>/dev/null && echo preload-written
umount /etc/ld.so.preload 2>/dev/null && echo preload-unmounted
echo "==AFTER=="; env -u LD_PRELOAD {T_CUDA} alloc {Q + 1}
echo "==FORGED=="
mv /var/run/hcs /var/run/hcs.moved && mkdir -p /var/run/hcs/shm && echo '* 100Gi' > /var/run/hcs/quota \
  && : > /var/run/hcs/shm/hcs-vram.ledger && echo forged
env -u LD_PRELOAD {T_CUDA} alloc {Q + 1}
echo "==END=="
"""


def _section(logs: str, name: str) -> str:
    return logs.split(f"=={name}==", 1)[1].split("==", 1)[0]


def test_pod_container_without_ld_preload_is_held_to_its_quota(api_client: Any, kube_cluster: Any) -> None:
    from hcs.node.agent import NodeAgent
    from hcs.node.config import node_config

    build()
    rest = KubeRest(api_client)
    root = Path(tempfile.mkdtemp(prefix="hcsq", dir="/tmp"))
    (root / "lib").mkdir()
    shutil.copy(library(), root / "lib" / "libhcs_interceptor.so")
    profile = root / "profile.json"
    profile.write_text(json.dumps(PROFILE))
    profile.chmod(0o644)
    cfg = node_config({
        "nodeName": kube_cluster.node_name,
        "devicePluginDir": str(Path(kube_cluster.kubelet_dir) / "device-plugins"),
        "podResourcesSocket": str(Path(kube_cluster.kubelet_dir) / "pod-resources" / "kubelet.sock"),
        "resourceName": RESOURCE, "socketName": f"hcs-secq-{uuid.uuid4().hex[:6]}.sock",
        "stateDir": str(root / "state"), "quotaDir": str(root / "quota"), "shmDir": str(root / "shm"),
        "cdiDir": str(root / "cdi"), "interceptorDir": str(root / "lib"), "slotsPerDevice": 2,
        "metricsPort": 0, "reportInterval": 3600, "deviceIsolation": False,
    })
    # the card the simulated driver shows (its UUID is what the agent puts in CUDA_VISIBLE_DEVICES)
    gpu = replace(device(Vendor.NVIDIA, 0, 1), uuid=str(PROFILE["devices"][0]["uuid"]))  # type: ignore[index]
    agent = NodeAgent(cfg, [gpu], kube=rest).start()
    node, ns = kube_cluster.node_name, "default"
    pod_name = f"hcs-secq-{uuid.uuid4().hex[:6]}"
    try:
        _wait(lambda: rest.request("GET", f"/api/v1/nodes/{node}")["status"].get("allocatable", {}).get(RESOURCE)
              == "2", 60, f"{RESOURCE} allocatable on {node}")
        limits = {"ai.compute/vram": "64Mi", RESOURCE: "1"}
        host = [("usr-lib", "/usr/lib", "/lib"), ("usr-lib64", "/usr/lib64", "/lib64"),
                ("ibuild", str(BUILD), str(BUILD)), ("dbuild", str(DRIVER_LIB.parent), str(DRIVER_LIB.parent)),
                ("profile", str(profile), "/etc/hcs-sim-profile.json")]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": ns},
               "spec": {"nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "volumes": [{"name": n, "hostPath": {"path": p}} for n, p, _ in host],
                        "containers": [{
                            "name": "main", "image": kube_cluster.busybox_image, "imagePullPolicy": "Never",
                            "command": ["sh", "-c", SCRIPT],
                            "env": [{"name": "HCS_SIM_PROFILE", "value": "/etc/hcs-sim-profile.json"}],
                            "volumeMounts": [{"name": n, "mountPath": c, "readOnly": True} for n, _, c in host],
                            "resources": {"requests": limits, "limits": limits}}]}}
        rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)

        def finished() -> Any:
            p = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{pod_name}")
            return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

        try:
            p = _wait(finished, 120, f"pod {pod_name} to finish")
        except TimeoutError:
            events = rest.request("GET", f"/api/v1/namespaces/{ns}/events",
                                  query={"fieldSelector": f"involvedObject.name={pod_name}"})
            sandbox = [e["message"] for e in events.get("items", []) if e.get("reason") == "FailedCreatePodSandBox"]
            if sandbox:  # the local cluster's container runtime, not what is under test
                pytest.skip(f"the local cluster cannot start pod sandboxes: {sandbox[-1][:300]}")
            raise
        logs = kube_cluster.kubectl("logs", "-n", ns, pod_name).stdout
        print(logs)  # shown with -rP
        assert p["status"]["phase"] == "Succeeded", (p["status"], logs)

        def rc(section: str) -> dict[str, Any]:
            line = [x for x in _section(logs, section).splitlines() if x.startswith("{")]
            assert line, logs
            return json.loads(line[0])  # type: ignore[no-any-return]

        assert rc("NOPRELOAD_OVER")["rc"] == 2, logs  # /etc/ld.so.preload loaded the interceptor
        assert rc("NOENV_OVER")["rc"] == 2, logs  # the fixed quota file, not the environment
        assert rc("EXACT") == {"rc": 0, "free": 0, "total": Q}, logs  # legitimate use up to the quota
        assert _section(logs, "TAMPER").split() == [], logs  # nothing could be written/removed/unmounted
        assert rc("AFTER")["rc"] == 2, logs
        # /var/run/hcs is a rootfs directory: it can be renamed and a quota file forged in its place,
        # but that file is no read-only mount, so every allocation is refused
        assert "forged" in _section(logs, "FORGED"), logs
        assert rc("FORGED")["rc"] == 2, logs
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{pod_name}", query={"gracePeriodSeconds": "0"})
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)
