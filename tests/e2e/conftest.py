"""Session fixture: the HCS components running as host processes against the local cluster."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "e2e" / "local"))
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def hcs_e2e(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Webhook, node agent (device plugin + ComputeNode), DRA plugin and the hcs-scheduler profile
    (plus the allocator when the tree has it), started once; stopped and cleaned up at the end."""
    import os

    if os.environ.get("HCS_E2E_TARGET", "local") != "local":
        pytest.fail(f"HCS_E2E_TARGET={os.environ['HCS_E2E_TARGET']}: tests/e2e drives only the local cluster "
                    "(e2e/cluster + host processes, e2e/local/harness.py); a kind target (chart-installed "
                    "components) is not implemented yet", pytrace=False)
    from harness import Harness

    kube_cluster = request.getfixturevalue("kube_cluster")
    api_client = request.getfixturevalue("api_client")

    from hcs.kube import KubeRest

    start = time.monotonic()
    h = Harness(kube_cluster, KubeRest(api_client, timeout_s=30))
    try:
        h.up()
    except Exception:
        sys.stderr.write(h.describe() + "\n")
        for p in h.procs.values():
            sys.stderr.write(f"--- {p.name} ---\n{p.tail(40)}\n")
        h.down()
        raise
    sys.stderr.write(f"hcs e2e harness up in {time.monotonic() - start:.1f} s: {h.describe()}\n")
    yield h
    h.down()


@pytest.fixture(autouse=True)
def _clean_pods(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each scenario: delete what it left in the session namespace, so scenarios stay independent
    (assignments are released only when pods are gone)."""
    yield
    if "hcs_e2e" not in request.fixturenames:
        return
    h = request.getfixturevalue("hcs_e2e")
    from e2e_helpers import delete_pod

    pods = h.rest.request("GET", f"/api/v1/namespaces/{h.namespace}/pods").get("items") or []
    for p in pods:
        delete_pod(h, p["metadata"]["name"], wait=False)
    for p in pods:
        delete_pod(h, p["metadata"]["name"])
    h.wait_allocator_released()
