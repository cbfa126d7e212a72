#!/usr/bin/env python3
"""Checkpoint recovery timings on the checkpoint cluster (e2e/checkpoint/cluster.py; root).

A pod runs e2e/checkpoint/vram_counter.c holding --vram-mib MiB of simulated VRAM (default 1024: device
memory of the simulated runtimes is host memory), and is moved back and forth between the two nodes with
``hcs migrate``'s code --migrations times. Prints ONE JSON object:

  checkpoint_s_p50   kubelet checkpoint API call (containerd + CRIU dump + archive)
  restore_s_p50      checkpoint image written + imported on the target, pod created, restored process running
  pause_s_p50        workload stopped: from its last step kept in the checkpoint to its first step after
                     restore (its own timestamps; the step period, 0.1 s, subtracted)
  vram_mib           simulated VRAM the workload holds
  archive_mib        checkpoint archive size (median)
  lost_work_s_max    work the old pod did after the checkpoint that was thrown away (its last printed step
                     minus the checkpointed one, x 0.1 s), worst move
  migrations, pods_lost, pods_duplicated   over all moves: exactly one pod of the workload must exist after
                     each move, and its counter must continue (never restart at 1, memory pattern intact)

    python3 bench/checkpoint.py [--vram-mib 1024] [--migrations 5]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hcs.checkpoint.migrate import Cluster, Migrator, Store
from hcs.kube import KubeRest

REPO = Path(__file__).resolve().parents[1]

STEP_RE = re.compile(r"^step=(\d+) t=(\d+\.\d+) vram_mib=\d+ ok=(\d) device=(\S+)$", re.M)
TICK_S = 0.1
BASE = "hcs-bench-ckpt"


def log(msg: str) -> None:
    print(f"[bench/checkpoint {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def steps(m: Migrator, name: str, tail: int | None = None) -> list[tuple[int, float, int, str]]:
    q = {"tailLines": str(tail)} if tail else None
    try:
        resp = m.c.kube._send("GET", f"/api/v1/namespaces/default/pods/{name}/log", query=q)
    except Exception:
        return []
    if resp.status != 200:
        return []
    return [(int(a), float(b), int(c), d) for a, b, c, d in STEP_RE.findall(resp.read().decode(errors="replace"))]


def pods(m: Migrator) -> list[str]:
    items = m.c.kube.request("GET", "/api/v1/namespaces/default/pods").get("items", [])
    return [p["metadata"]["name"] for p in items if re.fullmatch(rf"{BASE}(-m\d+)?", p["metadata"]["name"])
            and not p["metadata"].get("deletionTimestamp")]


def pod_body(device: str, vram_mib: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": BASE, "namespace": "default",
                         "annotations": {"hcs.io/checkpoint": "manual", "hcs.io/device": device}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": "hcsck-a"}, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "main", "image": "hcs.local/vram-counter:1", "imagePullPolicy": "Never",
                                     "command": ["/vram_counter", str(vram_mib)],
                                     "env": [{"name": "HCS_DEVICE_FILE", "value": "/etc/hcs-device/uuid"}],
                                     "volumeMounts": [{"name": "dev", "mountPath": "/etc/hcs-device"}]}],
                     "volumes": [{"name": "dev", "downwardAPI": {"items": [{"path": "uuid", "fieldRef": {
                         "fieldPath": "metadata.annotations['hcs.io/device']"}}]}}]}}


class Tail(threading.Thread):
    """Follows the old pod's last printed step until it is gone (the work thrown away after the checkpoint)."""

    def __init__(self, m: Migrator, name: str) -> None:
        super().__init__(daemon=True)
        self.m, self.name, self.last = m, name, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            s = steps(self.m, self.name, tail=3)
            if s:
                self.last = max(self.last, s[-1][0])
            self.stop.wait(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vram-mib", type=int, default=1024)
    ap.add_argument("--migrations", type=int, default=5)
    args = ap.parse_args()
    up = subprocess.run([sys.executable, str(REPO / "e2e/checkpoint/cluster.py"), "up"], capture_output=True, text=True)
    if up.returncode != 0:
        print(up.stderr, file=sys.stderr)
        return 2
    env = json.loads(subprocess.run([sys.executable, str(REPO / "e2e/checkpoint/cluster.py"), "env", "--json"],
                                    capture_output=True, text=True, check=True).stdout)
    from kubernetes import config as kconfig

    api = kconfig.new_client_from_config(config_file=env["kubeconfig"])
    # the cluster's store: on the nodes' filesystem, so archives move by rename and enter containerd by link
    store_root = Path(env.get("store") or Path.home() / ".cache" / "hcs" / "checkpoint")
    store_root.mkdir(parents=True, exist_ok=True)
    store_dir = tempfile.mkdtemp(prefix="hcs-bench-ckpt-", dir=str(store_root))
    m = Migrator(Cluster.from_description(KubeRest(api, timeout_s=60), env), Store(Path(store_dir), keep=1),
                 checkpoint_timeout_s=300, restore_timeout_s=300)
    for name in pods(m):
        m.delete_pod("default", name)
    dev = m.c.nodes["hcsck-a"].devices()[0]
    m.c.kube.request("POST", "/api/v1/namespaces/default/pods", body=pod_body(dev, args.vram_mib))
    t0 = time.monotonic()
    while not steps(m, BASE, tail=1):
        if time.monotonic() - t0 > 300:
            log("workload did not start")
            return 2
        time.sleep(0.5)
    time.sleep(2)
    ckpt, restore, pause, archive, lost = [], [], [], [], []
    lost_pods = dup_pods = 0
    current, other = BASE, "hcsck-b"
    for i in range(args.migrations):
        tail = Tail(m, current)
        tail.start()
        res = m.migrate("default", current, to_node=other, reason=f"bench move {i + 1}")
        tail.stop.set()
        tail.join()
        # let the restored process print a few lines
        deadline = time.monotonic() + 60
        new_steps: list[tuple[int, float, int, str]] = []
        while time.monotonic() < deadline:
            new_steps = steps(m, res.new_pod)
            if any(s[3] == res.device for s in new_steps[-3:]) and len(new_steps) >= 3:
                break
            time.sleep(0.2)
        nums = [s[0] for s in new_steps]
        # the restored log = the old pod's log (copied at the checkpoint) + the restored process's own lines,
        # which are the trailing run reporting the new device; per move at most one step back, never to 1
        start = len(new_steps)
        while start > 0 and new_steps[start - 1][3] == res.device:
            start -= 1
        drops = [j for j in range(1, len(nums)) if nums[j] != nums[j - 1] + 1]
        live = pods(m)
        if live != [res.new_pod]:
            dup_pods += max(0, len(live) - 1)
            lost_pods += 0 if res.new_pod in live else 1
        if start in (0, len(new_steps)) or len(drops) > i + 1 or any(nums[j] <= 1 for j in drops) \
                or not all(s[2] == 1 for s in new_steps):
            log(f"move {i + 1}: counter did not continue: {nums[:3]}..{nums[-3:]} drops={drops} start={start}")
            lost_pods += 1
        else:
            resumed_after = nums[start] - 1
            kept = [s for s in new_steps[:start] if s[0] == resumed_after]
            if kept:
                pause.append(max(0.0, new_steps[start][1] - kept[-1][1] - TICK_S))
            lost.append(max(0, tail.last - resumed_after) * TICK_S)
        ckpt.append(res.checkpoint_s)
        restore.append(res.restore_s)
        archive.append(res.archive_bytes / 2**20)
        log(f"move {i + 1}: {current} -> {res.new_pod} on {res.node}: checkpoint {res.checkpoint_s:.2f} s, restore "
            f"{res.restore_s:.2f} s (import {res.import_s:.2f} s), pause "
            f"{pause[-1] if pause else float('nan'):.2f} s, archive {archive[-1]:.0f} MiB")
        current, other = res.new_pod, ("hcsck-a" if res.node == "hcsck-b" else "hcsck-b")
    for name in pods(m):
        m.delete_pod("default", name)
    subprocess.run(["rm", "-rf", store_dir], check=False)
    print(json.dumps({
        "checkpoint_s_p50": round(statistics.median(ckpt), 3),
        "restore_s_p50": round(statistics.median(restore), 3),
        "pause_s_p50": round(statistics.median(pause), 3) if pause else None,
        "vram_mib": args.vram_mib,
        "archive_mib": round(statistics.median(archive), 1),
        "lost_work_s_max": round(max(lost), 2) if lost else None,
        "migrations": args.migrations, "pods_lost": lost_pods, "pods_duplicated": dup_pods,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
