"""Issue 19: a container cannot raise its own compute share.

The container is built from the node agent's own edits (hcs/devices/injection.py: the share file
in the read-only ledger dir, the record in the read-only quota file, the node-wide compute ledger
dir read-write) and emulated like tests/security/test_sec_quota_escape.py does (mount namespace,
no CAP_SYS_ADMIN). Each attack runs as a real process in it against the real interceptor and the
simulated device; the share achieved is read from the device's own accounting.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "node"))
sys.path.insert(0, str(Path(__file__).parents[1] / "interceptor"))

from compute_harness import TFLOPS, WORKLOAD, SimNode  # noqa: E402
from node_helpers import device  # noqa: E402
from sec_quota_container import Bind, Container, base_env, build, library, prerequisites  # noqa: E402

from hcs.devices.injection import (  # noqa: E402
    COMPUTE_SHARE_FILE,
    CONTAINER_COMPUTE_DIR,
    CONTAINER_LEDGER_DIR,
    CONTAINER_QUOTA_FILE,
    InjectionOptions,
    QuotaFiles,
    compute_share,
    compute_share_text,
    container_edits,
    create_ledger,
    ensure_preload_file,
    quota_file_text,
)
from hcs.devices.model import Vendor  # noqa: E402

pytestmark = pytest.mark.skipif(bool(prerequisites()), reason=prerequisites() or "ok")
SHARE = 0.25
TOL = 0.03  # above the share (what a raised share would break)
LOW = 0.08  # below: a starved launch thread on a loaded machine (see test_interceptor_compute.py)
SHARE_PATH = f"{CONTAINER_LEDGER_DIR}/{COMPUTE_SHARE_FILE}"


@pytest.fixture(scope="module")
def built() -> None:
    build()
    import subprocess

    subprocess.run(["nice", "make", "-s", "-C", str(WORKLOAD.parents[2]), "build/tests/t_compute"], check=True)


@pytest.fixture
def setup(built: None, tmp_path: Path) -> Iterator[tuple[Container, SimNode]]:
    node = SimNode(tmp_path / "node", hashlib.sha1(f"{tmp_path}{time.time()}".encode()).hexdigest()[:12])
    host = tmp_path / "host"
    host.mkdir()
    share = compute_share(SHARE * 468.0, 468.0, "GPU-test")
    quota_file = host / "quota"
    quota_file.write_text(quota_file_text([1 << 30], [share]))
    ledger = host / "ledger"
    create_ledger(ledger, compute_text=compute_share_text([share], "hard", "pod-uid_main"))
    preload = host / "ld.so.preload"
    ensure_preload_file(preload)
    edits = container_edits(
        [device(Vendor.NVIDIA, 0, 1)], [1 << 30],
        QuotaFiles(str(quota_file), CONTAINER_QUOTA_FILE, str(ledger), CONTAINER_LEDGER_DIR, str(node.ledger)),
        InjectionOptions(interceptor_host_dir=str(library().parent), device_isolation=False,
                         preload_host_path=str(preload)),
    )
    mounts = {m.container_path: m for m in edits.mounts}
    assert mounts[CONTAINER_LEDGER_DIR].read_only and not mounts[CONTAINER_COMPUTE_DIR].read_only
    env = base_env(tmp_path / "ctr-env")
    env.update({k: v for k, v in edits.env if k.startswith("HCS_") or k == "LD_PRELOAD"})
    env.update(HCS_SIM_PROFILE=str(node.profile), HCS_SIM_DEVICE_DIR=str(node.devdir))
    c = Container(tmp_path / "ctr", [Bind(m.host_path, m.container_path, m.read_only) for m in edits.mounts], env)
    try:
        yield c, node
    finally:
        c.close()


def run_and_measure(c: Container, node: SimNode, extra: dict[str, str] | None = None, script: str = "") -> float:
    flops = int(TFLOPS["cuda"] * 1e12 * 0.5e-3)
    cmd = f"{script}exec {WORKLOAD} cuda 0 2.5 {flops} 32"
    p = c.popen("sh", "-c", cmd, extra=extra)
    time.sleep(0.5)
    a = node.accounting("cuda")
    time.sleep(1.8)
    b = node.accounting("cuda")
    so, se = p.communicate(timeout=60)
    assert p.returncode == 0, f"{so} {se}"
    pid = next(iter(set(b[1]) - {0}), None)
    assert pid is not None, b
    return (b[1][pid] - a[1].get(pid, 0)) / (b[0] - a[0])


def test_baseline_container_is_held_to_its_share(setup: tuple[Container, SimNode]) -> None:
    c, node = setup
    got = run_and_measure(c, node)
    assert SHARE - LOW <= got <= SHARE + TOL, got


def test_writing_the_share_file_from_inside_fails_and_changes_nothing(setup: tuple[Container, SimNode]) -> None:
    c, node = setup
    r = c.sh(f"echo '0 1.0' > {SHARE_PATH}")
    assert r.rc != 0 and "Read-only" in r.err, r
    r = c.sh(f"rm -f {SHARE_PATH}")
    assert r.rc != 0, r
    assert "0.250000" in c.sh(f"cat {SHARE_PATH}").out
    got = run_and_measure(c, node, script=f"echo '0 1.0' > {SHARE_PATH} 2>/dev/null; ")
    assert SHARE - LOW <= got <= SHARE + TOL, got


def test_environment_cannot_raise_the_share(setup: tuple[Container, SimNode], tmp_path: Path) -> None:
    c, node = setup
    forged = tmp_path / "forged"
    forged.write_text("policy burst\n0 1.0\n")
    got = run_and_measure(c, node, extra={"HCS_COMPUTE_SHARE": "1.0", "HCS_COMPUTE_FILE": str(forged),
                                          "HCS_COMPUTE_POLICY": "burst", "HCS_COMPUTE_GROUP": "other"})
    assert SHARE - LOW <= got <= SHARE + TOL, got
