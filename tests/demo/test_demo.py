"""`hcs demo`: the whole stack on simulated hardware places pods validly, admits through the real webhook,
enforces the quota through the interceptor, explains pending pods per node, and keeps running with --keep."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (ROOT / "driver/build/lib/libnvidia-ml.so.1").exists(),
                                reason="simulated drivers not built (run `make dev`)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("demo")
    plot = tmp / "occupancy.png"
    res = subprocess.run([sys.executable, "-m", "hcs.cli", "--log-level", "info", "demo", "--output", "json",
                          "--burst", "16", "--plot", str(plot), "--workdir", str(tmp / "work")],
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    out["_plot"] = plot
    out["_workdir"] = tmp / "work"
    return out


def test_every_pod_is_placed_or_has_a_reason(demo):
    assert demo["pods"]
    for pod in demo["pods"]:
        if "pending_reason" in pod:
            assert pod["pending_reason"].strip()
        else:
            assert pod["node"] and pod["vendor"] and pod["devices"] and pod["vram_bytes"] > 0
            assert pod["vram_bytes"] == sum(d["vram_bytes"] for d in pod["devices"])


def test_no_device_is_over_committed(demo):
    total = {(d["node"], d["key"]): d["vram_total_bytes"] for d in demo["devices"]}
    used: dict[tuple[str, str], int] = defaultdict(int)
    for pod in demo["pods"]:
        for dev in pod.get("devices", []):
            used[(pod["node"], dev["key"])] += dev["vram_bytes"]
    assert used, "nothing was placed"
    for key, n in used.items():
        assert n <= total[key], f"{key}: {n} > {total[key]}"


def test_all_four_vendors_are_used_and_requests_are_honoured(demo):
    assert demo["summary"]["vendors_used"] == ["ascend", "cambricon", "hygon", "nvidia"]
    pods = {p["name"]: p for p in demo["pods"]}
    assert pods["ascend-only"]["vendor"] == "ascend"
    assert pods["not-nvidia"]["vendor"] != "nvidia"
    assert {d["model"] for d in pods["mlu-pinned"]["devices"]} == {"mlu370-x8"}
    big = pods["multi-gpu-160g"]
    assert len({d["island"] for d in big["devices"]}) == 1 and sum(d["vram_bytes"] for d in big["devices"]) >= 160 << 30
    assert "pending_reason" in pods["whole-island-640g"]


def test_vendor_environment_and_quota_are_injected(demo):
    env_key = {"nvidia": "NVIDIA_VISIBLE_DEVICES", "ascend": "ASCEND_VISIBLE_DEVICES",
               "hygon": "HIP_VISIBLE_DEVICES", "cambricon": "MLU_VISIBLE_DEVICES"}
    for pod in demo["pods"]:
        if "pending_reason" in pod:
            continue
        assert env_key[pod["vendor"]] in pod["env"], pod
        assert pod["env"]["LD_PRELOAD"].endswith("libhcs_interceptor.so")
        quota = dict(line.split() for line in pod["quota"].split("; "))
        assert sum(int(v) for v in quota.values()) == pod["vram_bytes"]


def test_plot_is_written(demo):
    assert demo["_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pending_reasons_name_the_blocker_one_per_node(demo):
    pods = {p["name"]: p for p in demo["pods"]}
    reasons = pods["whole-island-640g"]["pending_reasons"]
    assert len(reasons) == 4  # one per node, not joined into one line
    by_node = dict(r.split(": ", 1) for r in reasons)
    # the 160Gi job holds two of the eight NVLink GPUs: busy devices, not a small node
    assert by_node["node-a100"].startswith("devices busy: needs 8 whole a100-80g devices"), by_node
    assert by_node["node-910b"] == ("node too small: needs 10 whole 910b3 devices (64.0Gi each) for 640.0Gi VRAM, "
                                    "the node has 8")


def test_the_webhook_admits_one_pod_and_denies_one_larger_than_any_island(demo):
    by = {a["pod"]: a for a in demo["admission"]}
    ok = by["inference-basic"]
    assert ok["allowed"]
    ops = {op["path"]: op.get("value") for op in ok["patch"]}
    assert ops["/spec/schedulerName"] == "hcs-scheduler"
    assert ops["/spec/containers/0/resources"]["limits"]["ai.compute/slot"] == "1"
    big = by["too-big-1Ti"]
    assert not big["allowed"] and "largest interconnect island" in big["message"]


def test_the_interceptor_enforces_the_quota_of_a_placed_pod(demo):
    q = demo["quota_check"]
    assert q["enforced"], q
    assert q["within"]["rc"] == 0 and q["over"]["rc"] == q["oom_code"]
    assert q["reported_total_bytes"] == q["quota_bytes"]
    pod = next(p for p in demo["pods"] if p["name"] == q["pod"])
    assert q["quota_bytes"] == pod["vram_bytes"]


def test_agent_logs_follow_the_chosen_level(demo):
    logs = [(demo["_workdir"] / n / "agent.log").read_text() for n in ("node-a100", "node-910b")]
    assert all(" INFO " in text for text in logs), logs


def test_table_output_uses_human_units(tmp_path):
    res = subprocess.run([sys.executable, "-m", "hcs.cli", "--log-level", "warning", "demo", "--burst", "2",
                          "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "{'" not in out and "vram_total_bytes" not in out  # no Python dicts
    assert re.search(r"cluster VRAM: [\d.]+Gi of [\d.]+Ti used", out), out
    assert re.search(r"quota file \(\$HCS_QUOTA_FILE\): device 0: [\d.]+Gi", out), out
    assert "quota enforced by the interceptor" in out
    assert "ADMITTED inference-basic" in out and "DENIED   too-big-1Ti" in out
    assert (tmp_path / "w" / "node-a100" / "agent.log").read_text().count(" INFO ") == 0  # warning level


def test_keep_leaves_the_stack_up_and_says_how_to_reach_it(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "hcs.cli", "demo", "--burst", "2", "--keep"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout is not None
        text = ""
        deadline = time.monotonic() + 180
        while "stop it:" not in text:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, text
            text += line
            assert time.monotonic() < deadline, text
        addr = re.search(r"hcs alloc explain demo/whole-island-640g --allocator (\S+)", text)
        assert addr, text
        explain = subprocess.run([sys.executable, "-m", "hcs.cli", "alloc", "explain", "demo/whole-island-640g",
                                  "--allocator", addr.group(1)], capture_output=True, text=True, timeout=60)
        assert explain.returncode == 0, explain.stderr
        assert "0 of 4 nodes fit" in explain.stdout and "node too small" in explain.stdout
        url = re.search(r"curl -s (http://127.0.0.1:\d+/metrics)", text)
        assert url, text
        import urllib.request

        with urllib.request.urlopen(url.group(1), timeout=10) as resp:
            assert b"hcs_device_vram_total_bytes" in resp.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
