"""Proof under stress against the real API server (hcs/testing/allocator_stress.py): binds racing with
watch disconnects, relists and SIGKILLed allocator restarts; an independent checker reads the API server
throughout. ``make test`` runs small counts (HCS_STRESS_BINDS / _KILLS / _CUTS override them); the
``slow`` test runs the full 1,000 binds x 100 SIGKILLs (bench/allocator_stress.py prints the numbers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hcs.kube import KubeRest
from hcs.node.computenode import install_crd
from hcs.testing import allocator_stress

pytestmark = pytest.mark.cluster


def _run(api_client: Any, kube_cluster: Any, tmp_path: Path, binds: int, kills: int, cuts: int) -> dict[str, Any]:
    rest = KubeRest(api_client)
    install_crd(rest)
    out = allocator_stress.run(rest, Path(kube_cluster.kubeconfig), tmp_path, binds=binds, kills=kills, cuts=cuts)
    print(out)
    assert out["binds"] >= binds
    assert out["kills"] == kills and out["cuts"] == cuts
    assert out["checks"] > 0
    assert out["max_overcommitted_devices"] == 0, out["violations"]
    assert out["bound_without_grant"] == 0, out["violations"]
    assert out["restart_identical"], out.get("state_diff")
    assert out["matches_api_server"], out.get("state_diff")
    return out


def test_binds_race_kills_and_watch_disconnects_without_overcommit(api_client: Any, kube_cluster: Any,
                                                                  tmp_path: Path) -> None:
    _run(api_client, kube_cluster, tmp_path, int(os.environ.get("HCS_STRESS_BINDS", "60")),
         int(os.environ.get("HCS_STRESS_KILLS", "3")), int(os.environ.get("HCS_STRESS_CUTS", "3")))


@pytest.mark.slow
@pytest.mark.stress
def test_thousand_binds_hundred_sigkills(api_client: Any, kube_cluster: Any, tmp_path: Path) -> None:
    _run(api_client, kube_cluster, tmp_path, 1000, 100, 100)
