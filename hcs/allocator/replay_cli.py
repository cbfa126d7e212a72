"""``hcs replay``: replay an openb GPU trace through the placement policies (see replay.py)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from hcs.allocator import replay as rp
from hcs.allocator.policies import POLICIES, get_policy
from hcs.cliutil import check_output_path, progress_bar, progress_enabled
from hcs.errors import ConfigError

#: the weights policy ``hcs`` reads (``score_hcs`` in policies.py), with their defaults.
HCS_WEIGHTS = {"pack": 0.05, "cpu": 0.0, "strand": 2.0, "bf": 1e-3, "occ": 0.0}

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay",
        help="replay a GPU-cluster trace (openb CSV) through placement policies",
        description="Replay an openb trace with the USENIX ATC '23 FGD protocol: arrivals only, shuffled "
        "per seed, resampled to 130% of GPU capacity when plotting; reports the GPU allocation ratio when arrived "
        "demand reaches 100% of capacity, fragmentation and decision latency.",
    )
    p.add_argument("--nodes", required=True,
                   help="node list CSV (sn,cpu_milli,memory_mib,gpu,model; a mixed fleet adds vendor,vram_mib,rate "
                   "per device model)")
    p.add_argument("--pods", required=True,
                   help="pod list CSV (name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec]; for a mixed fleet "
                   "name,cpu_milli,memory_mib,vram_mib,tflops[,gpu_spec] in MiB and A100-equivalent TFLOPS)")
    p.add_argument("--policy", default="hcs",
                   help=f"comma-separated policy names: {', '.join(POLICIES)} (default hcs)")
    p.add_argument("--seeds", type=int, default=10, help="number of seeds, 0..K-1 (default 10)")
    p.add_argument("--output", choices=("json", "table"), default="table")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="write a PNG of allocation ratio vs arrived demand (replays to 130%%)")
    p.add_argument("--target", choices=("trace", "recent"), default="trace",
                   help="target workload: the whole trace's pod mix (the FGD paper's protocol, default) or "
                   "the live allocator's decayed mix of the requests placed so far")
    p.add_argument("--weight", action="append", default=[], metavar="K=V",
                   help="weight of policy hcs, e.g. strand=2 (repeatable); known: "
                   + ", ".join(f"{k} (default {v:g})" for k, v in HCS_WEIGHTS.items()))
    p.set_defaults(func=run)


def _weights(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            number = float(value)
        except ValueError:
            raise ConfigError(f"--weight {item!r}: expected KEY=NUMBER, e.g. --weight strand=2") from None
        name = key.strip()
        if name not in HCS_WEIGHTS:
            raise ConfigError(f"--weight {item!r}: {name!r} is not a weight of policy hcs; "
                              f"known: {', '.join(HCS_WEIGHTS)}")
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"--weight {item!r}: must be a finite number")
        out[name] = number
    return out


def run(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in str(args.policy).split(",") if p.strip()]
    if not policies:
        raise ConfigError("--policy: give at least one policy name")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: must be at least 1")
    for name in policies:
        get_policy(name)
    weights = _weights(args.weight)
    if weights and "hcs" not in policies:
        raise ConfigError("--weight: the weights belong to policy hcs, which --policy does not include")
    if args.plot:
        check_output_path(args.plot, "--plot")
    inflation = 1.3 if args.plot else 1.0
    if rp.is_fleet(args.nodes):  # a mixed fleet: VRAM/TFLOPS pods through the allocator's planner
        if args.plot or args.weight or args.target != "trace":
            raise ConfigError("a mixed-fleet replay (node list with vendor,vram_mib,rate) takes no --plot, "
                              "--weight or --target")
        results = rp.replay_fleet(args.nodes, args.pods, policies, list(range(args.seeds)))
    else:
        seeds = list(range(args.seeds))
        with progress_bar(len(policies) * len(seeds), "replay", progress_enabled(args.output == "json")) as step:
            results = rp.replay(args.nodes, args.pods, policies, seeds, inflation=inflation,
                                weights=_weights(args.weight), target_mode=args.target,
                                on_seed=lambda policy, seed: step(f"{policy} seed {seed}"))
    if args.plot:
        rp.plot(results, args.plot, title=f"{args.pods} ({args.seeds} seeds)")
    summary = {r.name: r.summary() for r in results}
    if args.output == "json":
        print(json.dumps({"policies": summary}))
    else:
        print(f"{'policy':<12} {'alloc% mean':>11} {'frag%':>7} {'p50 ms':>8} {'p99 ms':>8}  per seed")
        for name, s in summary.items():
            print(f"{name:<12} {s['allocation_ratio_mean']:>11.3f} {s['fragmentation_mean']:>7.2f} "
                  f"{s['decision_p50_ms']:>8.3f} {s['decision_p99_ms']:>8.3f}  {s['allocation_ratio_per_seed']}")
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0
