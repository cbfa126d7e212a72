"""Fixtures for the `checkpoint` tests: the checkpoint cluster (e2e/checkpoint/cluster.py), a Migrator, pods.

The cluster-backed tests here need root, CRIU (e2e/checkpoint/criu-setup) and their own 2-node cluster with
containerd 2.3; they run only when selected with ``-m checkpoint`` (``make e2e-checkpoint``), so the default
``make test`` neither starts that cluster nor fails without it. The unit tests in this directory (not
marked) always run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ckpt_helpers import cleanup  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLUSTER_PY = REPO / "e2e" / "checkpoint" / "cluster.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "checkpoint" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="checkpoint e2e: run `make e2e-checkpoint` (pytest -m checkpoint); needs root, "
                            "CRIU and the checkpoint cluster")
    for item in items:
        if item.get_closest_marker("checkpoint") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ckpt_env() -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.skip("the checkpoint cluster needs root")
    r = subprocess.run([sys.executable, str(CLUSTER_PY), "up"], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        pytest.fail(f"e2e/checkpoint/cluster.py up failed:\n{r.stderr[-3000:]}", pytrace=False)
    env: dict[str, Any] = json.loads(subprocess.run([sys.executable, str(CLUSTER_PY), "env", "--json"],
                                                    capture_output=True, text=True, check=True).stdout)
    return env


@pytest.fixture(scope="session")
def migrator(ckpt_env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from kubernetes import config as kconfig

    from hcs.checkpoint.migrate import Cluster, Migrator, Store
    from hcs.kube import KubeRest

    api = kconfig.new_client_from_config(config_file=ckpt_env["kubeconfig"])
    cluster = Cluster.from_description(KubeRest(api, timeout_s=30), ckpt_env)
    # the cluster's store shares the nodes' filesystem (archives move by rename, enter containerd by link)
    root = Path(ckpt_env["store"]) / f"test-{os.getpid()}" if ckpt_env.get("store") else \
        tmp_path_factory.mktemp("ckpt-store")
    yield Migrator(cluster, Store(root))
    api.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def clean(migrator: Any) -> Iterator[Any]:
    cleanup(migrator)
    yield migrator
    cleanup(migrator)


