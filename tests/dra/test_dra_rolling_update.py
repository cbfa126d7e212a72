"""Rolling updates of the DRA plugin: two plugin pods (old and new) on one node at once.

Real unix sockets and gRPC, driven by the DRA-kubelet simulator, which keeps every registration of
a driver and calls the newest, like the kubelet >= 1.33. Claims come from an in-memory store.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dra_helpers import MemoryClaims, claim_object, make_devices, new_uid  # noqa: E402

from hcs.errors import ConfigError  # noqa: E402
from hcs.kubeletsim.dra import DraKubeletSim  # noqa: E402
from hcs.node.dra import checkpoint as ckpt  # noqa: E402
from hcs.node.dra.config import MAX_SOCKET_PATH, DraConfig  # noqa: E402
from hcs.node.dra.plugin import DraPlugin  # noqa: E402
from hcs.testing.kube_objects import wait_for  # noqa: E402

NODE = "node-a"
DRIVER = "ai.compute"


class Node:
    """One node's kubelet dirs shared by several plugin instances (pods)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "lib").mkdir()
        self.registry = tmp / "registry"
        self.base = DraConfig(node_name=NODE, plugins_registry=str(self.registry), plugin_dir=str(tmp / "plugin"),
                              cdi_dir=str(tmp / "cdi"), interceptor_host_dir=str(tmp / "lib"))
        self.claims = MemoryClaims()
        self.devices = make_devices(4)
        self.sim = DraKubeletSim(self.registry)
        self.plugins: list[DraPlugin] = []

    def cfg(self, pod_uid: str) -> DraConfig:
        return replace(self.base, rolling_update=True, pod_uid=pod_uid)

    def start(self, pod_uid: str) -> DraPlugin:
        p = DraPlugin(self.cfg(pod_uid), self.devices, None, claim_source=self.claims)
        p.start()
        self.plugins.append(p)
        return p

    def stop(self, p: DraPlugin) -> None:
        p.stop()
        self.plugins.remove(p)

    def claim(self, device: str = "nvidia-1") -> tuple[str, str, str]:
        uid = new_uid()
        name = f"c-{uid[:8]}"
        self.claims.add(claim_object("ns", name, uid, NODE, [
            {"request": "gpu", "device": device, "consumedCapacity": {"memory": "8Gi"}}]))
        return ("ns", uid, name)

    def checkpoint(self) -> set[str]:
        return set(ckpt.load(self.base.data_dir / "checkpoint.json"))

    def cdi_files(self) -> list[Path]:
        d = self.tmp / "cdi"
        return sorted(d.glob("*.json")) if d.exists() else []


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path)
    yield n
    for p in list(n.plugins):
        n.stop(p)
    n.sim.close()


def _stale_socket(path: Path) -> None:
    """A socket file nobody listens on (what a killed process leaves behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def _ino(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns)


# ----------------------------------------------------------------------- config


def test_socket_names_follow_the_mode_and_the_pod_uid(tmp_path):
    plain = DraConfig(node_name=NODE, plugins_registry="/r", plugin_dir="/p")
    assert (str(plain.registration_socket), str(plain.dra_socket)) == ("/r/ai.compute-reg.sock", "/p/dra.sock")
    rolling = replace(plain, rolling_update=True, pod_uid="0b9e0e6e-1f4d-4c4b-9c8e-3a1d7e2f5a10")
    assert str(rolling.registration_socket) == "/r/ai.compute-0b9e0e6e-1f4d-4c4b-9c8e-3a1d7e2f5a10-reg.sock"
    assert str(rolling.dra_socket) == "/p/dra-0b9e0e6e-1f4d-4c4b-9c8e-3a1d7e2f5a10.sock"


def test_long_paths_fall_back_to_hashed_names_that_fit_af_unix():
    deep = "/var/lib/kubelet/" + "d" * 30
    uid = "0b9e0e6e-1f4d-4c4b-9c8e-3a1d7e2f5a10"
    cfg = DraConfig(node_name=NODE, plugins_registry=deep + "/plugins_registry",
                    plugin_dir=deep + "/plugins/" + "x" * 20, rolling_update=True, pod_uid=uid)
    reg, dra = str(cfg.registration_socket), str(cfg.dra_socket)
    assert len(reg) <= MAX_SOCKET_PATH and len(dra) <= MAX_SOCKET_PATH
    assert uid not in reg and uid not in dra, "the full UID would not fit: hashed"
    assert reg.endswith("-reg.sock") and Path(reg).name.startswith("ai.compute-")
    assert Path(dra).name.startswith("dra-") and not Path(reg).name.startswith(".")
    # stable (a restarted container of the same pod finds and replaces its own stale socket) and per pod
    again = DraConfig(node_name=NODE, plugins_registry=cfg.plugins_registry, plugin_dir=cfg.plugin_dir,
                      rolling_update=True, pod_uid=uid)
    other = replace(cfg, pod_uid="9f1c2d3e-0000-4000-8000-000000000000")
    assert again.registration_socket == cfg.registration_socket and again.dra_socket == cfg.dra_socket
    assert other.registration_socket != cfg.registration_socket and other.dra_socket != cfg.dra_socket
    # a 63-character driver name: the last fallback hashes the driver name too
    long_driver = replace(cfg, driver_name="d" * 63, plugins_registry="/var/lib/kubelet/" + "r" * 40)
    assert len(str(long_driver.registration_socket)) <= MAX_SOCKET_PATH


def test_rolling_update_config_is_validated_with_clear_errors():
    with pytest.raises(ConfigError, match=r"rollingUpdate.*POD_UID.*downward API.*metadata\.uid"):
        DraConfig.from_mapping({"rollingUpdate": True}, node_name=NODE, environ={})
    with pytest.raises(ConfigError, match="POD_UID"):
        DraConfig(node_name=NODE, rolling_update=True)
    with pytest.raises(ConfigError, match=r"podUID.*not a pod UID"):
        DraConfig.from_mapping({"rollingUpdate": True, "podUID": "../x"}, node_name=NODE, environ={})
    with pytest.raises(ConfigError, match=r"rollingUpdate: expected true or false"):
        DraConfig.from_mapping({"rollingUpdate": "yes"}, node_name=NODE, environ={})
    with pytest.raises(ConfigError, match=r"node\.dra\.pluginsRegistry:.*unix sockets allow 107.*shorter"):
        DraConfig.from_mapping({"rollingUpdate": True, "pluginsRegistry": "/" + "r" * 120}, node_name=NODE,
                               environ={"POD_UID": "u-1"})
    # the pod UID comes from the downward API env by default; podUID overrides it
    cfg = DraConfig.from_mapping({"rollingUpdate": True}, node_name=NODE, environ={"POD_UID": "uid-env"})
    assert cfg.rolling_update and cfg.pod_uid == "uid-env"
    cfg = DraConfig.from_mapping({"rollingUpdate": True, "podUID": "uid-cfg"}, node_name=NODE,
                                 environ={"POD_UID": "uid-env"})
    assert cfg.pod_uid == "uid-cfg" and cfg.registration_socket.name == "ai.compute-uid-cfg-reg.sock"
    # off by default: today's names even when POD_UID is set
    cfg = DraConfig.from_mapping({}, node_name=NODE, environ={"POD_UID": "uid-env"})
    assert not cfg.rolling_update and cfg.registration_socket.name == "ai.compute-reg.sock"
    assert cfg.dra_socket.name == "dra.sock"


# ---------------------------------------------------------------- two pods at once


def test_two_pods_register_side_by_side_and_the_old_one_leaves_cleanly(node):
    old = node.start("pod-old")
    (reg_old,) = node.sim.register_new()
    assert reg_old.endpoint == str(old.cfg.dra_socket) and old.registered.wait(2)
    x = node.claim("nvidia-0")
    assert node.sim.prepare(DRIVER, [x])[x[1]].error == ""  # through the old pod

    new = node.start("pod-new")  # the DaemonSet surge: the new pod starts before the old one stops
    (reg_new,) = node.sim.register_new()
    assert new.registered.wait(2)
    socks = sorted(p.name for p in node.registry.glob("*.sock"))
    assert socks == ["ai.compute-pod-new-reg.sock", "ai.compute-pod-old-reg.sock"]
    assert old.cfg.dra_socket.is_socket() and new.cfg.dra_socket.is_socket()
    assert node.sim.plugins[DRIVER] is reg_new, "the kubelet calls the newest registration"

    # the new pod knows the old pod's claim (shared checkpoint): a repeat is answered without a fetch
    again = node.sim.prepare(DRIVER, [x])[x[1]]
    assert again.error == "" and [d.device_name for d in again.devices] == ["nvidia-0"]
    y = node.claim("nvidia-1")
    assert node.sim.prepare(DRIVER, [y])[y[1]].error == ""
    # a late call still reaching the old pod must not drop the new pod's claim from the checkpoint
    node.sim.plugins[DRIVER] = reg_old
    z = node.claim("nvidia-2")
    assert node.sim.prepare(DRIVER, [z])[z[1]].error == ""
    node.sim.plugins[DRIVER] = reg_new
    assert node.checkpoint() == {x[1], y[1], z[1]} and len(node.cdi_files()) == 3

    node.stop(old)
    assert not old.cfg.registration_socket.exists() and not old.cfg.dra_socket.exists()
    assert new.cfg.registration_socket.is_socket() and new.cfg.dra_socket.is_socket()
    assert node.sim.forget_removed() == ["ai.compute-pod-old-reg.sock"]
    assert node.sim.plugins[DRIVER] is reg_new
    time.sleep(1.2)  # two socket-watch rounds of the new pod: nothing of the old pod comes back
    assert sorted(p.name for p in node.registry.glob("*.sock")) == ["ai.compute-pod-new-reg.sock"]

    # the new pod keeps serving, including unprepare of the claims the old pod prepared
    out = node.sim.unprepare(DRIVER, [x, y, z])
    assert all(o.error == "" for o in out.values())
    assert node.checkpoint() == set() and node.cdi_files() == []
    assert list((node.base.data_dir / "claims").iterdir()) == []
    w = node.claim("nvidia-3")
    assert node.sim.prepare(DRIVER, [w])[w[1]].error == ""


def test_new_pod_deregistered_first_falls_back_to_the_old_one(node):
    old = node.start("pod-old")
    node.sim.register_new()
    new = node.start("pod-new")
    node.sim.register_new()
    node.stop(new)  # a failed rollout: the new pod goes, the old one stays
    assert node.sim.forget_removed() == ["ai.compute-pod-new-reg.sock"]
    assert node.sim.plugins[DRIVER].endpoint == str(old.cfg.dra_socket)
    x = node.claim()
    assert node.sim.prepare(DRIVER, [x])[x[1]].error == ""


def test_start_replaces_only_its_own_stale_sockets(node):
    mine = node.cfg("pod-a")
    theirs = node.cfg("pod-b")
    for s in (mine.registration_socket, mine.dra_socket, theirs.registration_socket, theirs.dra_socket):
        _stale_socket(s)
    their_inodes = (_ino(theirs.registration_socket), _ino(theirs.dra_socket))
    p = node.start("pod-a")
    reg = node.sim.register(mine.registration_socket.name)
    assert reg.endpoint == str(mine.dra_socket) and p.registered.wait(2)  # the stale one never listened
    assert (_ino(theirs.registration_socket), _ino(theirs.dra_socket)) == their_inodes, "another pod's: untouched"
    x = node.claim()
    assert node.sim.prepare(DRIVER, [x])[x[1]].error == ""
    node.stop(p)
    assert not mine.registration_socket.exists() and not mine.dra_socket.exists()
    assert (_ino(theirs.registration_socket), _ino(theirs.dra_socket)) == their_inodes


def test_socket_watchers_of_two_pods_do_not_fight(node):
    a = node.start("pod-a")
    b = node.start("pod-b")
    node.sim.register_new()
    b_inodes = (_ino(b.cfg.registration_socket), _ino(b.cfg.dra_socket))
    a.cfg.registration_socket.unlink()  # someone wiped pod a's registration socket
    assert wait_for(lambda: a.cfg.registration_socket.is_socket(), 3.0), "pod a re-creates its own socket"
    time.sleep(1.1)
    assert (_ino(b.cfg.registration_socket), _ino(b.cfg.dra_socket)) == b_inodes, "pod b's sockets untouched"
    assert sorted(p.name for p in node.registry.glob("*.sock")) == ["ai.compute-pod-a-reg.sock",
                                                                    "ai.compute-pod-b-reg.sock"]


def test_long_pod_uid_gives_hashed_names_that_serve(node):
    uid = "u" * 90
    cfg = node.cfg(uid)
    assert uid not in cfg.registration_socket.name and uid not in cfg.dra_socket.name
    assert len(str(cfg.registration_socket)) <= MAX_SOCKET_PATH and len(str(cfg.dra_socket)) <= MAX_SOCKET_PATH
    p = node.start(uid)
    reg = node.sim.register(cfg.registration_socket.name)
    assert reg.endpoint == str(cfg.dra_socket) and p.registered.wait(2)
    x = node.claim()
    assert node.sim.prepare(DRIVER, [x])[x[1]].error == ""


# ------------------------------------------------------------ cross-pod serialization

_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


def test_prepare_waits_for_the_flock_held_by_another_process(node):
    node.start("pod-a")
    node.sim.register_new()
    x = node.claim()
    lock = node.base.data_dir / "serialize.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result: dict[str, object] = {}
        t = threading.Thread(target=lambda: result.update(node.sim.prepare(DRIVER, [x])))
        t.start()
        t.join(0.5)
        assert t.is_alive() and not result, "prepare ran while another process held serialize.lock"
        assert node.cdi_files() == []
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        t.join(10)
        assert not t.is_alive() and result[x[1]].error == ""  # type: ignore[attr-defined]
    finally:
        holder.kill()
        holder.wait()


def test_two_pods_prepare_concurrently_without_losing_claims(node):
    """Calls reaching both pods at once (the kubelet switching registrations) stay serialized and
    every claim ends up in the shared checkpoint exactly once."""
    node.start("pod-a")
    (reg_a,) = node.sim.register_new()
    node.start("pod-b")
    (reg_b,) = node.sim.register_new()
    sims = []
    for reg in (reg_a, reg_b):
        s = DraKubeletSim(node.registry)
        s.plugins[DRIVER] = reg
        sims.append(s)
    refs = {0: [node.claim(f"nvidia-{i % 4}") for i in range(6)], 1: [node.claim(f"nvidia-{i % 4}") for i in range(6)]}
    errors: list[str] = []

    def run(i: int) -> None:
        for ref in refs[i]:
            errors.extend(o.error for o in sims[i].prepare(DRIVER, [ref]).values() if o.error)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    uids = {r[1] for rs in refs.values() for r in rs}
    assert node.checkpoint() == uids and len(node.cdi_files()) == 12
    data = json.loads((node.base.data_dir / "checkpoint.json").read_text())
    assert set(data["claims"]) == uids
    out = node.sim.unprepare(DRIVER, [r for rs in refs.values() for r in rs])
    assert all(o.error == "" for o in out.values()) and node.checkpoint() == set() and node.cdi_files() == []


def test_without_rolling_update_nothing_changes(node):
    p = DraPlugin(node.base, node.devices, None, claim_source=node.claims)
    p.start()
    node.plugins.append(p)
    node.sim.register()
    assert sorted(x.name for x in node.registry.glob("*.sock")) == ["ai.compute-reg.sock"]
    assert (node.base.data_dir / "dra.sock").is_socket()
    assert not p.state.shared
    x = node.claim()
    assert node.sim.prepare(DRIVER, [x])[x[1]].error == ""
    assert os.path.exists(node.base.data_dir / "serialize.lock")


# ------------------------------------------------------------------ the real kubelet

REAL_DRIVER = "kubelet-roll.ai.compute"  # its own name: other suites run ai.compute plugins on this node


@pytest.mark.cluster
@pytest.mark.slow
def test_real_kubelet_uses_the_new_pod_and_the_container_reads_its_metadata(kube_cluster, api_client, tmp_path):
    """The local cluster's kubelet registers both pods' sockets, sends the prepare to the newest, and
    containerd bind-mounts the KEP-5304 file at the protocol's path for a template claim."""
    import contextlib
    import os as _os

    from dra_helpers import make_device

    from hcs.devices.model import Vendor
    from hcs.kube import RESOURCE_API, KubeError, KubeRest
    from hcs.testing.cluster import busybox_pod
    from hcs.testing.kube_objects import delete_namespace, ensure_namespace

    if _os.geteuid() != 0:
        pytest.skip("the real kubelet's directories need root")
    base = DraConfig(
        node_name=kube_cluster.node_name, driver_name=REAL_DRIVER,
        plugins_registry=str(kube_cluster.kubelet_dir / "plugins_registry"),
        plugin_dir=str(kube_cluster.kubelet_dir / "plugins" / REAL_DRIVER), cdi_dir="/var/run/cdi",
        interceptor_host_dir="", device_isolation=False, rolling_update=True, pod_uid="x", device_metadata=True,
    )
    devices = [make_device(Vendor.NVIDIA, i, vram_gib=80) for i in range(2)]
    calls: dict[str, int] = {"old": 0, "new": 0}
    plugins: dict[str, DraPlugin] = {}
    rest = KubeRest(api_client)
    ns = f"hcs-dra-roll-{_os.getpid()}"
    try:
        for role in ("old", "new"):
            p = DraPlugin(replace(base, pod_uid=f"{role}-{_os.getpid()}"), devices, api_client)
            prepare = p.prepare

            def counted(refs, _role=role, _prepare=prepare):  # type: ignore[no-untyped-def]
                calls[_role] += 1
                return _prepare(refs)

            p.prepare = counted  # type: ignore[method-assign]
            p.start()
            plugins[role] = p
            assert p.registered.wait(30), f"the kubelet did not register the {role} pod: {p.registration_error}"
        new = plugins["new"]
        assert new.slices is not None and new.slices.wait_synced(30), new.slices.last_error
        with contextlib.suppress(KubeError):
            rest.request("POST", f"{RESOURCE_API}/deviceclasses", body={
                "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": REAL_DRIVER},
                "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{REAL_DRIVER}"'}}]}})
        ensure_namespace(rest, ns)
        rest.request("POST", f"{RESOURCE_API}/namespaces/{ns}/resourceclaimtemplates", body={
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": "vram-8gi"},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": REAL_DRIVER, "capacity": {"requests": {"memory": "8Gi"}}}}]}}},
        })
        path = ("/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/acc/gpu/"
                f"{REAL_DRIVER}-metadata.json")
        pod = busybox_pod("roll", ["sh", "-c", f"cat {path}"], image=kube_cluster.busybox_image, namespace=ns,
                          node_name=kube_cluster.node_name,
                          extra_spec={"resourceClaims": [{"name": "acc", "resourceClaimTemplateName": "vram-8gi"}]})
        pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": "acc"}]}
        rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)

        def phase() -> str | None:
            ph = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/roll").get("status", {}).get("phase")
            return ph if ph in ("Succeeded", "Failed") else None

        final = wait_for(phase, 120, interval_s=0.5)
        events = rest.request("GET", f"/api/v1/namespaces/{ns}/events").get("items") or []
        assert final == "Succeeded", [e.get("message") for e in events][-8:]
        assert calls == {"old": 0, "new": 1}, "the kubelet calls the most recent registration"
        data = json.loads(rest._send("GET", f"/api/v1/namespaces/{ns}/pods/roll/log").read().decode())
        assert data["kind"] == "DeviceMetadata" and data["podClaimName"] == "acc"
        (dev,) = data["requests"][0]["devices"]
        assert dev["driver"] == REAL_DRIVER and dev["pool"] == kube_cluster.node_name
        assert dev["attributes"]["uuid"]["string"] in {d.uuid for d in devices}
        # the old pod leaves; the new one still unprepares the completed pod's claim
        plugins.pop("old").stop()
        assert wait_for(lambda: not list(Path(base.cdi_dir).glob(f"{REAL_DRIVER}-device_*.json")), 60), \
            "the claim was not unprepared after the old pod left"
        assert new.state.claims == {}
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/roll", query={"gracePeriodSeconds": "0"})
        with contextlib.suppress(KubeError):
            delete_namespace(rest, ns)
        for p in plugins.values():
            p.stop()
        last = plugins.get("new")
        if last is not None and last.slices is not None:
            last.slices.delete_all()
