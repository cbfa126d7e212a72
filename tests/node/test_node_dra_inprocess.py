"""`hcs node` runs the DRA kubelet plugin in its own process beside the device plugin (issue 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hcs.kube import KubeRest
from hcs.kubeletsim.deviceplugin import KubeletSim
from hcs.kubeletsim.dra import DraKubeletSim

ROOT = Path(__file__).resolve().parents[2]
DRIVER = "agent-inproc.ai.compute"  # own driver name: the shared cluster may run other `ai.compute` plugins


def _slices(rest: KubeRest, node: str) -> list[dict]:
    data = rest.request("GET", "/apis/resource.k8s.io/v1/resourceslices",
                        query={"fieldSelector": f"spec.nodeName={node},spec.driver={DRIVER}"})
    return list(data.get("items") or [])


def test_config_error_when_dra_has_no_api_server(tmp_path: Path) -> None:
    cfg = tmp_path / "hcs.yaml"
    cfg.write_text(yaml.safe_dump({"node": {"dra": {"driverName": DRIVER}}}))
    env = dict(os.environ, HCS_SIM_PROFILE=str(ROOT / "driver/profiles/a100-80g-nvlink-8.json"))
    res = subprocess.run([sys.executable, "-m", "hcs.cli", "node", "--no-api-server", "--config", str(cfg),
                          "--node-name", "n1", "--device-plugin-dir", str(tmp_path / "dp"),
                          "--state-dir", str(tmp_path / "state"), "--metrics-port", "0"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "node.dra needs the API server" in res.stderr


@pytest.mark.cluster
def test_one_agent_process_serves_device_plugin_and_dra(tmp_path: Path, kube_cluster, api_client) -> None:
    node = kube_cluster.node_name
    rest = KubeRest(api_client)
    cfg = tmp_path / "hcs.yaml"
    cfg.write_text(yaml.safe_dump({"node": {
        "assignmentSource": "local", "metricsPort": 0, "deviceIsolation": False,
        "dra": {"driverName": DRIVER, "pluginsRegistry": str(tmp_path / "registry"),
                "pluginDir": str(tmp_path / "plugin"), "cdiDir": str(tmp_path / "cdi")}}}))
    kubelet = KubeletSim(tmp_path / "dp", tmp_path / "podres.sock").start()
    dra_kubelet = DraKubeletSim(tmp_path / "registry")
    (tmp_path / "registry").mkdir()
    env = dict(os.environ, HCS_SIM_PROFILE=str(ROOT / "driver/profiles/mixed-a100-910b.json"),
               HCS_SIM_FAULTS=str(tmp_path / "node.faults"))
    agent = subprocess.Popen([sys.executable, "-m", "hcs.cli", "node", "--kubeconfig", str(kube_cluster.kubeconfig),
                              "--config", str(cfg), "--node-name", node,
                              "--device-plugin-dir", str(tmp_path / "dp"),
                              "--pod-resources-socket", str(tmp_path / "podres.sock"),
                              "--state-dir", str(tmp_path / "state"), "--quota-dir", str(tmp_path / "quota"),
                              "--shm-dir", str(tmp_path / "shm"), "--cdi-dir", str(tmp_path / "cdi")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        conn = kubelet.wait_registered("ai.compute/slot", timeout_s=60)
        assert len(conn.devices) == 8 * 8  # 8 devices x 8 slots
        plugin = dra_kubelet.register(timeout_s=60)
        assert plugin.name == DRIVER and plugin.service == "v1.DRAPlugin"
        deadline = time.monotonic() + 30
        while not _slices(rest, node) and time.monotonic() < deadline:
            time.sleep(0.2)
        devices = [d for s in _slices(rest, node) for d in s["spec"]["devices"]]
        assert len(devices) == 8
        # health from the agent's one monitor reaches both halves
        (tmp_path / "node.faults").write_text("nvidia 2 health lost\n")
        unhealthy = [i for i, h in kubelet.devices("ai.compute/slot").items() if h == "Unhealthy"]
        deadline = time.monotonic() + 10
        while len(unhealthy) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
            unhealthy = [i for i, h in kubelet.devices("ai.compute/slot").items() if h == "Unhealthy"]
        assert len(unhealthy) == 8
        tainted = []
        while not tainted and time.monotonic() < deadline + 10:
            tainted = [d["name"] for s in _slices(rest, node) for d in s["spec"]["devices"] if d.get("taints")]
            time.sleep(0.2)
        assert len(tainted) == 1
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
        kubelet.stop()
        dra_kubelet.close()
        for s in _slices(rest, node):
            rest.request("DELETE", f"/apis/resource.k8s.io/v1/resourceslices/{s['metadata']['name']}")
    assert agent.returncode == 0, agent.stdout.read().decode()[-3000:] if agent.stdout else ""
