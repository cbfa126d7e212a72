"""Fixtures for the chart tests: the helm binary (skip locally / fail in CI when absent), cached renders."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from helm_chart import find_helm, render
from helm_chart_fixtures import Render


@pytest.fixture(scope="session")
def helm_bin() -> str:
    found = find_helm()
    if found is None:
        msg = ("helm not found: set HCS_HELM, put helm on PATH, or let e2e/cluster/up build it "
               "(~/.cache/hcs/cluster/bin/<version>/helm)")
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
