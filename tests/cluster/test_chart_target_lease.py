"""Unit tests of tests/e2e/chart_target.py's readiness pieces that need no cluster: the hcs-scheduler Lease.

An install is not ready for ``ai.compute`` pods until the chart's kube-scheduler leads: a Lease left by a
scheduler that did not release it (killed pod, cluster taken down) names a pod that is gone, and pods wait
for it to expire (~15 s) — bench/startup.py counted that wait as pod start latency."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

E2E = Path(__file__).resolve().parents[1] / "e2e"


@pytest.fixture()
def ct(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(E2E))
    spec = importlib.util.spec_from_file_location("chart_target_under_test", E2E / "chart_target.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    return mod


def lease(holder: str | None) -> dict[str, Any]:
    return {"metadata": {"name": "hcs-scheduler"}, "spec": {} if holder is None else {"holderIdentity": holder}}


def test_holder_identity_names_the_pod(ct: ModuleType) -> None:
    assert ct.lease_holder_pod(lease("hcs-allocator-557d984894-dd9bf_0c6b3c52-6a3e-4c2b-9d3e-1f2a3b4c5d6e")) \
        == "hcs-allocator-557d984894-dd9bf"


@pytest.mark.parametrize("holder", [None, ""])
def test_released_or_new_lease_has_no_holder(ct: ModuleType, holder: str | None) -> None:
    assert ct.lease_holder_pod(lease(holder)) == ""


@pytest.mark.parametrize(("holder", "ready", "want"), [
    ("hcs-allocator-a_1", {"hcs-allocator-a", "hcs-allocator-b"}, "hcs-allocator-a"),
    # stale: the holder is a pod of the previous install (gone); the new scheduler waits for expiry
    ("hcs-allocator-old_1", {"hcs-allocator-a", "hcs-allocator-b"}, ""),
    ("hcs-allocator-a_1", {"hcs-allocator-b"}, ""),  # holder not Ready (or being deleted)
    (None, {"hcs-allocator-a"}, ""),
    ("", {""}, ""),
])
def test_leader_only_a_ready_pod_of_this_release(ct: ModuleType, holder: str | None, ready: set[str],
                                                 want: str) -> None:
    assert ct.lease_leader(lease(holder), ready) == want
