"""Proof under stress, as numbers: binds racing with SIGKILLed allocator restarts and watch disconnects
against a real API server (hcs/testing/allocator_stress.py): by default a private control plane
(hcs/testing/private_cp.py: no load on, and no lock of, the shared cluster), or the shared local cluster
with ``--control-plane shared``. Prints one JSON object.

    .venv/bin/python bench/allocator_stress.py [--binds 1000] [--kills 100] [--cuts 100]
    flock /tmp/hcs-cluster.lock .venv/bin/python bench/allocator_stress.py --control-plane shared
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from hcs.kube import KubeRest
from hcs.node.computenode import install_crd
from hcs.testing import allocator_stress
from hcs.testing.cluster import ensure_cluster
from hcs.testing.private_cp import private_control_plane


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binds", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--cuts", type=int, default=100)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--control-plane", choices=("private", "shared"), default="private")
    ap.add_argument("--keep", action="store_true", help="leave a private control plane running")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    private = private_control_plane(2000, 4000, fresh=True) if args.control_plane == "private" else None
    kubeconfig = Path(private.kubeconfig if private is not None else ensure_cluster().kubeconfig)
    from kubernetes import config

    try:
        rest = KubeRest(config.new_client_from_config(config_file=str(kubeconfig)))
        install_crd(rest)
        for _ in range(120):  # the CRD is served once established
            try:
                rest.request("GET", allocator_stress.CN_PATH, query={"limit": "1"})
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as td:
            out = allocator_stress.run(rest, kubeconfig, Path(td), binds=args.binds, kills=args.kills,
                                       cuts=args.cuts, threads=args.threads)
    finally:
        if private is not None and not args.keep:
            private.down()
    out["control_plane"] = args.control_plane
    print(json.dumps(out))
    return 0 if out["max_overcommitted_devices"] == 0 and out["bound_without_grant"] == 0 and \
        out["restart_identical"] and out["matches_api_server"] else 1


if __name__ == "__main__":
    sys.exit(main())
