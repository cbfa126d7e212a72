"""Helpers for tests that need the local Kubernetes cluster built from upstream Go modules.

The cluster itself is managed by ``e2e/cluster/{up,down,status}`` (see e2e/cluster/README.md); this
module only drives those scripts and hands tests the facts they need (kubeconfig, images, tools).
It never mocks the API: everything goes to the real kube-apiserver.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = REPO_ROOT / "e2e" / "cluster"
EXIT_MISSING_PREREQUISITE = 3  # hcs_cluster.py's exit code for "Go / system packages missing"


class ClusterUnavailable(Exception):
    """The local cluster could not be brought up; ``missing_prerequisite`` when a toolchain is absent."""

    def __init__(self, message: str, *, missing_prerequisite: bool) -> None:
        super().__init__(message)
        self.missing_prerequisite = missing_prerequisite


@dataclass(frozen=True)
class Cluster:
    """A running local cluster: where its files are and what it offers."""

    dir: Path
    kubeconfig: Path
    bin_dir: Path
    node_name: str
    kubelet_dir: Path
    containerd_socket: Path
    scheduler_config: Path
    apiserver: str
    busybox_image: str
    pause_image: str

    def tool(self, name: str) -> Path:
        """Path of a cluster binary (kubectl, crictl, ctr, helm, ...)."""
        path = self.bin_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{name} is not among the cluster binaries in {self.bin_dir}")
        return path

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the cluster's kubectl against its kubeconfig."""
        cmd = [str(self.tool("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text,
                                check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result


def _script_cmd(command: str, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPTS_DIR / "hcs_cluster.py"), command, *args]


def cluster_layout() -> dict[str, Any]:
    """The layout the scripts use (paths, images, node name), from ``hcs_cluster.py env --json``."""
    out = subprocess.run(_script_cmd("env", "--json"), capture_output=True, text=True, check=False, timeout=60)
    if out.returncode != 0:
        raise ClusterUnavailable(f"e2e/cluster/hcs_cluster.py env failed: {out.stderr.strip()}",
                                 missing_prerequisite=False)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def is_up() -> bool:
    """True when ``e2e/cluster/status`` reports the cluster up (control plane healthy, node Ready)."""
    return subprocess.run(_script_cmd("status", "--quiet"), capture_output=True, check=False,
                          timeout=60).returncode == 0


def cluster_from_layout(data: dict[str, Any]) -> Cluster:
    return Cluster(
        dir=Path(data["dir"]), kubeconfig=Path(data["kubeconfig"]), bin_dir=Path(data["bin_dir"]),
        node_name=str(data["node_name"]), kubelet_dir=Path(data["kubelet_dir"]),
        containerd_socket=Path(data["containerd_socket"]), scheduler_config=Path(data["scheduler_config"]),
        apiserver=str(data["apiserver"]), busybox_image=str(data["busybox_image"]),
        pause_image=str(data["pause_image"]),
    )


def ensure_cluster(*, no_node: bool = False, timeout: float = 5400) -> Cluster:
    """Bring the cluster up unless it already is (``up`` is idempotent) and describe it.

    The first run on a machine builds Kubernetes from source (tens of minutes); progress goes to stderr.
    Raises ClusterUnavailable with the script's own explanation when it cannot be started.
    """
    if not is_up():
        args = ["--no-node"] if no_node else []
        proc = subprocess.Popen(_script_cmd("up", *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            sys.stderr.write(line)
            tail = (tail + [line.rstrip()])[-60:]
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise ClusterUnavailable(f"e2e/cluster/up did not finish within {timeout} s",
                                     missing_prerequisite=False) from None
        if rc != 0:
            raise ClusterUnavailable("e2e/cluster/up failed:\n" + "\n".join(tail),
                                     missing_prerequisite=rc == EXIT_MISSING_PREREQUISITE)
    return cluster_from_layout(cluster_layout())


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.5,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def busybox_pod(name: str, command: Sequence[str], *, image: str, namespace: str = "default",
                node_name: str | None = None, extra_spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """A minimal pod manifest running ``command`` in the locally imported busybox image.

    ``node_name`` adds a ``kubernetes.io/hostname`` node selector, so the scheduler still places the pod but
    never on the API-only Node objects other tests create (pods bound there would never run).
    """
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": list(command)}],
    }
    if node_name is not None:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node_name}
    spec.update(extra_spec or {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
