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

    target = os.environ.get("HCS_E2E_TARGET", "local")
    if target in ("chart", "kind"):
        yield from _installed_chart(target)
        return
    if target != "local":
        pytest.fail(f"HCS_E2E_TARGET={target}: use local (host processes), chart (e2e/chart/run) or kind "
                    "(e2e/kind/run.sh)", pytrace=False)
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


def _installed_chart(target: str) -> Iterator[Any]:
    """The chart installed by e2e/chart/run (multi-node local cluster) or e2e/kind/run.sh."""
    import os

    if target == "kind" and not os.environ.get("HCS_E2E_KUBECONFIG"):
        pytest.fail(KIND_UNAVAILABLE, pytrace=False)
    from chart_target import from_env

    h = from_env(target)
    start = time.monotonic()
    try:
        h.up()
    except Exception:
        sys.stderr.write(h.describe() + "\n" + h.logs("node-agent") + "\n" + h.logs("allocator") + "\n")
        h.down()
        raise
    sys.stderr.write(f"hcs e2e on the installed chart ({target}) ready in {time.monotonic() - start:.1f} s: "
                     f"{h.describe()}\n")
    yield h
    h.down()


#: HCS_E2E_TARGET=kind without a kind cluster to run against (e2e/kind/README.md, "Verified where").
KIND_UNAVAILABLE = ("HCS_E2E_TARGET=kind: run the suite through e2e/kind/run.sh (it starts Docker, builds the kind "
                    "node image, creates the cluster, installs the chart and sets HCS_E2E_KUBECONFIG); see "
                    "e2e/kind/README.md")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "local_only(reason): scenario drives host processes (local target only)")
    config.addinivalue_line("markers", "chart_only: scenario needs the installed chart (chart/kind targets)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``local_only`` scenarios (host-process faults) skip on chart/kind; ``chart_only`` ones on local."""
    import os

    target = os.environ.get("HCS_E2E_TARGET", "local")
    for item in items:
        if target != "local" and item.get_closest_marker("local_only"):
            reason = item.get_closest_marker("local_only").args[0]  # type: ignore[union-attr]
            item.add_marker(pytest.mark.skip(reason=f"local target only: {reason}"))
        if target == "local" and item.get_closest_marker("chart_only"):
            item.add_marker(pytest.mark.skip(reason="needs the installed chart (HCS_E2E_TARGET=chart or kind)"))


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
