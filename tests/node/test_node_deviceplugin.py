"""Device plugin + Allocate handshake against the kubelet simulator, over real unix sockets."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from node_helpers import RESOURCE, GiB, demand, device, node_env  # noqa: E402

from hcs.devices.model import Health, Vendor  # noqa: E402
from hcs.kubeletsim.deviceplugin import AdmissionError, SimPod  # noqa: E402
from hcs.node.agent import NodeAgent  # noqa: E402


def _sim_pod(d, containers=("main",)):  # type: ignore[no-untyped-def]
    return SimPod(d.pod.namespace, d.pod.name, d.pod.uid, tuple((c, 1) for c in containers))


def test_registers_and_advertises_slots_with_numa() -> None:
    with node_env() as env:
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80, numa=0), device(Vendor.NVIDIA, 1, 80, numa=1)],
                          pod_lister=env.pods).start()
        try:
            conn = env.sim.wait_registered(RESOURCE)
            assert conn.options.pre_start_required and conn.options.get_preferred_allocation_available
            assert conn.endpoint == "hcs-slot.sock"
            assert sorted(conn.devices) == [f"s{i:03d}" for i in range(8)]
            assert set(conn.devices.values()) == {"Healthy"}
            assert conn.numa["s000"] == [0] and conn.numa["s007"] == [1]
        finally:
            agent.stop()


def test_allocate_exact_best_fit_with_env_devices_mounts_and_quota() -> None:
    with node_env() as env:
        devs = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 40)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            p = demand("train", 16, created_ms=1)
            env.pods.add(p)
            [resp] = env.sim.admit(_sim_pod(p), RESOURCE)
            # best fit: the 40 GiB device leaves the least VRAM free
            assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == "NVIDIA-UUID-0001"
            assert resp.envs["CUDA_VISIBLE_DEVICES"] == "NVIDIA-UUID-0001"
            assert resp.envs["LD_PRELOAD"].endswith("/libhcs_interceptor.so")
            quota_file = resp.envs["HCS_QUOTA_FILE"]
            mounts = {m.container_path: m for m in resp.mounts}
            host_quota = Path(mounts[quota_file].host_path)
            assert mounts[quota_file].read_only
            env.sim.start_container("default", "train", "main")  # PreStart: the kubelet creates it next
            assert host_quota.read_text() == f"0 {16 * GiB}\n"
            assert Path(mounts[resp.envs["HCS_SHM_DIR"]].host_path).is_dir()
            # the VRAM ledger (issue 16): per container, read-only, an empty file whose locks count
            assert mounts[resp.envs["HCS_SHM_DIR"]].read_only
            assert (Path(mounts[resp.envs["HCS_SHM_DIR"]].host_path) / "hcs-vram.ledger").is_file()
            assert mounts["/etc/ld.so.preload"].read_only
            assert Path(mounts["/etc/ld.so.preload"].host_path).read_text() == resp.envs["LD_PRELOAD"] + "\n"
            assert mounts["/usr/local/hcs/lib"].host_path == str(env.root / "lib")
            assert "/dev/nvidia1" in {d.host_path for d in resp.devices}
            assert "/dev/nvidia0" not in {d.host_path for d in resp.devices}
            assert not resp.cdi_devices
            assert agent.core.vram_allocated() == {"nvidia-1": (16 * GiB, 1)}
        finally:
            agent.stop()


@pytest.mark.parametrize(
    ("vendor", "env_expect", "node_expect", "mount_expect"),
    [
        (Vendor.ASCEND, {"ASCEND_VISIBLE_DEVICES": "1", "ASCEND_RT_VISIBLE_DEVICES": "0",
                         "LD_LIBRARY_PATH": "/usr/local/Ascend/driver/lib64"},
         {"/dev/davinci1", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"}, "/usr/local/Ascend/driver"),
        (Vendor.HYGON, {"HIP_VISIBLE_DEVICES": "0"}, {"/dev/kfd", "/dev/dri/card1", "/dev/dri/renderD129"},
         "/opt/hyhal"),
        (Vendor.CAMBRICON, {"MLU_VISIBLE_DEVICES": "0"}, {"/dev/cambricon_dev1", "/dev/cambricon_ctl"},
         "/usr/bin/cnmon"),
    ],
)
def test_allocate_per_vendor(vendor: Vendor, env_expect: dict[str, str], node_expect: set[str],
                             mount_expect: str) -> None:
    with node_env() as env:
        devs = [device(vendor, 0, 64), device(vendor, 1, 32)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            p = demand("job", 8, created_ms=1)
            env.pods.add(p)
            [resp] = env.sim.admit(_sim_pod(p), RESOURCE)
            for k, v in env_expect.items():
                assert resp.envs[k].startswith(v), (k, resp.envs[k])
            assert node_expect <= {d.host_path for d in resp.devices}
            assert mount_expect in {m.container_path for m in resp.mounts}
            host_quota = {m.container_path: m.host_path for m in resp.mounts}[resp.envs["HCS_QUOTA_FILE"]]
            env.sim.start_container("default", "job", "main")
            assert Path(host_quota).read_text() == f"0 {8 * GiB}\n"
        finally:
            agent.stop()


def test_several_pending_pods_resolved_at_prestart_through_cdi() -> None:
    with node_env() as env:
        devs = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 80)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            a, b = demand("a", 60, created_ms=1), demand("b", 60, created_ms=2)
            env.pods.add(a)
            env.pods.add(b)
            expected = {x.pod.uid: g.devices[0].uuid for x in agent.source.assignments() for g in x.containers}
            assert expected["uid-a"] != expected["uid-b"]
            # the kubelet admits b first: two candidates, so Allocate defers to CDI
            [resp_b] = env.sim.admit(_sim_pod(b), RESOURCE)
            assert not resp_b.envs and len(resp_b.cdi_devices) == 1
            name = resp_b.cdi_devices[0].name
            kind, slot = name.split("=")
            assert kind == "ai.compute/slot"
            spec_file = Path(env.config.cdiDir) / f"ai.compute-slot-{slot}.json"
            assert not spec_file.exists()
            env.sim.start_container("default", "b", "main")
            spec = json.loads(spec_file.read_text())
            assert spec["kind"] == "ai.compute/slot" and spec["devices"][0]["name"] == slot
            cenv = dict(e.split("=", 1) for e in spec["devices"][0]["containerEdits"]["env"])
            assert cenv["NVIDIA_VISIBLE_DEVICES"] == expected["uid-b"]
            quota_host = {m["containerPath"]: m["hostPath"]
                          for m in spec["devices"][0]["containerEdits"]["mounts"]}[cenv["HCS_QUOTA_FILE"]]
            assert Path(quota_host).read_text() == f"0 {60 * GiB}\n"
            # now a is the only candidate: exact
            [resp_a] = env.sim.admit(_sim_pod(a), RESOURCE)
            assert resp_a.envs["NVIDIA_VISIBLE_DEVICES"] == expected["uid-a"]
            # both devices hold 60 GiB: never the same device twice
            assert agent.core.vram_allocated() == {"nvidia-0": (60 * GiB, 1), "nvidia-1": (60 * GiB, 1)}
        finally:
            agent.stop()


def test_without_cdi_oldest_pending_pod_is_assumed() -> None:
    with node_env(cdiEnabled=False) as env:
        devs = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 80)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            a, b = demand("a", 60, created_ms=1), demand("b", 60, created_ms=2)
            env.pods.add(b)
            env.pods.add(a)
            expected = {x.pod.uid: g.devices[0].uuid for x in agent.source.assignments() for g in x.containers}
            [resp] = env.sim.admit(_sim_pod(a), RESOURCE)
            assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == expected["uid-a"] and not resp.cdi_devices
        finally:
            agent.stop()


def test_multi_container_pod_gets_each_containers_assignment() -> None:
    with node_env() as env:
        devs = [device(Vendor.NVIDIA, 0, 80)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            p = demand("two", 10, created_ms=1, containers=("a", "b"))
            env.pods.add(p)
            resps = env.sim.admit(_sim_pod(p, ("a", "b")), RESOURCE)
            quotas = [{m.container_path: m.host_path for m in r.mounts}[r.envs["HCS_QUOTA_FILE"]] for r in resps]
            assert quotas[0] != quotas[1] and quotas[0].endswith("_a.quota") and quotas[1].endswith("_b.quota")
            assert agent.core.vram_allocated() == {"nvidia-0": (20 * GiB, 2)}
        finally:
            agent.stop()


def test_prestart_makes_sure_of_the_containers_files() -> None:
    """Allocate writes the quota file and shm dir after its reply; PreStartContainer, which the
    kubelet calls right before creating the container (whose mounts they are), re-creates them if
    they are gone and fails the container with a clear error if they cannot be written."""
    import shutil

    with node_env() as env:
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80)], pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            env.pods.add(p := demand("f", 8, created_ms=1))
            [resp] = env.sim.admit(_sim_pod(p), RESOURCE)
            mounts = {m.container_path: Path(m.host_path) for m in resp.mounts}
            quota, shm = mounts[resp.envs["HCS_QUOTA_FILE"]], mounts[resp.envs["HCS_SHM_DIR"]]
            agent.core.flush()
            assert quota.read_text() == f"0 {8 * GiB}\n" and shm.is_dir()  # written after the reply
            quota.unlink()
            shutil.rmtree(shm)
            env.sim.start_container("default", "f", "main")
            assert quota.read_text() == f"0 {8 * GiB}\n" and shm.is_dir()

            quota.unlink()
            shutil.rmtree(env.config.quotaDir)
            Path(env.config.quotaDir).write_text("not a directory")
            with pytest.raises(AdmissionError, match="cannot write the quota file"):
                env.sim.start_container("default", "f", "main")
            assert agent.core.allocations()  # the allocation stays; the kubelet retries the start
        finally:
            agent.stop()


def test_bad_input_never_crashes_the_agent() -> None:
    with node_env() as env:
        devs = [device(Vendor.NVIDIA, 0, 80), device(Vendor.NVIDIA, 1, 80)]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            with pytest.raises(grpc.RpcError) as err:
                env.sim.allocate_raw(RESOURCE, ["gpu-does-not-exist"])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown ai.compute/slot IDs" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:  # nothing pending on this node
                env.sim.allocate_raw(RESOURCE, ["s000"])
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "no pending HCS assignment" in err.value.details()
            # garbage on the plugin socket
            for junk in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(env.config.plugin_socket)
                s.sendall(junk)
                s.close()
            # an unhealthy device's slots are refused
            agent.view.set_health("nvidia-0", Health(0, ("test",)))
            env.sim.wait_health(RESOURCE, "s000", "Unhealthy")
            with pytest.raises(grpc.RpcError) as err:
                env.sim.allocate_raw(RESOURCE, ["s000"])
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            # still serving: a real admission works
            p = demand("ok", 8, created_ms=1)
            env.pods.add(p)
            [resp] = env.sim.admit(_sim_pod(p), RESOURCE)
            assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == "NVIDIA-UUID-0001"  # the healthy one
        finally:
            agent.stop()


def test_pod_admitted_without_assignment_is_refused_at_prestart() -> None:
    with node_env() as env:
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80)], pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            real = demand("real", 8, created_ms=1)
            env.pods.add(real)
            intruder = SimPod("default", "intruder", "uid-x", (("main", 1),))
            env.sim.admit(intruder, RESOURCE)  # exact guess: the only candidate is "real"
            with pytest.raises(AdmissionError, match="refusing to start"):
                env.sim.start_container("default", "intruder", "main")
        finally:
            agent.stop()


def test_preferred_allocation_prefers_candidate_device_then_island_then_numa() -> None:
    from dataclasses import replace

    from hcs.api.gen.deviceplugin.v1beta1 import api_pb2 as dp

    with node_env(slotsPerDevice=2) as env:
        devs = [replace(device(Vendor.NVIDIA, 0, 80, numa=0), island="isl-a"),
                replace(device(Vendor.NVIDIA, 1, 80, numa=1), island="isl-b"),
                replace(device(Vendor.NVIDIA, 2, 80, numa=1), island="isl-a"),
                replace(device(Vendor.NVIDIA, 3, 40, numa=0), island="isl-b")]
        agent = NodeAgent(env.config, devs, pod_lister=env.pods).start()
        try:
            env.sim.wait_registered(RESOURCE)
            core = agent.core
            everything = [s.id for s in core.slots]  # s000,s001: nvidia-0 ... s006,s007: nvidia-3

            def pref(must: list[str], size: int) -> list[str]:
                r = core.preferred(dp.PreferredAllocationRequest(container_requests=[
                    dp.ContainerPreferredAllocationRequest(available_deviceIDs=everything,
                                                           must_include_deviceIDs=must, allocation_size=size)]))
                return list(r.container_responses[0].deviceIDs)

            assert pref([], 1) == ["s000"]  # no candidate: lowest ID
            assert pref(["s000"], 3) == ["s000", "s001", "s004"]  # then nvidia-2, same island isl-a
            assert pref(["s002"], 2) == ["s002", "s003"]
            p = demand("small", 30, created_ms=1)
            env.pods.add(p)  # best fit: the 40 GiB nvidia-3 → its slots first
            assert pref([], 1) == ["s006"]
        finally:
            agent.stop()


def test_stop_does_not_wait_for_queued_allocator_calls_when_the_allocator_is_gone() -> None:
    """helm uninstall's hook stops the allocator before the DaemonSet's agents: an agent with many queued
    Release calls (each waits up to 5 s for an allocator) still stops well inside its grace period, so it
    removes its device-plugin socket instead of being cut off (it took 20 s and exited 1 before)."""
    import threading

    from hcs.node.sources import AllocatorAssignmentSource

    with node_env() as env:
        source = AllocatorAssignmentSource(f"unix://{env.root}/no-allocator.sock", "node-a")
        agent = NodeAgent(env.config, [device(Vendor.NVIDIA, 0, 80)], source=source).start()
        try:
            for i in range(20):
                agent.core._tell_source(source.release, f"uid-{i}")
            agent.core.release_background()
            stopper = threading.Thread(target=agent.stop, daemon=True)
            stopper.start()
            stopper.join(30)  # 20 queued calls x 5 s would be 100 s
            assert not stopper.is_alive()
            assert not Path(env.config.plugin_socket).exists()
        finally:
            source.close()
