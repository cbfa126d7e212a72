"""Issue 16, attack 6: containers of one pod must not share one VRAM accounting.

The device-plugin path once mounted one accounting dir per POD (shmDir/<pod uid>) while quota files
and devices are per CONTAINER: with container A at its 64Mi, container B got 0 of its own 32Mi.
Here the real node agent (device plugin over unix sockets, kubelet simulator) admits a two-container
pod, and each container is started from its own AllocateResponse (mounts + env) in an emulated
container (sec_quota_container.py); the attack is A filling its quota while B asks for its own.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "node"))

from node_helpers import RESOURCE, device, node_env  # noqa: E402
from sec_quota_container import MIB, Bind, Container, base_env, build, library, prerequisites  # noqa: E402

from hcs.api.gen.deviceplugin.v1beta1 import api_pb2 as dp  # noqa: E402
from hcs.devices.model import Vendor  # noqa: E402
from hcs.kubeletsim.deviceplugin import SimPod  # noqa: E402
from hcs.node.agent import NodeAgent  # noqa: E402
from hcs.node.assignments import PodDemand, PodRef  # noqa: E402

pytestmark = pytest.mark.skipif(bool(prerequisites()), reason=prerequisites() or "ok")


def _container(root: Path, resp: dp.ContainerAllocateResponse) -> Container:
    env = base_env(root)
    env.update({k: v for k, v in resp.envs.items() if k.startswith("HCS_") or k == "LD_PRELOAD"})
    binds = [Bind(m.host_path, m.container_path, m.read_only) for m in resp.mounts]
    return Container(root / "ctr", binds, env)


def test_each_container_of_a_pod_has_its_own_ledger_and_quota(tmp_path: Path) -> None:
    build()
    with node_env() as env:
        shutil.copy(library(), env.root / "lib" / "libhcs_interceptor.so")
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 1)], pod_lister=env.pods).start()
        ctrs: list[Container] = []
        try:
            env.sim.wait_registered(RESOURCE)
            pod = PodDemand(PodRef("uid-two", "default", "two", 1), (("a", 64 * MIB), ("b", 32 * MIB)))
            env.pods.add(pod)
            resps = env.sim.admit(SimPod("default", "two", "uid-two", (("a", 1), ("b", 1))), RESOURCE)
            for c in ("a", "b"):
                env.sim.start_container("default", "two", c)  # PreStartContainer: the files exist now
            mounts = [{m.container_path: m for m in r.mounts} for r in resps]
            ledgers = [m["/var/run/hcs/shm"].host_path for m in mounts]
            assert ledgers[0] != ledgers[1], "one accounting dir for two containers"
            assert ledgers[0].endswith("/uid-two/a") and ledgers[1].endswith("/uid-two/b")
            assert all(m["/var/run/hcs/shm"].read_only and m["/etc/ld.so.preload"].read_only for m in mounts)
            a, b = (_container(tmp_path / c, r) for c, r in zip(("a", "b"), resps, strict=True))
            ctrs += [a, b]

            a.hold(64 * MIB)  # A at its whole quota
            assert a.alloc(1)["rc"] == 2
            got = b.alloc(32 * MIB)  # B still has all of its own
            assert got == {"rc": 0, "free": 0, "total": 32 * MIB}, got
            over = b.alloc(32 * MIB + 1)
            assert over["rc"] == 2 and over["total"] == 32 * MIB, over
            b.hold(32 * MIB)
            assert a.alloc(1)["rc"] == 2 and b.alloc(1)["rc"] == 2  # neither spills into the other
        finally:
            for c in ctrs:
                c.close()
            agent.stop()
