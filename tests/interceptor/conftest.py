"""Fixtures shared by the interceptor tests: the C parts built once, a Harness per variant (plain, ASan)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from interceptor_harness import VARIANTS, Harness, build, write_profile


@pytest.fixture(scope="session")
def built() -> None:
    build()


@pytest.fixture(params=VARIANTS)
def h(request: pytest.FixtureRequest, built: None, tmp_path: Path) -> Iterator[Harness]:
    """A Harness with a fresh accounting directory and node profile, once per variant."""
    shm = tmp_path / "shm"
    shm.mkdir()
    yield Harness(variant=request.param, shm_dir=shm, profile=write_profile(tmp_path / "profile.json"))
