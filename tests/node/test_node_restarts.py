"""Kubelet restarts (sockets deleted) and agent restarts (state recovered, nothing handed out twice)."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from node_helpers import RESOURCE, GiB, demand, device, node_env  # noqa: E402

from hcs.devices.model import Vendor  # noqa: E402
from hcs.kubeletsim.deviceplugin import SimPod  # noqa: E402
from hcs.node.agent import NodeAgent  # noqa: E402


def _sim_pod(d):  # type: ignore[no-untyped-def]
    return SimPod(d.pod.namespace, d.pod.name, d.pod.uid, (("main", 1),))


def test_reregisters_after_kubelet_restart_deletes_sockets() -> None:
    with node_env() as env:
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80)], pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE, count=1)
            for n in (2, 3):
                env.sim.restart()
                assert not Path(env.config.plugin_socket).exists() or agent.registrations >= n - 1
                conn = env.sim.wait_registered(RESOURCE, count=n, timeout_s=10)
                assert Path(env.config.plugin_socket).is_socket()
                assert sorted(conn.devices) == ["s000", "s001", "s002", "s003"]
            # the re-registered plugin still admits pods
            p = demand("after", 8, created_ms=1)
            env.pods.add(p)
            [resp] = env.sim.admit(_sim_pod(p), RESOURCE)
            assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == "NVIDIA-UUID-0000"
        finally:
            agent.stop()


def test_registers_when_kubelet_starts_after_the_agent() -> None:
    with node_env() as env:
        env.sim.stop()
        (Path(env.config.devicePluginDir) / "kubelet.sock").unlink(missing_ok=True)
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80)], pod_lister=env.pods).start()
        try:
            assert not agent.registered.is_set()
            env.sim.start()
            env.sim.wait_registered(RESOURCE, timeout_s=10)
        finally:
            agent.stop()


def test_agent_restart_recovers_and_never_double_books() -> None:
    with node_env() as env:
        devs = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 40)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        env.sim.wait_registered(RESOURCE)
        first = demand("first", 30, created_ms=1)
        env.pods.add(first)
        [r1] = env.sim.admit(_sim_pod(first), RESOURCE)
        assert r1.envs["NVIDIA_VISIBLE_DEVICES"] == "NVIDIA-UUID-0001"  # best fit: the 40 GiB one
        agent.stop()

        agent2 = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE, count=2)
            assert agent2.core.vram_allocated() == {"nvidia-1": (30 * GiB, 1)}
            # 30 GiB more no longer fits on nvidia-1 (10 GiB left): it must go to nvidia-0
            second = demand("second", 30, created_ms=2)
            env.pods.add(second)
            [r2] = env.sim.admit(_sim_pod(second), RESOURCE)
            assert r2.envs["NVIDIA_VISIBLE_DEVICES"] == "NVIDIA-UUID-0000"
        finally:
            agent2.stop()


def test_corrupt_state_file_is_rebuilt_from_kubelet_and_assignments() -> None:
    with node_env() as env:
        devs = [device(Vendor.NVIDIA, 0, 80)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        env.sim.wait_registered(RESOURCE)
        p = demand("p", 20, created_ms=1)
        env.pods.add(p)
        env.sim.admit(_sim_pod(p), RESOURCE)
        agent.stop()
        [state] = list((Path(env.config.stateDir) / "allocations").glob("*.json"))
        state.write_text('{"pod": {"uid": trunc')
        agent2 = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            assert agent2.core.vram_allocated() == {"nvidia-0": (20 * GiB, 1)}
            assert state.exists()  # rewritten
            assert state.with_suffix(".corrupt").exists()
            [a] = agent2.core.allocations()
            assert a.pod.ref == "default/p" and a.slots == env.sim.checkpoint[("default", "p", "main")][1]
        finally:
            agent2.stop()


def test_pod_removal_releases_its_devices(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import hcs.node.deviceplugin as dpmod

    monkeypatch.setattr(dpmod, "RECONCILE_GRACE_S", 0.0)
    with node_env() as env:
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80)], pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            p = demand("gone", 20, created_ms=1)
            env.pods.add(p)
            env.sim.admit(_sim_pod(p), RESOURCE)
            env.sim.start_container("default", "gone", "main")
            quota_file = agent.core.quota_file(p.pod.uid, "main")
            shm_dir = Path(env.config.shmDir) / p.pod.uid
            assert quota_file.exists() and shm_dir.is_dir()
            env.sim.remove_pod("default", "gone")
            env.pods.remove(p.pod.uid)
            assert agent.core.reconcile() == 1
            agent.core.flush()
            assert agent.core.vram_allocated() == {}
            assert not quota_file.exists() and not shm_dir.exists()
            assert list((Path(env.config.stateDir) / "allocations").glob("*.json")) == []
        finally:
            agent.stop()


def test_metrics_endpoint() -> None:
    import socket as s

    with s.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with node_env(metricsPort=port, metricsAddress="127.0.0.1") as env:
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80)], pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            p = demand("m", 16, created_ms=1)
            env.pods.add(p)
            env.sim.admit(_sim_pod(p), RESOURCE)
            agent._update_metrics()
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            assert 'hcs_device_vram_total_bytes{device="nvidia-0"' in text
            from prometheus_client.parser import text_string_to_metric_families

            samples = {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
                       for fam in text_string_to_metric_families(text) for smp in fam.samples}
            alloc = [v for (n, lbl), v in samples.items()
                     if n == "hcs_device_vram_allocated_bytes" and ("device", "nvidia-0") in lbl]
            assert alloc == [16 * GiB]
            assert 'hcs_allocate_requests_total{outcome="exact"} 1.0' in text
            assert 'hcs_grpc_request_duration_seconds_bucket{code="OK",le="0.005",method="Allocate"}' in text
            assert 'hcs_kubelet_registrations_total{result="ok"} 1.0' in text
            assert 'hcs_device_healthy{device="nvidia-0"' in text
        finally:
            agent.stop()


def test_agent_restart_between_deferred_allocate_and_prestart() -> None:
    import json

    with node_env() as env:
        devs = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 80)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        env.sim.wait_registered(RESOURCE)
        a, b = demand("a", 60, created_ms=1), demand("b", 60, created_ms=2)
        env.pods.add(a)
        env.pods.add(b)
        expected = {x.pod.uid: g.devices[0].uuid for x in agent.source.assignments() for g in x.containers}
        [resp] = env.sim.admit(_sim_pod(b), RESOURCE)
        slot = resp.cdi_devices[0].name.split("=")[1]
        agent.stop()
        agent2 = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE, count=2)
            env.sim.start_container("default", "b", "main")
            spec = json.loads((Path(env.config.cdiDir) / f"ai.compute-slot-{slot}.json").read_text())
            cenv = dict(e.split("=", 1) for e in spec["devices"][0]["containerEdits"]["env"])
            assert cenv["NVIDIA_VISIBLE_DEVICES"] == expected["uid-b"]
            [resp_a] = env.sim.admit(_sim_pod(a), RESOURCE)
            assert resp_a.envs["NVIDIA_VISIBLE_DEVICES"] == expected["uid-a"]
        finally:
            agent2.stop()


def test_restart_recreates_quota_files_lost_with_tmpfs() -> None:
    """quotaDir/shmDir are on tmpfs (/run): after a reboot the records survive but the files do not; the
    kubelet restarts the containers with the same bind mounts, so recovery must put the files back."""
    import shutil

    with node_env() as env:
        devs = [device(Vendor.NVIDIA, 0, 80)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        env.sim.wait_registered(RESOURCE)
        p = demand("p", 20, created_ms=1)
        env.pods.add(p)
        env.sim.admit(_sim_pod(p), RESOURCE)
        agent.core.flush()
        quota_file = agent.core.quota_file(p.pod.uid, "main")
        content = quota_file.read_text()
        agent.stop()
        shutil.rmtree(env.config.quotaDir)  # the reboot
        shutil.rmtree(env.config.shmDir)
        agent2 = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            assert quota_file.read_text() == content == f"0 {20 * GiB}\n"
            assert (Path(env.config.shmDir) / p.pod.uid).is_dir()
        finally:
            agent2.stop()
