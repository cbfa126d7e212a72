"""Unit tests of e2e/cluster/hcs_cluster.py that need no cluster: bad input and fault handling."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from hcs.testing.cluster import SCRIPTS_DIR


@pytest.fixture()
def hc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("HCS_CLUSTER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HCS_CLUSTER_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HCS_CLUSTER_KUBELET_DIR", str(tmp_path / "kubelet"))
    for var in ("HCS_CLUSTER_SCHEDULER_CONFIG", "HCS_CLUSTER_APISERVER_PORT", "HCS_CLUSTER_ETCD_PORT", "HCS_GO"):
        monkeypatch.delenv(var, raising=False)
    spec = importlib.util.spec_from_file_location("hcs_cluster_under_test", SCRIPTS_DIR / "hcs_cluster.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    return mod


def test_port_in_use_is_reported_with_the_port_and_a_remedy(hc: ModuleType,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        monkeypatch.setenv("HCS_CLUSTER_ETCD_PORT", str(port))
        lay = hc.layout()
        etcd = next(c for c in hc.components(lay) if c.name == "etcd")
        with pytest.raises(hc.ClusterError, match=rf"port {port} .*already in use.*HCS_CLUSTER_"):
            hc.start(lay, etcd)
    assert not (lay.run / "etcd.pid").exists()


def test_bad_port_variable_names_the_variable(hc: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCS_CLUSTER_APISERVER_PORT", "sixty")
    with pytest.raises(hc.ClusterError, match="HCS_CLUSTER_APISERVER_PORT='sixty'"):
        hc.layout()


def test_stale_state_without_record_tells_what_to_remove(hc: ModuleType) -> None:
    lay = hc.layout()
    (lay.state / "etcd").mkdir(parents=True)
    (lay.state / "pki").mkdir()
    with pytest.raises(hc.ClusterError, match=r"no cluster.json.*down --purge"):
        hc.check_state(lay)


def test_state_of_another_version_is_refused(hc: ModuleType) -> None:
    lay = hc.layout()
    lay.state.mkdir(parents=True)
    (lay.state / "cluster.json").write_text(json.dumps({"k8s_version": "v1.30.0", "node_name": lay.node_name}))
    with pytest.raises(hc.ClusterError, match=r"v1\.30\.0.*--purge"):
        hc.check_state(lay)
    (lay.state / "cluster.json").write_text(json.dumps({"k8s_version": hc.K8S_VERSION,
                                                        "node_name": lay.node_name}))
    hc.check_state(lay)  # same cluster: accepted, record rewritten
    assert json.loads((lay.state / "cluster.json").read_text())["kubeconfig"] == str(lay.kubeconfig)


def test_stale_pid_record_of_a_dead_process_is_not_alive(hc: ModuleType) -> None:
    lay = hc.layout()
    proc = subprocess.Popen(["sleep", "60"])
    start = hc._proc_start_time(proc.pid)
    assert start is not None
    proc.kill()
    proc.wait()
    lay.run.mkdir(parents=True)
    (lay.run / "etcd.pid").write_text(json.dumps({"pid": proc.pid, "start": start}))
    assert hc.alive_pid(lay, "etcd") is None
    # our own live process with the right start time is alive
    (lay.run / "etcd.pid").write_text(json.dumps({"pid": 1, "start": hc._proc_start_time(1)}))
    assert hc.alive_pid(lay, "etcd") == 1


def test_down_after_partial_up_cleans_records_and_stops_processes(hc: ModuleType) -> None:
    lay = hc.layout()
    lay.state.mkdir(parents=True)
    sleeper = hc.Component("etcd", ("sleep", "300"), None, "")
    pid = hc.start(lay, sleeper)
    (lay.run / "kube-apiserver.pid").write_text('{"pid": 999999999, "start": "1"}')  # crashed component
    assert hc.alive_pid(lay, "etcd") == pid
    assert hc.cmd_down(lay, purge=False) == 0
    assert hc._proc_start_time(pid) is None
    assert not list(lay.run.glob("*.pid"))
    assert hc.cmd_status(lay, quiet=True) == 1
    assert hc.cmd_down(lay, purge=True) == 0
    assert not lay.state.exists()


def test_missing_or_old_go_is_a_clear_prerequisite_error(hc: ModuleType, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "go"
    fake.write_text("#!/bin/sh\necho go1.20.1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("HCS_GO", str(fake))
    with pytest.raises(hc.ToolchainMissing, match=r"go1\.20\.1.*needs Go >= 1\.26"):
        hc.find_go()


def test_scheduler_config_override_substitutes_state_dir(hc: ModuleType, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tpl = tmp_path / "sched.yaml"
    tpl.write_text("clientConnection:\n  kubeconfig: ${HCS_CLUSTER_DIR}/config/scheduler.kubeconfig\n")
    monkeypatch.setenv("HCS_CLUSTER_SCHEDULER_CONFIG", str(tpl))
    lay = hc.layout()
    assert f"kubeconfig: {lay.state}/config/scheduler.kubeconfig" in hc.scheduler_config(lay)
    monkeypatch.setenv("HCS_CLUSTER_SCHEDULER_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(hc.ClusterError, match="missing.yaml does not exist"):
        hc.scheduler_config(hc.layout())


def test_default_configs_enable_dra_gates_and_cgroup_v1(hc: ModuleType) -> None:
    lay = hc.layout()
    hc.write_configs(lay)
    kubelet = (lay.config / "kubelet.yaml").read_text()
    assert "cgroupDriver: cgroupfs" in kubelet and "failCgroupV1: false" in kubelet
    assert "failSwapOn: false" in kubelet and "DRAConsumableCapacity: true" in kubelet
    apiserver = next(c for c in hc.components(lay) if c.name == "kube-apiserver")
    flags = " ".join(apiserver.argv)
    assert "--runtime-config=resource.k8s.io/v1=true" in flags
    assert "DRAPartitionableDevices=true" in flags and "DRAConsumableCapacity=true" in flags
    containerd = (lay.config / "containerd.toml").read_text()
    assert "enable_cdi = true" in containerd
    # without CAP_SYS_RESOURCE runc cannot apply the kubelet's negative sandbox oom_score_adj
    assert f"restrict_oom_score_adj = {str(not hc.has_cap_sys_resource()).lower()}" in containerd


def test_oci_archive_is_self_consistent(hc: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    hc._oci_archive(out, "hcs.local/t:1", {"bin/hello": b"hi"}, {"bin/sh": "hello"}, ["bin", "tmp"],
                    {"Cmd": ["sh"]})
    with tarfile.open(out) as tf:
        def blob(digest: str) -> bytes:
            f = tf.extractfile("blobs/sha256/" + digest.split(":")[1])
            assert f is not None
            data = f.read()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
            return data

        idx_f = tf.extractfile("index.json")
        assert idx_f is not None
        index = json.loads(idx_f.read())
        entry = index["manifests"][0]
        assert entry["annotations"]["io.containerd.image.name"] == "hcs.local/t:1"
        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layer = blob(manifest["layers"][0]["digest"])
    import gzip

    raw = gzip.decompress(layer)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(raw)) as lt:
        names = lt.getnames()
        member = lt.getmember("bin/sh")
    assert "bin/hello" in names and member.issym() and member.linkname == "hello"


def test_scripts_exist_and_run_the_python_entry(hc: ModuleType) -> None:
    for name in ("up", "down", "status"):
        script = SCRIPTS_DIR / name
        assert script.exists() and script.stat().st_mode & 0o111
        assert f"hcs_cluster.py\" {name}" in script.read_text()
    result = subprocess.run([sys.executable, str(SCRIPTS_DIR / "hcs_cluster.py"), "env", "--json"],
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)["kubeconfig"].endswith("/state/kubeconfig")
