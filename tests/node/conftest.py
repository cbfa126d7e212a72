"""Fixtures shared by the node-agent tests on the local cluster (tests/conftest.py has the cluster ones)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hcs.kube import KubeRest
from hcs.records import KEY_ENV, RecordKey


@pytest.fixture
def rest(api_client: Any) -> KubeRest:
    return KubeRest(api_client)


@pytest.fixture
def record_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RecordKey:
    """The chart's record key (the allocator and the agents hold it): the agent reads $HCS_RECORD_KEY_FILE."""
    path = tmp_path / "record-key"
    path.write_bytes(os.urandom(48).hex().encode())
    monkeypatch.setenv(KEY_ENV, str(path))
    return RecordKey.load(path)
