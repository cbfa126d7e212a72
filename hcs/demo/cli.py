"""``hcs demo``: run the whole stack on simulated mixed-vendor hardware and show where work lands."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hcs.cliutil import check_output_path
from hcs.demo import report
from hcs.demo.workloads import admission_pods, burst_pods, overflow_pods, seed_pods
from hcs.errors import ConfigError
from hcs.quantity import human_bytes


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative; give 0 or more")
    return n


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="run HCS end to end on a simulated 4-vendor cluster",
        description="Start one node agent per simulated node (NVIDIA A100 NVLink, Huawei Ascend 910B HCCS, "
        "Hygon K100-AI xGMI, Cambricon MLU370-X8 MLU-Link) with a kubelet simulator each, the allocator and "
        "the admission webhook; send two pods through the webhook; submit the seed's example pods and a burst "
        "of fractional pods; print where each pod landed, what was injected and why a pod waits; check the "
        "VRAM quota through the interceptor; then a summary. --keep leaves it running to explore.")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.add_argument("--burst", type=_count, default=24, help="number of fractional pods in the burst (default 24)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the burst")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of per-device VRAM occupancy")
    p.add_argument("--workdir", help="keep sockets, CDI specs, quota files and agent logs here (default: temp)")
    p.add_argument("--keep", action="store_true",
                   help="keep the stack running afterwards (Ctrl-C stops it) to try `hcs alloc explain` and /metrics")
    p.set_defaults(func=run)


def _check_workdir(path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--workdir {p}: exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--workdir {p}: cannot create ({exc.strerror}); pick another path") from exc
    probe = p / ".hcs-demo-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--workdir {p}: not writable ({exc.strerror}); pick another path") from exc
    return p


def _patch_text(op: dict[str, Any]) -> str:
    value = json.dumps(op.get("value"), separators=(",", ":")) if "value" in op else ""
    if len(value) > 90:
        value = value[:87] + "..."
    return f"{op.get('op')} {op.get('path')} {value}".rstrip()


def admit_through_webhook(stack: Any) -> list[dict[str, Any]]:
    out = []
    for pod in admission_pods():
        response, patch = stack.admission_review(pod)
        out.append({"pod": pod["metadata"]["name"],
                    "request": pod["spec"]["containers"][0]["resources"]["limits"],
                    "allowed": bool(response.get("allowed")),
                    "message": (response.get("status") or {}).get("message", ""),
                    "warnings": list(response.get("warnings") or []), "patch": patch})
    return out


def _admission_lines(a: dict[str, Any]) -> list[str]:
    req = ", ".join(f"{k}={v}" for k, v in a["request"].items())
    if not a["allowed"]:
        return [f"  DENIED   {a['pod']:<16} ({req}): {a['message']}"]
    lines = [f"  ADMITTED {a['pod']:<16} ({req}), the webhook's patch:"]
    lines += [f"             {_patch_text(op)}" for op in a["patch"]]
    lines += [f"             warning: {w}" for w in a["warnings"]]
    return lines


def _quota_lines(q: dict[str, Any]) -> list[str]:
    if q.get("error"):
        return [f"  quota check could not run: {q['error']}"]
    verdict = "enforced" if q["enforced"] else "NOT enforced"
    return [f"  {q['pod']} ({q['vendor']}), in a process with the pod's env, LD_PRELOAD and quota file "
            f"({human_bytes(q['quota_bytes'])}):",
            f"    {q['info_api']} reports {human_bytes(q['reported_total_bytes'])} total (the quota, not the card)",
            f"    {q['alloc_api']}({human_bytes(q['within']['bytes'])}) -> {q['within']['rc']} (ok)",
            f"    {q['alloc_api']}(another {human_bytes(q['quota_bytes'] - q['within']['bytes'])} + 1Mi) "
            f"-> {q['over']['rc']}"
            + (f" {q['oom_name']}: refused, it would pass the quota" if q["over"]["rc"] == q["oom_code"] else ""),
            f"  quota {verdict} by the interceptor"]


def _keep_help(stack: Any, pending: list[str]) -> str:
    pod = pending[0] if pending else "inference-basic"
    lines = ["", "== the stack keeps running (--keep); try: ==",
             f"  why is a pod pending:   hcs alloc explain demo/{pod} --allocator {stack.address}",
             f"  where a pod landed:     hcs alloc explain demo/inference-basic --allocator {stack.address}"]
    for node in stack.nodes:
        url = f"http://127.0.0.1:{node.metrics_port}/metrics"
        lines.append(f"  {node.name + ' metrics:':<23} curl -s {url} | grep ^hcs_")
    if not stack.webhook_skipped:
        lines.append(f"  {'webhook metrics:':<23} curl -s --cacert {stack.webhook_ca} "
                     f"https://127.0.0.1:{stack.webhook_port}/metrics | grep ^hcs_")
    lines.append(f"  {'logs:':<23} {stack.workdir}/<node>/agent.log, {stack.workdir}/webhook/webhook.log")
    lines.append("  stop it: press Ctrl-C here (or send SIGTERM to this hcs process)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # lazy: `hcs <command> --help` and the other commands start without loading this stack
    from hcs.demo.run import device_usage, quota_check, run_workloads
    from hcs.demo.stack import DemoStack
    from hcs.signals import StopSignals

    table = args.output == "table"
    if args.plot:
        check_output_path(args.plot, "--plot")
    workdir_arg = _check_workdir(args.workdir) if args.workdir else None
    log_level = getattr(args, "effective_log_level", None) or "info"
    started = time.monotonic()

    def say(msg: str) -> None:
        if table:
            print(msg, flush=True)

    with tempfile.TemporaryDirectory(prefix="hcs-demo-") as tmp:
        workdir = workdir_arg or Path(tmp)
        stack = DemoStack(workdir, log_level=log_level)
        try:
            say("Starting the HCS stack on 4 simulated nodes...")
            stack.start(lambda m: say(f"  {m}"))
            say("\n== admission: two pods sent to the webhook (POST /mutate, as the API server does) ==")
            admissions = admit_through_webhook(stack) if not stack.webhook_skipped else []
            if stack.webhook_skipped:
                say(f"  skipped: {stack.webhook_skipped}")
            for a in admissions:
                for line in _admission_lines(a):
                    say(line)
            waves = [("seed workloads", seed_pods()), (f"burst of {args.burst} fractional pods",
                                                       burst_pods(args.burst, args.seed)),
                     ("overflow", overflow_pods())]
            results: list[report.PodResult] = []
            for title, pods in waves:
                say(f"\n== {title} ==")
                done = run_workloads(stack, pods, lambda r: say(report.placement_line(r)))
                results += done
                say(f"  cluster VRAM: {report.utilisation_text(report.utilisation(device_usage(stack, results)))}")
            devices = device_usage(stack, results)
            summary = report.summary(results, devices)
            example = next((r for r in results if r.env and r.vendor == "ascend"), None) or \
                next((r for r in results if r.env), None)
            quota = quota_check(stack, example) if example else {"enforced": False, "error": "no pod placed"}
            summary["elapsed_s"] = round(time.monotonic() - started, 1)
            if args.plot:
                report.plot_occupancy(devices, args.plot)
            if table:
                print("\n== summary ==")
                print(report.summary_table(summary))
                if example:
                    print(f"\nenv injected into {example.name} on {example.node}:")
                    for k, v in example.env.items():
                        print(f"  {k}={v}")
                    print(f"  quota file ($HCS_QUOTA_FILE): {report.quota_text(example.quota)}")
                print("\n== VRAM quota through the interceptor ==")
                for line in _quota_lines(quota):
                    print(line)
                if args.plot:
                    print(f"\nVRAM occupancy plot: {args.plot}")
                print(f"done in {summary['elapsed_s']} s")
            else:
                json.dump({"pods": [r.to_dict() for r in results], "summary": summary, "admission": admissions,
                           "quota_check": quota,
                           "devices": [{"node": d.node, "key": d.key, "vendor": d.vendor, "model": d.model,
                                        "vram_total_bytes": d.total, "vram_used_bytes": d.used} for d in devices]},
                          sys.stdout, indent=2)
                print(flush=True)
            if args.keep:
                stop = StopSignals()  # from here on Ctrl-C / SIGTERM stop the stack (before: KeyboardInterrupt)
                pending = [r.name for r in results if r.pending_reasons]
                print(_keep_help(stack, pending), file=sys.stdout if table else sys.stderr, flush=True)
                stop.wait()
        finally:
            stack.stop()
    return 0
