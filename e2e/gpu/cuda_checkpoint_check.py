#!/usr/bin/env python3
"""Real-GPU check of the device half of checkpoint recovery (issue 21): cuda-checkpoint.

A PyTorch process holds 1 GiB of device memory filled with known values. ``cuda-checkpoint --toggle`` (the
call hcs.checkpoint.capability.cuda_checkpoint_argv builds, what the flow runs before CRIU's dump) must move
its CUDA state into host memory (state ``checkpointed``; the GPU's used memory drops), a second toggle must
bring it back (state ``running``) and the tensor must still hold its values. Prints one JSON object; exit 0
when it passed or was skipped (no cuda-checkpoint / no torch), 1 when it failed.

    python3 e2e/gpu/cuda_checkpoint_check.py      (run by e2e/gpu/run_checks.py)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HOLDER = r"""
import sys, time, torch
x = torch.arange(1 << 28, dtype=torch.float32, device="cuda")   # 1 GiB
want = float(x.double().sum().item())
print("ready", flush=True)
for line in sys.stdin:
    ok = abs(float(x.double().sum().item()) - want) < 1e-3 * abs(want)
    print("ok" if ok else "bad", flush=True)
"""


def used_mib() -> int:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                       capture_output=True, text=True, timeout=30)
    return int(r.stdout.strip().splitlines()[0]) if r.returncode == 0 and r.stdout.strip() else -1


def state(tool: str, pid: int) -> str:
    r = subprocess.run([tool, "--get-state", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    return (r.stdout or r.stderr).strip()


def main() -> int:
    from hcs.checkpoint.capability import cuda_checkpoint_argv

    tool = shutil.which("cuda-checkpoint")
    if tool is None:
        print(json.dumps({"pass": None, "skipped": "no cuda-checkpoint on PATH (NVIDIA driver >= 550 ships it "
                          "separately: github.com/NVIDIA/cuda-checkpoint)"}))
        return 0
    probe = subprocess.run([sys.executable, "-c", "import torch; assert torch.cuda.is_available()"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        print(json.dumps({"pass": None, "skipped": "torch with CUDA not importable"}))
        return 0
    p = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out: dict[str, object] = {}
    try:
        assert p.stdout is not None and p.stdin is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("holder did not start")
        out["used_mib_before"] = used_mib()
        t0 = time.monotonic()
        r1 = subprocess.run(cuda_checkpoint_argv(p.pid, tool=tool), capture_output=True, text=True, timeout=120)
        out["checkpoint_s"] = round(time.monotonic() - t0, 3)
        out["state_after_checkpoint"] = state(tool, p.pid)
        out["used_mib_checkpointed"] = used_mib()
        t0 = time.monotonic()
        r2 = subprocess.run(cuda_checkpoint_argv(p.pid, tool=tool), capture_output=True, text=True, timeout=120)
        out["restore_s"] = round(time.monotonic() - t0, 3)
        out["state_after_restore"] = state(tool, p.pid)
        p.stdin.write("check\n")
        p.stdin.flush()
        out["tensor_intact"] = p.stdout.readline().strip() == "ok"
        out["toggle_rc"] = [r1.returncode, r2.returncode]
        out["pass"] = (r1.returncode == 0 and r2.returncode == 0 and out["state_after_checkpoint"] == "checkpointed"
                       and out["state_after_restore"] == "running" and out["tensor_intact"] is True)
    except Exception as exc:  # report, never hang the GPU script
        out.update({"pass": False, "error": str(exc)})
    finally:
        p.kill()
        p.wait(10)
    print(json.dumps(out))
    return 0 if out.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
