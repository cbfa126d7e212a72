"""Sub-health benchmark: scripted fault scenarios on all four vendors, a healthy-but-noisy soak, and
the monitor's CPU cost. Prints ONE JSON object:

    {"scenarios": {name: {"detected": bool, "detect_s": x, "grade": "degraded|failing"}},
     "detect_p99_s": x, "false_positive_device_hours": n, "soak_device_hours": h, "ebpf": bool, ...}

How it runs (docs/operations.md, "Sub-health"): one 32-device node profile (the shipped 8-device
A100, Ascend 910B, Hygon K100_AI and MLU370 profiles merged) is loaded through the real simulated
vendor libraries (pynvml → libnvidia-ml.so.1, ctypes → libdcmi / librocm_smi64 / libcndev). Every
device gets the fault file's ``noise`` directive (random PCIe replay and link-CRC bursts, single
SBEs, one-second temperature spikes and thermal-throttle blips, clock jitter); each scenario adds
its timed fault lines on one device. Time is *stepped*, not slept: the simulator reads its scenario
clock from the file named by ``HCS_SIM_CLOCK``; the bench advances it by ``--step`` seconds (the
agent's poll interval, default 1 s) and polls the real ``HealthMonitor`` after each step with the
same clock. So ``detect_s`` is simulated seconds from the scenario's onset (the time its fault
condition is true by construction, listed per scenario) to the first poll whose verdict has the
expected grade, and the soak covers ``--soak-hours`` x 32 simulated device-hours in minutes.
A device whose grade ever leaves ``healthy`` without a scripted fault is a false positive.

CPU: ``HealthMonitor.wait`` runs in real time for ``--cpu-seconds`` at ``--poll-interval`` (the
node config's healthPollInterval) on the healthy 32-device profile; process CPU time / wall time,
scaled to 8 devices, is ``cpu_pct_per_8_devices`` (percent of one core).

Workload-side straggler scenarios ("one of 8 devices 30% slower", bench/subhealth_straggler.py) run
in real time with workload threads, one per vendor runtime (CUDA, Ascend ACL, HIP, CNRT) and per
mode: ``<vendor>-one-of-8-devices-30pct-slower-ebpf`` through bpftrace uprobes on the runtime's
synchronise calls and ``...-interceptor`` through the agent's fallback, the interceptor's own
synchronise timing (``--workload-signal interceptor``: the fallback only). ``ebpf`` says whether
the uprobes loaded here; an "-ebpf" scenario whose probes could not attach runs the fallback, as
the agent does, and ``details.straggler`` says which signal produced each result.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("a100-80g-nvlink-8", "ascend-910b-hccs-8", "hygon-k100ai-xgmi-8", "mlu370-x8-mlulink-8")


@dataclass(frozen=True)
class Scenario:
    name: str
    device: str  # device key, e.g. "nvidia-3"
    lines: tuple[str, ...]
    grade: str  # expected
    onset_s: float  # scenario time the fault condition is true (by construction)
    duration_s: float = 60.0


def scenarios() -> list[Scenario]:
    return [
        # rate 0 -> 50/s over 60 s: crosses the 2/s limit at 10 + 60*2/50 = 12.4 s
        Scenario("nvidia-pcie-replay-rate-rises-over-60s", "nvidia-3", ("@10 nvidia 3 pcie_replay_rate 0 50 60",),
                 "degraded", 12.4),
        Scenario("nvidia-ecc-sbe-storm-then-dbe", "nvidia-2",
                 ("@10 nvidia 2 ecc_rate single 40", "@25 nvidia 2 ecc double 1"), "failing", 10.0),
        Scenario("nvidia-thermal-throttle-clock-drop", "nvidia-6",
                 ("@10 nvidia 6 throttle thermal", "@10 nvidia 6 clock_pct 75"), "degraded", 10.0),
        Scenario("nvidia-nvlink-crc-errors", "nvidia-1", ("@10 nvidia 1 link_crc_rate 6",), "degraded", 10.0),
        Scenario("ascend-hbm-sbe-rate", "ascend-1", ("@10 ascend 1 ecc_rate single 3",), "degraded", 10.0),
        Scenario("ascend-aicore-clock-drop", "ascend-4", ("@10 ascend 4 clock_pct 70",), "degraded", 10.0),
        Scenario("ascend-health-critical", "ascend-6", ("@10 ascend 6 health critical",), "failing", 10.0),
        Scenario("hygon-pcie-link-downtrain", "hygon-2", ("@10 hygon 2 pcie_link 8 3",), "degraded", 10.0),
        Scenario("hygon-xgmi-errors", "hygon-5", ("@10 hygon 5 link_crc_rate 5",), "degraded", 10.0),
        Scenario("hygon-retired-pages", "hygon-1", ("@10 hygon 1 retired_pages 80",), "failing", 10.0),
        # 0 -> 20/s over 30 s: crosses the 1/s limit at 10 + 1.5 = 11.5 s
        Scenario("cambricon-mlulink-crc-ramp", "cambricon-3", ("@10 cambricon 3 link_crc_rate 0 20 30",),
                 "degraded", 11.5),
        # 60 -> 92 C over 40 s (0.8 C/s): at 75 C (the trend rule's floor) at 10 + 15/0.8 = 28.75 s
        Scenario("cambricon-temperature-trend", "cambricon-6", ("@10 cambricon 6 temperature 60 92 40",),
                 "degraded", 28.75),
        Scenario("cambricon-remap-pending", "cambricon-2", ("@10 cambricon 2 remap_pending 1",), "degraded", 10.0),
    ]


def merged_profile(dest: Path) -> int:
    devices = []
    switches: list[object] = []  # NVSwitches: concatenated, each profile's switch links offset to its own
    for domain, name in enumerate(PROFILES):
        prof = json.loads((ROOT / "driver" / "profiles" / f"{name}.json").read_text())
        base = len(switches)
        switches.extend(prof.get("nvswitches", []))
        for d in prof["devices"]:
            d = dict(d)
            d["pci_bus_id"] = f"{domain + 1:04x}" + d["pci_bus_id"][4:]
            if base and "links" in d:
                d["links"] = [{**ln, "switch": ln["switch"] + base} if "switch" in ln else ln for ln in d["links"]]
            devices.append(d)
    merged: dict[str, object] = {"name": "subhealth-bench-32", "devices": devices}
    if switches:
        merged["nvswitches"] = switches
    dest.write_text(json.dumps(merged))
    return len(devices)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def noise_lines(keys: list[str], seed: int) -> list[str]:
    return [f"{k.rsplit('-', 1)[0]} {k.rsplit('-', 1)[1]} noise {seed + i}" for i, k in enumerate(keys)]


def run_stepped(monitor: object, clock_file: Path, faults: Path, lines: list[str], duration_s: float, step_s: float,
                phase: float) -> list[tuple[float, dict[str, str]]]:
    """Rewrite the fault file, then step the clock from `phase` to duration; (t, grade per device)."""
    write_atomic(clock_file, f"{phase}\n")
    write_atomic(faults, "\n".join(lines) + "\n")
    out = []
    t = phase
    while t <= duration_s:
        write_atomic(clock_file, f"{t:.3f}\n")
        monitor.poll()  # type: ignore[attr-defined]
        out.append((t, {k: v.grade.label for k, v in monitor.verdicts().items()}))  # type: ignore[attr-defined]
        t += step_s
    return out


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step", type=float, default=1.0, help="simulated seconds per poll (the poll interval)")
    ap.add_argument("--soak-hours", type=float, default=3.2, help="simulated hours of the noisy soak (x32 devices)")
    ap.add_argument("--cpu-seconds", type=float, default=20.0, help="real seconds of the CPU measurement")
    ap.add_argument("--poll-interval", type=float, default=1.0, help="healthPollInterval for the CPU measurement")
    ap.add_argument("--skip-ebpf", action="store_true", help="do not run the real-time straggler scenario")
    ap.add_argument("--workload-signal", choices=("auto", "interceptor"), default="auto",
                    help="straggler scenario: eBPF uprobes, else the interceptor's timing (auto), or the "
                         "interceptor's timing only (the agent's fallback when eBPF is unavailable)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hcs-subhealth-"))
    profile, faults, clock_file = work / "node.json", work / "node.faults", work / "clock"
    n_devices = merged_profile(profile)
    write_atomic(clock_file, "0\n")
    faults.write_text("")
    os.environ.update({"HCS_SIM_PROFILE": str(profile), "HCS_SIM_FAULTS": str(faults),
                       "HCS_SIM_CLOCK": str(clock_file)})
    from hcs.devices.health import HealthMonitor
    from hcs.devices.inventory import discover

    inventory = discover()
    keys = [d.key for d in inventory.devices]
    assert len(keys) == n_devices, f"expected {n_devices} devices, inventory found {len(keys)}"

    def sim_clock() -> float:
        return float(clock_file.read_text())

    results: dict[str, dict[str, object]] = {}
    detect: list[float] = []
    false_pos: set[tuple[str, str]] = set()
    with HealthMonitor(inventory, clock=sim_clock, poll_interval_s=args.step) as monitor:
        for i, sc in enumerate(scenarios()):
            lines = noise_lines(keys, 1000 * (i + 1)) + list(sc.lines)
            trace = run_stepped(monitor, clock_file, faults, lines, sc.duration_s, args.step, 0.37 * (i % 3))
            first = next((t for t, g in trace if g.get(sc.device) == sc.grade), None)
            worst = max((g.get(sc.device, "healthy") for _, g in trace), key=_rank)
            ok = first is not None and worst == sc.grade
            d = round(max(0.0, first - sc.onset_s), 3) if first is not None else None
            if ok and d is not None:
                detect.append(d)
            results[sc.name] = {"detected": ok, "detect_s": d, "grade": worst, "expected": sc.grade,
                                "device": sc.device}
            for _, g in trace:
                for k, grade in g.items():
                    if k != sc.device and grade != "healthy":
                        false_pos.add((sc.name, k))
        # soak: every device noisy, no fault, --soak-hours simulated
        soak_lines = noise_lines(keys, 424242)
        t0 = time.monotonic()
        trace = run_stepped(monitor, clock_file, faults, soak_lines, args.soak_hours * 3600, args.step, 0.5)
        soak_wall = time.monotonic() - t0
        fp_time: dict[str, float] = {}
        for (t, g), (t2, _) in zip(trace, trace[1:] + [(trace[-1][0] + args.step, {})], strict=True):
            for k, grade in g.items():
                if grade != "healthy":
                    fp_time[k] = fp_time.get(k, 0.0) + (t2 - t)
        fp_reasons = {k: list(monitor.verdicts()[k].reasons) for k in fp_time}
    soak_hours = round(args.soak_hours * n_devices, 2)

    cpu = measure_cpu(inventory, args.poll_interval, args.cpu_seconds, faults, clock_file, n_devices)
    ebpf_info: dict[str, object] = {"ebpf": False, "ebpf_note": "skipped (--skip-ebpf)"}
    straggler: dict[str, object] = {}
    if not args.skip_ebpf:
        try:  # python -m bench.subhealth
            from bench.subhealth_straggler import VENDORS, scenario_name, straggler_scenario
        except ModuleNotFoundError:  # python bench/subhealth.py: bench/ is sys.path[0]
            from subhealth_straggler import (  # type: ignore[import-not-found,no-redef]
                VENDORS,
                scenario_name,
                straggler_scenario,
            )

        modes = ("interceptor",) if args.workload_signal == "interceptor" else ("ebpf", "interceptor")
        ebpf_loaded: bool | None = None
        for vendor in VENDORS:
            for mode in modes:
                info = straggler_scenario(ROOT, work, mode, vendor)
                sc = info.pop("scenario", None)
                name = scenario_name(vendor, mode)
                straggler[name] = info
                if mode == "ebpf":
                    ok = bool(info.get("ebpf"))
                    ebpf_loaded = ok if ebpf_loaded is None else ebpf_loaded and ok
                if isinstance(sc, dict):
                    results[name] = sc
                    if sc.get("detected") and isinstance(sc.get("detect_s"), float | int):
                        detect.append(float(sc["detect_s"]))  # type: ignore[arg-type]
        ebpf_info = {"ebpf": bool(ebpf_loaded)}
        if not ebpf_loaded:
            ebpf_info["ebpf_note"] = next((str(v.get("ebpf_note")) for v in straggler.values()
                                          if isinstance(v, dict) and v.get("ebpf_note")), "interceptor mode asked for")

    print(json.dumps({
        "scenarios": {k: {"detected": v["detected"], "detect_s": v["detect_s"], "grade": v["grade"]}
                      for k, v in results.items()},
        "detect_p99_s": p99(detect),
        "false_positive_device_hours": round(sum(fp_time.values()) / 3600, 4),
        "soak_device_hours": soak_hours,
        "ebpf": bool(ebpf_info.get("ebpf")),
        "details": {
            "scenario_devices": {k: v["device"] for k, v in results.items()},
            "scenario_false_positives": sorted(f"{a}:{b}" for a, b in false_pos),
            "soak_false_positive_devices": fp_reasons,
            "soak_step_s": args.step, "soak_wall_s": round(soak_wall, 1),
            "time": "stepped simulated clock (HCS_SIM_CLOCK); one poll per step",
            **cpu, **{k: v for k, v in ebpf_info.items() if k != "ebpf"},
            "straggler": straggler,
        },
    }))
    return 0


def _rank(grade: str) -> int:
    return ["healthy", "degraded", "failing", "lost"].index(grade)


def measure_cpu(inventory: object, interval: float, seconds: float, faults: Path, clock_file: Path,
                n_devices: int) -> dict[str, object]:
    """Real-time monitoring cost at the configured poll interval (healthy devices, events armed)."""
    from hcs.devices.health import HealthMonitor

    write_atomic(faults, "")
    with HealthMonitor(inventory, poll_interval_s=interval) as monitor:  # type: ignore[arg-type]
        monitor.poll()
        c0, w0 = time.process_time(), time.monotonic()
        polls = 0
        while time.monotonic() - w0 < seconds:
            monitor.wait(0.2)  # the DRA plugin / agent loop's slice
            polls += 1
        cpu, wall = time.process_time() - c0, time.monotonic() - w0
    pct = 100.0 * cpu / wall
    return {"cpu_pct_one_core_all_devices": round(pct, 3), "cpu_devices": n_devices,
            "cpu_pct_per_8_devices": round(pct * 8 / n_devices, 3), "cpu_poll_interval_s": interval,
            "cpu_wall_s": round(wall, 1)}


if __name__ == "__main__":
    raise SystemExit(main())
