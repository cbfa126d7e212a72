"""`hcs demo --output json`: the whole stack on simulated hardware places pods validly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (ROOT / "driver/build/lib/libnvidia-ml.so.1").exists(),
                                reason="simulated drivers not built (run `make dev`)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    plot = tmp_path_factory.mktemp("demo") / "occupancy.png"
    res = subprocess.run([sys.executable, "-m", "hcs.cli", "demo", "--output", "json", "--burst", "16",
                          "--plot", str(plot)], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    out["_plot"] = plot
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
    assert "pending_reason" in pods["too-big-1Ti"]


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
