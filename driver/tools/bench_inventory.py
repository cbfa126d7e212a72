#!/usr/bin/env python3
"""Wall time of one full inventory of an 8-device node through each simulated management library.

Each vendor runs in a fresh interpreter: the clock starts before the library is loaded and stops after
every per-device query of the test inventory (identity, memory, PCI, NUMA, links, topology, health,
ECC, temperature) - i.e. including dlopen, profile parsing and init. Median of --runs runs.

Run: .venv/bin/python driver/tools/bench_inventory.py [--runs 5]
Prints one JSON object: {"nvidia": {"ms": ..}, "ascend": {...}, "hygon": {...}, "cambricon": {...}}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "driver"))

from drv_sim import build, run_child  # noqa: E402
from test_driver_cndev import INVENTORY as CNDEV  # noqa: E402
from test_driver_dcmi import INVENTORY as DCMI  # noqa: E402
from test_driver_nvml import INVENTORY as NVML  # noqa: E402
from test_driver_rocm_smi import INVENTORY as RSMI  # noqa: E402

CASES = {
    "nvidia": ("a100-80g-nvlink-8", NVML),
    "ascend": ("ascend-910b-hccs-8", DCMI),
    "hygon": ("hygon-k100ai-xgmi-8", RSMI),
    "cambricon": ("mlu370-x8-mlulink-8", CNDEV),
}


def timed(code: str) -> str:
    """Wrap an inventory snippet so it reports its own wall time instead of its result."""
    body = "\n".join("    " + line for line in code.strip().splitlines())
    body = body.replace("    print(json.dumps(out))", "    pass")
    return ("import time\n_t0 = time.perf_counter()\ndef _run():\n" + body +
            "\n    return out\n_out = _run()\n"
            "print(json.dumps({'ms': (time.perf_counter() - _t0) * 1000, 'count': _out['count']}))\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    build()
    result = {}
    for vendor, (profile, code) in CASES.items():
        samples = []
        for _ in range(args.runs):
            out = run_child(timed(code), profile)
            assert out["count"] == 8, out
            samples.append(out["ms"])
        result[vendor] = {"ms": round(statistics.median(samples), 2), "devices": 8, "profile": profile}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
