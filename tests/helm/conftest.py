"""Fixtures for the chart tests: the helm binary (skip locally / fail in CI when absent), cached renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from helm_chart import CLUSTER_SCRIPT, find_helm, render
from helm_chart_fixtures import Render


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """helm; in CI (CI set) a missing helm is built with the cluster's pinned toolchain, else the tests fail."""
    found = find_helm()
    if found is None and os.environ.get("CI") and CLUSTER_SCRIPT.exists():
        # The cluster tests need the same build; doing it here keeps the outcome independent of test order.
        build = subprocess.run([sys.executable, str(CLUSTER_SCRIPT), "build"], capture_output=True, text=True,
                               timeout=5400, check=False)
        found = find_helm()
        if found is None:
            pytest.fail(f"helm not found and `hcs_cluster.py build` did not provide it ({build.returncode}):\n"
                        f"{build.stdout[-3000:]}{build.stderr[-3000:]}", pytrace=False)
    if found is None:
        msg = ("helm not found: set HCS_HELM, put helm on PATH, or build it with the local cluster's toolchain "
               "(python3 e2e/cluster/hcs_cluster.py build -> ~/.cache/hcs/cluster/bin/<key>/helm)")
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="session")
def rendered(helm_bin: str) -> Render:
    """``rendered(values_files=(), **set_values)``, cached for the session."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def get(values_files: tuple[str, ...] = (), api_versions: tuple[str, ...] = (), **set_values: Any) -> list[
            dict[str, Any]]:
        key = json.dumps([values_files, api_versions, set_values], sort_keys=True)
        if key not in cache:
            sv = {k.replace("__", "."): v for k, v in set_values.items()}
            cache[key] = render(values_files, sv, api_versions=api_versions)
        return cache[key]

    return get
