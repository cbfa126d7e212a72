"""``hcs demo``: run the whole stack on simulated mixed-vendor hardware and show where work lands."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hcs.demo import report
from hcs.demo.workloads import burst_pods, overflow_pods, seed_pods


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="run HCS end to end on a simulated 4-vendor cluster",
        description="Start one node agent per simulated node (NVIDIA A100 NVLink, Huawei Ascend 910B HCCS, "
        "Hygon K100-AI xGMI, Cambricon MLU370-X8 MLU-Link) with a kubelet simulator each, plus the "
        "allocator; submit the seed's example pods and a burst of fractional pods; print where each pod "
        "landed and what was injected, then a summary.")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.add_argument("--burst", type=int, default=24, help="number of fractional pods in the burst (default 24)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the burst")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of per-device VRAM occupancy")
    p.add_argument("--workdir", help="keep sockets, CDI specs, quota files and agent logs here (default: temp)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hcs.demo.run import device_usage, run_workloads
    from hcs.demo.stack import DemoStack

    table = args.output == "table"
    started = time.monotonic()

    def say(msg: str) -> None:
        if table:
            print(msg, flush=True)

    with tempfile.TemporaryDirectory(prefix="hcs-demo-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        stack = DemoStack(workdir)
        try:
            say("Starting the HCS stack on 4 simulated nodes...")
            stack.start(lambda m: say(f"  {m}"))
            waves = [("seed workloads", seed_pods()), (f"burst of {args.burst} fractional pods",
                                                       burst_pods(args.burst, args.seed)),
                     ("overflow", overflow_pods())]
            results: list[report.PodResult] = []
            for title, pods in waves:
                say(f"\n== {title} ==")
                done = run_workloads(stack, pods, lambda r: say(report.placement_line(r)))
                results += done
                say(f"  cluster VRAM: {report.utilisation(device_usage(stack, results))}")
            devices = device_usage(stack, results)
            summary = report.summary(results, devices)
            summary["elapsed_s"] = round(time.monotonic() - started, 1)
            if args.plot:
                report.plot_occupancy(devices, args.plot)
        finally:
            stack.stop()
    if table:
        print("\n== summary ==")
        print(report.summary_table(summary))
        example = next((r for r in results if r.env and r.vendor == "ascend"), None)
        if example:
            print(f"\nenv injected into {example.name} on {example.node}:")
            for k, v in example.env.items():
                print(f"  {k}={v}")
            print(f"  quota file: {example.quota}")
        if args.plot:
            print(f"\nVRAM occupancy plot: {args.plot}")
        print(f"done in {summary['elapsed_s']} s")
    else:
        json.dump({"pods": [r.to_dict() for r in results], "summary": summary,
                   "devices": [{"node": d.node, "key": d.key, "vendor": d.vendor, "model": d.model,
                                "vram_total_bytes": d.total, "vram_used_bytes": d.used} for d in devices]},
                  sys.stdout, indent=2)
        print()
    return 0
