"""Failover time of the allocator's two replicas: SIGKILL the leader, time until the standby serves
(``/readyz`` 200: it holds the Lease and its watches are listed). Repeats ``--rounds`` times, alternating
roles (the killed one restarts as the standby); that no reservation is lost across a takeover is asserted
by the allocator tests (tests/allocator), not here. Against the shared local cluster; deletes its Lease
at the end; prints one JSON object.

    flock /tmp/hcs-cluster.lock .venv/bin/python bench/allocator_failover.py [--rounds 5] [--lease-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from pathlib import Path

from kubernetes import config as kube_config

from hcs.kube import KubeError, KubeRest
from hcs.testing.allocator_procs import Daemon
from hcs.testing.cluster import ensure_cluster


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lease-seconds", type=int, default=10)
    args = ap.parse_args()
    cluster = ensure_cluster()
    lease = f"hcs-failover-{uuid.uuid4().hex[:6]}"
    times: list[float] = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        a = Daemon(Path(cluster.kubeconfig), tmp, "a", lease, lease_seconds=args.lease_seconds)
        b = Daemon(Path(cluster.kubeconfig), tmp, "b", lease, lease_seconds=args.lease_seconds)
        try:
            a.start()
            a.wait_ready(180)
            b.start()
            leader, standby = a, b
            for _ in range(args.rounds):
                time.sleep(args.lease_seconds / 2 + 3)  # the standby has listed; the Lease was just renewed
                assert not standby.ready()
                leader.kill(signal.SIGKILL)
                times.append(round(standby.wait_ready(120), 2))
                leader.start()  # comes back as the standby
                leader, standby = standby, leader
        finally:
            a.stop()
            b.stop()
            with suppress(KubeError):  # the Lease outlives its holders
                rest = KubeRest(kube_config.new_client_from_config(config_file=str(cluster.kubeconfig)))
                rest.request("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{lease}")
    s = sorted(times)
    print(json.dumps({"rounds": len(times), "lease_seconds": args.lease_seconds, "failover_s": times,
                      "failover_p50_s": s[len(s) // 2], "failover_max_s": s[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
