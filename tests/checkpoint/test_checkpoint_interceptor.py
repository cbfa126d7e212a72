"""Checkpoint recovery of a pod WITH the VRAM interceptor (marker `checkpoint`; `make e2e-checkpoint`).

The workload is e2e/checkpoint/quota_counter.c: its simulated VRAM is allocated through the (simulated)
CUDA driver API with libhcs_interceptor.so preloaded, in a managed container: the quota file and the ledger
directory are read-only mounts at /var/run/hcs, made here the way the node agent makes them
(hcs.devices.injection.create_ledger). Each step it probes the quota at the exact boundary.

The interceptor holds its ledger as file locks (interceptor/src/region.h), so the dump needs CRIU's
file-locks (/etc/criu/runc.conf, written by e2e/checkpoint/cluster.py). After the restore on the other
node the process's ledger descriptor names the NEW pod's ledger: the interceptor must re-attach (new quota,
live allocations re-registered there), and the old pod's ledger must be empty once it is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ckpt_helpers import pods_named, wait_for  # noqa: E402

from hcs.testing.ledger_locks import leased_bytes  # noqa: E402

pytestmark = pytest.mark.checkpoint

QUOTA_IMAGE = "hcs.local/quota-counter:1"
MIB = 1 << 20
LINE_RE = re.compile(r"^step=(\d+) t=(\d+\.\d+) vram_mib=(\d+) ok=(\d) device=(\S+) total=(\d+) free=(\d+) "
                     r"exact=(\d) cuda_uuid=(\S+)$")
LEDGER_SUBDIR = "ckpt-e2e"  # under each node's /var/lib/hcs


def node_hcs_dir(env: dict[str, Any], node: str, base: str) -> Path:
    """/var/lib/hcs/ckpt-e2e/<base> of a node, as seen from this host."""
    return Path(env["nodes"][node]["state"]) / "root" / "var-lib-hcs" / LEDGER_SUBDIR / base


def prepare_node(env: dict[str, Any], node: str, base: str, quota: str, device: str) -> Path:
    """What the node agent does for a managed container: the ledger dir (empty ledger file, device list:
    CUDA ordinals are matched to the quota's index by UUID) and the fixed quota file."""
    from hcs.devices.injection import create_ledger

    d = node_hcs_dir(env, node, base)
    shutil.rmtree(d, ignore_errors=True)
    create_ledger(d / "shm", [device])
    (d / "quota").write_text(f"* {quota}\n")
    os.chmod(d / "quota", 0o444)
    return d


def quota_pod(name: str, node: str, device: str, base: str, vram_mib: int) -> dict[str, Any]:
    hcs_dir = f"/var/lib/hcs/{LEDGER_SUBDIR}/{base}"
    c = {"name": "main", "image": QUOTA_IMAGE, "imagePullPolicy": "Never",
         "command": ["/quota_counter", str(vram_mib)],
         "env": [{"name": "HCS_DEVICE_FILE", "value": "/etc/hcs-device/uuid"},
                 {"name": "HCS_SIM_VISIBLE_DEVICES_FILE", "value": "/etc/hcs-device/uuid"}],
         "volumeMounts": [{"name": "dev", "mountPath": "/etc/hcs-device"},
                          {"name": "sim", "mountPath": "/opt/hcs", "readOnly": True},
                          {"name": "quota", "mountPath": "/var/run/hcs/quota", "readOnly": True},
                          {"name": "ledger", "mountPath": "/var/run/hcs/shm", "readOnly": True}]}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "hcs-ckpt-test"},
                         "annotations": {"hcs.io/device": device, "hcs.io/checkpoint": "manual"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 0,
                     "containers": [c],
                     "volumes": [
                         {"name": "dev", "downwardAPI": {"items": [
                             {"path": "uuid", "fieldRef": {"fieldPath": "metadata.annotations['hcs.io/device']"}}]}},
                         {"name": "sim", "hostPath": {"path": "/opt/hcs", "type": "Directory"}},
                         {"name": "quota", "hostPath": {"path": f"{hcs_dir}/quota", "type": "File"}},
                         {"name": "ledger", "hostPath": {"path": f"{hcs_dir}/shm", "type": "Directory"}}]}}


def lines(m: Any, name: str) -> list[tuple[int, int, str, int, int, int, str]]:
    """(step, ok, device, total, free, exact, cuda_uuid) of every line of the pod's log."""
    try:
        resp = m.c.kube._send("GET", f"/api/v1/namespaces/default/pods/{name}/log")
    except Exception:
        return []
    if resp.status != 200:
        return []
    out = []
    for raw in resp.read().decode(errors="replace").splitlines():
        g = LINE_RE.match(raw.strip())
        if g:
            out.append((int(g.group(1)), int(g.group(4)), g.group(5), int(g.group(6)), int(g.group(7)),
                        int(g.group(8)), g.group(9)))
    return out


def test_pod_with_interceptor_restored_with_new_quota_and_ledger(clean: Any, ckpt_env: dict[str, Any]) -> None:
    m, base, vram = clean, "ck-quota", 64
    dev_a = m.c.nodes["hcsck-a"].devices()[0]
    a = prepare_node(ckpt_env, "hcsck-a", base, "256Mi", dev_a)
    b = None
    try:
        m.c.kube.request("POST", "/api/v1/namespaces/default/pods", body=quota_pod(base, "hcsck-a", dev_a, base, vram))
        wait_for(lambda: len(lines(m, base)) >= 10, 120, f"{base} to count (see its log: interceptor messages)")
        before = lines(m, base)
        assert all(ln[1] == 1 and ln[5] == 1 and ln[6] == dev_a for ln in before), f"{base} before: {before[-3:]}"
        assert before[-1][3] == 256 * MIB and before[-1][4] == (256 - vram) * MIB, before[-1]
        # the interceptor's ledger counts it (read between two probes: a probe holds the rest for a moment)
        wait_for(lambda: leased_bytes(a / "shm" / "hcs-vram.ledger") == vram * MIB, 20, "64 MiB in the ledger")
        # the target device and a smaller quota there: the restored process must take the NEW one
        node, dev_b = m.pick_target(m.pod("default", base), "hcsck-b")
        b = prepare_node(ckpt_env, node, base, "192Mi", dev_b)
        res = m.migrate("default", base, to_node="hcsck-b", reason="test interceptor re-attach")
        assert (res.node, res.device) == (node, dev_b)
        last_old = before[-1][0]
        wait_for(lambda: sum(1 for ln in lines(m, res.new_pod) if ln[2] == dev_b) >= 10, 90,
                 f"{res.new_pod} to count on {dev_b}")
        after = lines(m, res.new_pod)
        mine = [ln for ln in after if ln[2] == dev_b]
        first = mine[0][0]
        assert last_old - 5 <= first - 1, f"restarted instead of restored: first step after the move {first}"
        assert [ln[0] for ln in mine] == list(range(first, first + len(mine))), "steps not consecutive"
        assert all(ln[1] == 1 for ln in after), "simulated VRAM corrupted"
        # the simulated runtime re-mapped ordinal 0 to the new device (the interceptor's device list agrees)
        assert all(ln[6] == dev_b for ln in mine), f"the runtime still reports another device: {mine[:2]}"
        # the new pod's quota, the restored 64 MiB counted against it, boundary exact, every step
        bad = [ln for ln in mine if (ln[3], ln[4], ln[5]) != (192 * MIB, (192 - vram) * MIB, 1)]
        assert not bad, f"quota in the new pod not the new one or not exact: {bad[:3]}"
        # usage in the NEW ledger; the old pod's ledger released once the old process is gone
        wait_for(lambda: leased_bytes(b / "shm" / "hcs-vram.ledger") == vram * MIB, 20, "64 MiB in the new ledger")
        wait_for(lambda: leased_bytes(a / "shm" / "hcs-vram.ledger") == 0, 60, "the old ledger to be empty")
        assert [p["metadata"]["name"] for p in pods_named(m, base)] == [res.new_pod]
    finally:
        for name in (base, f"{base}-m1"):
            m.delete_pod("default", name)
        deadline = time.monotonic() + 60
        while pods_named(m, base) and time.monotonic() < deadline:
            time.sleep(0.5)
        shutil.rmtree(a, ignore_errors=True)
        if b is not None:
            shutil.rmtree(b, ignore_errors=True)
