"""Trace-replay benchmark: every policy on both shipped openb traces, 10 seeds (FGD protocol).

Prints one JSON object: per trace the ``hcs replay`` output plus the published FGD mean and
whether ``hcs`` beats it and every baseline; writes one PNG per trace (allocation ratio vs
arrived demand) next to ``--out``.

    .venv/bin/python bench/replay.py [--seeds 10] [--out bench/out]
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
from hcs.allocator.policies import POLICIES  # noqa: E402

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
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    policies = args.policies.split(",")
    report: dict[str, object] = {}
    ok = True
    for trace in args.traces.split(","):
        results = rp.replay(Path(args.dir) / "openb_node_list_gpu_node.csv",
                            Path(args.dir) / f"openb_pod_list_{trace}.csv", policies,
                            list(range(args.seeds)), inflation=1.3)
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
