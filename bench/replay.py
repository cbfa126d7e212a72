"""Trace-replay benchmark: every policy on both shipped openb traces, 10 seeds (FGD protocol).

Prints one JSON object: per trace the ``hcs replay`` output plus the published FGD mean and
whether ``hcs`` beats it and every baseline; writes one PNG per trace (allocation ratio vs
arrived demand) next to ``--out``.

    .venv/bin/python bench/replay.py [--seeds 10] [--out bench/out]

The traces: ../shared/traces/ next to the checkout, else --dir; to fetch them, see the README's
"Traces" section (Alibaba clusterdata, cluster-trace-gpu-v2023/csv). A progress bar shows on a terminal.
"""

from __future__ import annotations

import os
import sys

# bench/ holds scripts named like stdlib modules (inspect.py): keep this script's folder off the path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from hcs.allocator import replay as rp  # noqa: E402
from hcs.allocator.policies import POLICIES, get_policy  # noqa: E402
from hcs.cliutil import progress_bar, progress_enabled  # noqa: E402
from hcs.errors import HcsError  # noqa: E402

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
PUBLISHED_FGD = {"gpushare40": 93.96, "multigpu50": 97.09}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--traces", default=",".join(PUBLISHED_FGD))
    ap.add_argument("--policies", default=",".join(p for p in POLICIES if p != "spread"))
    ap.add_argument("--dir", default=str(TRACES if TRACES.exists() else Path("/work/shared/traces")))
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    try:
        return run(args)
    except HcsError as exc:
        print(f"bench/replay.py: error: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    trace_dir = Path(args.dir)
    traces = [t for t in args.traces.split(",") if t]
    policies = [p for p in args.policies.split(",") if p]
    for name in policies:
        get_policy(name)
    needed = [trace_dir / "openb_node_list_gpu_node.csv"] + [trace_dir / f"openb_pod_list_{t}.csv" for t in traces]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise HcsError(f"--dir {trace_dir}: missing {', '.join(missing)}; fetch the openb traces as the README's "
                       "'Traces' section says, or pass --dir")
    if args.seeds < 1:
        raise HcsError(f"--seeds {args.seeds}: must be at least 1")
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HcsError(f"--out {out_dir}: cannot create ({exc.strerror})") from exc
    report: dict[str, object] = {}
    ok = True
    with progress_bar(len(traces) * len(policies) * args.seeds, "replay", progress_enabled()) as step:
        for trace in traces:
            results = rp.replay(trace_dir / "openb_node_list_gpu_node.csv",
                                trace_dir / f"openb_pod_list_{trace}.csv", policies,
                                list(range(args.seeds)), inflation=1.3,
                                on_seed=lambda policy, seed, trace=trace: step(f"{trace} {policy} seed {seed}"))
            png = out_dir / f"replay_{trace}.png"
            rp.plot(results, png, title=f"openb {trace}, {args.seeds} seeds")
            summary = {r.name: r.summary() for r in results}
            hcs_mean = float(summary["hcs"]["allocation_ratio_mean"]) if "hcs" in summary else float("nan")  # type: ignore[arg-type]
            best_other = max((float(s["allocation_ratio_mean"]) for n, s in summary.items() if n != "hcs"),  # type: ignore[arg-type]
                             default=float("-inf"))
            beats = hcs_mean >= PUBLISHED_FGD.get(trace, 0.0) and hcs_mean >= best_other
            ok &= beats
            report[trace] = {"policies": summary, "published_fgd_mean": PUBLISHED_FGD.get(trace),
                             "hcs_beats_published_fgd_and_baselines": beats, "plot": str(png)}
    report["pass"] = ok
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
