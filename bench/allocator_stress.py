"""Proof under stress, as numbers: binds racing with SIGKILLed allocator restarts and watch disconnects
against the shared local cluster's API server (hcs/testing/allocator_stress.py). Prints one JSON object.

    flock /tmp/hcs-cluster.lock .venv/bin/python bench/allocator_stress.py [--binds 1000] [--kills 100] [--cuts 100]
"""

from __future__ import annotations

import os
import sys

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from hcs.kube import KubeRest  # noqa: E402
from hcs.node.computenode import install_crd  # noqa: E402
from hcs.testing import allocator_stress  # noqa: E402
from hcs.testing.cluster import ensure_cluster  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binds", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--cuts", type=int, default=100)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    cluster = ensure_cluster()
    from kubernetes import config

    rest = KubeRest(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    install_crd(rest)
    with tempfile.TemporaryDirectory() as td:
        out = allocator_stress.run(rest, Path(cluster.kubeconfig), Path(td), binds=args.binds, kills=args.kills,
                                   cuts=args.cuts, threads=args.threads)
    print(json.dumps(out))
    return 0 if out["max_overcommitted_devices"] == 0 and out["bound_without_grant"] == 0 and \
        out["restart_identical"] and out["matches_api_server"] else 1


if __name__ == "__main__":
    sys.exit(main())
