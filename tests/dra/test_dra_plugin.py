"""The DRA kubelet plugin over real unix sockets, driven by the DRA-kubelet simulator.

Claims come from an in-memory store here (these tests are about sockets, files and the
checkpoint); the API-server path is covered by test_dra_cluster.py against a real kube-apiserver.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dra_helpers import (  # noqa: E402
    GiB,
    HealthCollector,
    PluginEnv,
    claim_object,
    count_claim_reads,
    make_device,
    new_uid,
)

from hcs.api.gen.drahealth.v1alpha1 import api_pb2 as hpb  # noqa: E402
from hcs.devices.model import Health  # noqa: E402
from hcs.kubeletsim.dra import DraKubeletSim  # noqa: E402
from hcs.node import cdi  # noqa: E402
from hcs.node.dra import checkpoint as ckpt  # noqa: E402
from hcs.node.dra.config import DraConfig  # noqa: E402
from hcs.node.dra.plugin import SUPPORTED_VERSIONS, DraPlugin  # noqa: E402
from hcs.testing.kube_objects import wait_for  # noqa: E402

NODE = "node-a"
DRIVER = "ai.compute"


class Env(PluginEnv):
    """Counts claim fetches (the batch test wants one list per namespace, not one GET per claim)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.reads = count_claim_reads(self.claims)

    @property
    def fetches(self) -> int:
        return len(self.reads)

    def claim(self, device: str = "nvidia-1", memory: str | None = "16Gi", *, name: str | None = None,
              **over) -> tuple[str, str, str]:
        result = {"request": "gpu", "device": device, **over}
        if memory:
            result["consumedCapacity"] = {"memory": memory, "tflopsFP16": "0"}
        return self.add_claim([result], name)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def test_registration_advertises_versions_and_sockets(env):
    plugin = env.start()
    assert plugin.registered.wait(2)
    p = env.sim.plugins[DRIVER]
    assert p.supported == SUPPORTED_VERSIONS and p.service == "v1.DRAPlugin"
    assert p.endpoint == str(env.cfg.dra_socket) and p.health_stream
    assert env.cfg.registration_socket.is_socket() and env.cfg.dra_socket.is_socket()
    env.stop()
    assert not env.cfg.registration_socket.exists() and not env.cfg.dra_socket.exists()


def test_stale_sockets_are_replaced(env):
    env.cfg.data_dir.mkdir(parents=True)
    Path(env.cfg.plugins_registry).mkdir(parents=True)
    env.cfg.dra_socket.write_text("stale")
    env.cfg.registration_socket.write_text("stale")
    env.start()
    assert env.cfg.dra_socket.is_socket() and env.cfg.registration_socket.is_socket()


def test_prepare_writes_cdi_spec_and_quota_and_unprepare_removes(env):
    env.start()
    ref = env.claim("nvidia-1", "16Gi", shareID="share-1")
    out = env.sim.prepare(DRIVER, [ref])[ref[1]]
    assert out.error == ""
    (dev,) = out.devices
    assert (dev.pool_name, dev.device_name, list(dev.request_names), dev.share_id) == (NODE, "nvidia-1", ["gpu"],
                                                                                          "share-1")
    assert list(dev.cdi_device_ids) == [f"ai.compute/device={ref[1]}-gpu"]
    (spec_path,) = env.cdi_files()
    assert spec_path.name == f"ai.compute-device_{ref[1]}.json"
    spec = json.loads(spec_path.read_text())
    assert cdi.validate_spec(spec) == []
    edits = spec["devices"][0]["containerEdits"]
    env_vars = dict(e.split("=", 1) for e in edits["env"])
    assert env_vars["CUDA_VISIBLE_DEVICES"] == env.devices[1].uuid
    assert env_vars["LD_PRELOAD"] == "/usr/local/hcs/lib/libhcs_interceptor.so"
    quota_mount = next(m for m in edits["mounts"] if m["containerPath"] == env_vars["HCS_QUOTA_FILE"])
    assert Path(quota_mount["hostPath"]).read_text() == f"0 {16 * GiB}\n" and "ro" in quota_mount["options"]
    # device nodes that do not exist on this host are left out rather than failing the container (a host
    # prepared for the chart e2e may have mknod-made /dev/nvidia* nodes; the rule is the same either way)
    wanted = [p for p in ("/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
              if os.path.exists(p)]
    assert [n["path"] for n in edits.get("deviceNodes", [])] == wanted
    res = env.sim.unprepare(DRIVER, [ref])
    assert res[ref[1]].error == ""
    assert env.cdi_files() == [] and not Path(quota_mount["hostPath"]).exists()


def test_whole_device_claim_gets_full_quota_and_existing_device_nodes(env, tmp_path):
    node = tmp_path / "nvidia0"
    node.write_text("")
    env.devices = [replace(env.devices[0], device_nodes=(str(node),)), *env.devices[1:]]
    env.start()
    ref = env.claim("nvidia-0", memory=None)
    assert env.sim.prepare(DRIVER, [ref])[ref[1]].error == ""
    edits = json.loads(env.cdi_files()[0].read_text())["devices"][0]["containerEdits"]
    controls = [p for p in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools") if os.path.exists(p)]
    assert [n["path"] for n in edits["deviceNodes"]] == [str(node), *controls]  # only nodes that exist
    quota = next(m for m in edits["mounts"] if m["containerPath"] == "/var/run/hcs/quota")
    assert Path(quota["hostPath"]).read_text() == f"0 {80 * GiB}\n"


def test_partitioned_mode_prepares_a_partition_with_its_size_as_quota(env):
    env.cfg = replace(env.cfg, mode="partitioned", partition_bytes=(20 * GiB,))
    env.start()
    ref = env.claim("nvidia-2-20gi-3", memory=None)
    out = env.sim.prepare(DRIVER, [ref])[ref[1]]
    assert out.error == "" and out.devices[0].device_name == "nvidia-2-20gi-3"
    edits = json.loads(env.cdi_files()[0].read_text())["devices"][0]["containerEdits"]
    assert dict(e.split("=", 1) for e in edits["env"])["CUDA_VISIBLE_DEVICES"] == env.devices[2].uuid
    quota = next(m for m in edits["mounts"] if m["containerPath"] == "/var/run/hcs/quota")
    assert Path(quota["hostPath"]).read_text() == f"0 {20 * GiB}\n"


def test_prepare_is_idempotent_and_unknown_unprepare_succeeds(env):
    env.start()
    ref = env.claim()
    first = env.sim.prepare(DRIVER, [ref])[ref[1]]
    second = env.sim.prepare(DRIVER, [ref])[ref[1]]
    assert first == second and env.fetches == 1 and len(env.cdi_files()) == 1
    assert env.sim.unprepare(DRIVER, [("ns", new_uid(), "never-prepared")]).popitem()[1].error == ""
    env.sim.unprepare(DRIVER, [ref])
    assert env.sim.unprepare(DRIVER, [ref])[ref[1]].error == ""


def test_v1beta1_service(env):
    env.sim.known_services = ("v1beta1.DRAPlugin",)
    env.start()
    assert env.sim.plugins[DRIVER].service == "v1beta1.DRAPlugin"
    ref = env.claim()
    out = env.sim.prepare(DRIVER, [ref])[ref[1]]
    assert out.error == "" and out.devices[0].device_name == "nvidia-1"
    assert env.sim.unprepare(DRIVER, [ref])[ref[1]].error == "" and env.cdi_files() == []


def test_bad_claims_get_clear_errors_and_leak_nothing(env):
    env.start()
    good = env.claim("nvidia-0")
    uid_other_driver = new_uid()
    env.claims.add(claim_object("ns", "other-driver", uid_other_driver, NODE,
                                [{"request": "gpu", "device": "gpu-0"}], driver="gpu.example.com"))
    uid_other_node = new_uid()
    env.claims.add(claim_object("ns", "other-node", uid_other_node, "node-b",
                                [{"request": "gpu", "device": "nvidia-0"}]))
    replaced = env.claim(name="replaced")
    unallocated_uid = new_uid()
    env.claims.add({"metadata": {"namespace": "ns", "name": "pending", "uid": unallocated_uid}, "status": {}})
    unknown_dev = env.claim("nvidia-9")
    bad_qty = env.claim(memory="lots")
    refs = [good, ("ns", uid_other_driver, "other-driver"), ("ns", uid_other_node, "other-node"),
            ("ns", new_uid(), "replaced"), ("ns", unallocated_uid, "pending"), ("ns", new_uid(), "deleted"),
            unknown_dev, bad_qty]
    out = env.sim.prepare(DRIVER, refs)
    errors = {name: out[uid].error for _, uid, name in refs}
    assert errors[good[2]] == ""
    assert "no devices allocated by driver ai.compute" in errors["other-driver"]
    assert "belongs to pool 'node-b'" in errors["other-node"]
    assert f"has UID {replaced[1]}" in errors["replaced"] and "re-created" in errors["replaced"]
    assert "not allocated" in errors["pending"]
    assert "not found" in errors["deleted"]
    assert "'nvidia-9' is not a device" in errors[unknown_dev[2]]
    assert "consumedCapacity.memory" in errors[bad_qty[2]]
    assert len(env.cdi_files()) == 1
    assert list(env.plugin.state.claims) == [good[1]]


def test_large_batch_uses_one_list_per_namespace(env):
    listed: list[str] = []

    def list_claims(ns: str):
        listed.append(ns)
        return [c for (n, _), c in env.claims.claims.items() if n == ns]

    env.claims.list_claims = list_claims  # type: ignore[attr-defined]
    env.start()
    refs = [env.claim(f"nvidia-{i % 4}", "1Gi") for i in range(9)]
    few = [env.claim("nvidia-0", "1Gi") for _ in range(2)]
    few = [("other", uid, name) for _, uid, name in few]
    for _, uid, name in few:
        env.claims.claims[("other", name)] = {**env.claims.claims.pop(("ns", name)),
                                              "metadata": {"namespace": "other", "name": name, "uid": uid}}
    gone = ("ns", new_uid(), "gone")
    out = env.sim.prepare(DRIVER, [*refs, *few, gone])
    assert listed == ["ns"] and env.fetches == 2  # one LIST for 10 claims in ns, 2 GETs in "other"
    assert all(out[r[1]].error == "" for r in refs + few) and "not found" in out[gone[1]].error


def test_unwritable_cdi_dir_is_a_claim_error_without_leftovers(env):
    (env.tmp / "cdi").write_text("not a directory")  # every spec write fails
    env.start()
    refs = [env.claim(f"nvidia-{i}") for i in range(2)]
    out = env.sim.prepare(DRIVER, refs)
    assert all("writing the CDI spec or quota file failed" in out[r[1]].error for r in refs)
    assert env.plugin.state.claims == {} and list((env.cfg.data_dir / "claims").iterdir()) == []
    (env.tmp / "cdi").unlink()
    assert all(o.error == "" for o in env.sim.prepare(DRIVER, refs).values())


def test_api_server_down_is_a_retryable_claim_error(env):
    env.start()
    ref = env.claim()
    env.claims.down = True
    out = env.sim.prepare(DRIVER, [ref])[ref[1]]
    assert "API server" in out.error and "retry" in out.error and env.cdi_files() == []
    env.claims.down = False
    assert env.sim.prepare(DRIVER, [ref])[ref[1]].error == ""


def test_restart_restores_checkpoint_and_unprepare_works(env):
    env.start()
    refs = [env.claim(f"nvidia-{i}") for i in range(3)]
    out = env.sim.prepare(DRIVER, refs)
    assert all(o.error == "" for o in out.values())
    env.stop()  # agent goes away between prepare and unprepare
    env.sim.close()
    env.start()
    assert set(env.plugin.state.claims) == {r[1] for r in refs}
    again = env.sim.prepare(DRIVER, refs[:1])  # kubelet repeats prepare after a restart: same answer
    assert again[refs[0][1]] == out[refs[0][1]]
    res = env.sim.unprepare(DRIVER, refs)
    assert all(o.error == "" for o in res.values()) and env.cdi_files() == []


def test_corrupt_checkpoint_is_rebuilt_from_cdi_specs(env):
    env.start()
    refs = [env.claim(f"nvidia-{i}") for i in range(2)]
    env.sim.prepare(DRIVER, refs)
    env.stop()
    path = env.cfg.data_dir / "checkpoint.json"
    path.write_text(path.read_text()[:40])  # truncated
    env.start()
    assert any("corrupt" in n for n in env.plugin.recovery_notes)
    assert list(env.cfg.data_dir.glob("checkpoint.json.corrupt-*"))
    assert set(env.plugin.state.claims) == {r[1] for r in refs}
    assert all(o.error == "" for o in env.sim.unprepare(DRIVER, refs).values())
    assert env.cdi_files() == []


def test_crash_mid_prepare_and_leaked_specs_are_cleaned(env):
    env.cfg.data_dir.mkdir(parents=True)
    cdi_dir = env.tmp / "cdi"
    cdi_dir.mkdir()
    half = cdi_dir / "ai.compute-device_half.json"
    half.write_text("{}")
    leaked = cdi_dir / "ai.compute-device_leaked.json"
    leaked.write_text("{}")
    foreign = cdi_dir / "nvidia.com-gpu.json"
    foreign.write_text("{}")
    ckpt.save(env.cfg.data_dir / "checkpoint.json", {"half": ckpt.ClaimEntry(
        uid="half", namespace="ns", name="h", state=ckpt.STARTED, cdi_spec=str(half),
        claim_dir=str(env.cfg.data_dir / "claims" / "half"))})
    env.start()
    assert not half.exists() and not leaked.exists() and foreign.exists()
    assert env.plugin.state.claims == {}


def test_batch_of_100_claims_and_concurrent_callers(env):
    env.start()
    refs = [env.claim(f"nvidia-{i % 4}", "1Gi") for i in range(100)]
    out = env.sim.prepare(DRIVER, refs)
    assert len(out) == 100 and all(o.error == "" for o in out.values())
    assert len(env.cdi_files()) == 100
    more = [env.claim("nvidia-2", "2Gi") for _ in range(12)]
    errs: list[str] = []

    def worker(r):
        errs.append(env.sim.prepare(DRIVER, [r])[r[1]].error)

    threads = [threading.Thread(target=worker, args=(r,)) for r in more]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errs == [""] * 12
    assert set(ckpt.load(env.cfg.data_dir / "checkpoint.json")) == {r[1] for r in refs + more}
    env.sim.unprepare(DRIVER, refs + more)
    assert env.cdi_files() == []


def test_kubelet_giving_up_mid_prepare_then_retrying(env):
    import grpc

    env.start()
    ref = env.claim()
    code = None
    for _ in range(5):  # a 0.1 ms deadline nearly always expires mid-call; if the call won the race, again
        env.sim.timeout_s = 0.0001
        try:
            env.sim.prepare(DRIVER, [ref])
        except grpc.RpcError as e:
            code = e.code()
            break
        finally:
            env.sim.timeout_s = 45.0
        assert env.sim.unprepare(DRIVER, [ref])[ref[1]].error == ""
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    out = env.sim.prepare(DRIVER, [ref])[ref[1]]
    assert out.error == "" and len(env.cdi_files()) == 1
    assert env.sim.unprepare(DRIVER, [ref])[ref[1]].error == "" and env.cdi_files() == []


def test_health_stream_and_taint(env):
    env.start()
    collector = HealthCollector(env.sim.watch_health(DRIVER))
    assert collector.wait_for("nvidia-2", hpb.HEALTHY, 5)
    env.plugin.set_health("nvidia-2", Health(score=0, reasons=("xid 79: fell off the bus",)))
    assert collector.wait_for("nvidia-2", hpb.UNHEALTHY, 5)
    assert collector.latest["nvidia-1"] == hpb.HEALTHY
    slices = env.plugin._desired_slices()
    tainted = [d["name"] for s in slices for d in s.spec["devices"] if d.get("taints")]
    assert tainted == ["nvidia-2"]
    env.plugin.set_health("nvidia-2", Health())
    assert collector.wait_for("nvidia-2", hpb.HEALTHY, 5)


class QueueHealth:
    def __init__(self) -> None:
        self.items: list[object] = []
        self.cv = threading.Condition()

    def push(self, change: object) -> None:
        with self.cv:
            self.items.append(change)
            self.cv.notify_all()

    def wait(self, timeout_s: float = 0.2) -> list[object]:
        with self.cv:
            if not self.items:
                self.cv.wait(timeout_s)
            out, self.items = self.items, []
            return out


def test_health_source_drives_stream(env):
    from types import SimpleNamespace

    src = QueueHealth()
    env.start(health_source=src)
    collector = HealthCollector(env.sim.watch_health(DRIVER))
    assert collector.wait_for("nvidia-3", hpb.HEALTHY, 5)
    src.push(SimpleNamespace(device_key="nvidia-3", old=Health(), new=Health(score=20, reasons=("ecc double",))))
    assert collector.wait_for("nvidia-3", hpb.UNHEALTHY, 5)


def test_registration_socket_recreated_after_wipe_and_garbage_survived(env):
    env.start()
    env.cfg.registration_socket.unlink()
    env.sim.close()
    env.sim.register(timeout_s=5)  # the plugin serves a new registration socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(env.cfg.dra_socket))
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 4)
    ref = env.claim()
    assert env.sim.prepare(DRIVER, [ref])[ref[1]].error == ""


def test_api_server_outage_does_not_crash_the_plugin(tmp_path):
    """An unreachable API server: publishing retries, prepare returns a per-claim error."""
    from kubernetes import client as kclient

    conf = kclient.Configuration()
    conf.host = "https://127.0.0.1:1"  # nothing listens here
    api = kclient.ApiClient(conf)
    cfg = DraConfig(node_name="nowhere", plugins_registry=str(tmp_path / "r"), plugin_dir=str(tmp_path / "p"),
                    cdi_dir=str(tmp_path / "c"), resync_s=0.5)
    plugin = DraPlugin(cfg, [make_device()], api)
    plugin.start()
    sim = DraKubeletSim(tmp_path / "r")
    try:
        sim.register()
        out = sim.prepare(DRIVER, [("ns", new_uid(), "x")])
        assert "API server" in next(iter(out.values())).error
        assert plugin.slices is not None
        assert wait_for(lambda: "unreachable" in plugin.slices.last_error, 20), plugin.slices.last_error
        plugin.update_devices([replace(make_device(), index=1)])  # still accepts updates
    finally:
        sim.close()
        plugin.stop()
