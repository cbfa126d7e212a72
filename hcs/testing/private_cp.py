"""A private control plane (etcd + kube-apiserver + kube-controller-manager + kube-scheduler, no node) from
e2e/cluster with its own state dir and ports, for benchmarks that must not load, or be throttled by, the
shared local cluster. Its kube-controller-manager gets ``--kube-api-qps/--kube-api-burst``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: the benchmark's own control plane: another state dir and ports than the shared local cluster
PRIVATE_ENV = {"HCS_CLUSTER_DIR": "/tmp/hcs-bench-cp", "HCS_CLUSTER_APISERVER_PORT": "16443",
               "HCS_CLUSTER_ETCD_PORT": "12379", "HCS_CLUSTER_ETCD_PEER_PORT": "12380",
               "HCS_CLUSTER_CONTROLLER_MANAGER_PORT": "20257", "HCS_CLUSTER_SCHEDULER_PORT": "20259"}


class ControlPlane:
    def __init__(self, kubeconfig: Path, bin_dir: Path, env: dict[str, str] | None) -> None:
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.env = env

    def tool(self, name: str) -> Path:
        path = self.bin_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{name} is not among the cluster binaries in {self.bin_dir}")
        return path

    def down(self) -> None:
        if self.env is not None:  # only ours: `down` stops the processes this state dir's pid records name
            subprocess.run([sys.executable, str(REPO / "e2e" / "cluster" / "hcs_cluster.py"), "down"],
                           env=self.env, stdout=sys.stderr, stderr=sys.stderr, check=False)


def private_control_plane(qps: int, burst: int, fresh: bool = False) -> ControlPlane:
    """Start (or reuse) the private control plane; ``fresh``: stop it and delete its state first (an empty
    etcd starts in seconds, deleting a previous run's 10,000 pods through the API takes many minutes)."""
    env = dict(os.environ, **PRIVATE_ENV, HCS_CLUSTER_KCM_API_QPS=str(qps), HCS_CLUSTER_KCM_API_BURST=str(burst))
    script = str(REPO / "e2e" / "cluster" / "hcs_cluster.py")
    if fresh:
        subprocess.run([sys.executable, script, "down"], env=env, stdout=sys.stderr, stderr=sys.stderr, check=False)
        shutil.rmtree(PRIVATE_ENV["HCS_CLUSTER_DIR"], ignore_errors=True)
    subprocess.run([sys.executable, script, "up", "--no-node"], env=env, stdout=sys.stderr, stderr=sys.stderr,
                   check=True, timeout=900)
    info = json.loads(subprocess.run([sys.executable, script, "env", "--json"], env=env, capture_output=True,
                                     text=True, check=True).stdout)
    return ControlPlane(Path(info["kubeconfig"]), Path(info["bin_dir"]), env)


