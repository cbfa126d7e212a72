"""Sub-health grading and hysteresis against the real simulated vendor libraries (stepped clock)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from hcs.devices.health import HealthMonitor
from hcs.devices.inventory import discover
from hcs.devices.model import Device, Health
from hcs.devices.subhealth import CLEAR_S, Grade, Grader, Signals
from hcs.devices.workload import StragglerDetector, bpftrace_script, exported_functions

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "driver" / "profiles"
LIB = ROOT / "driver" / "build" / "lib"

pytestmark = pytest.mark.skipif(not (LIB / "libnvidia-ml.so.1").exists(),
                                reason="simulated drivers not built (run `make dev`)")


@dataclass
class Sim:
    faults: Path
    clock: Path
    monitor: HealthMonitor

    def set(self, lines: list[str]) -> None:
        self.faults.write_text("\n".join(lines) + "\n")

    def run(self, until: float, start: float = 0.0, step: float = 1.0) -> list[tuple[float, dict[str, str]]]:
        out = []
        t = start
        while t <= until:
            tmp = self.clock.with_suffix(".tmp")
            tmp.write_text(f"{t}\n")
            os.replace(tmp, self.clock)
            self.monitor.poll()
            out.append((t, {k: v.grade.label for k, v in self.monitor.verdicts().items()}))
            t += step
        return out


def _sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: str) -> Iterator[Sim]:
    # a private copy of the profile: the libraries bind the fault file and clock to a profile path
    # the first time they load it, so a shared path would keep another test's files
    prof = tmp_path / profile
    shutil.copy(PROFILES / profile, prof)
    faults, clock = tmp_path / "node.faults", tmp_path / "clock"
    faults.write_text("")
    clock.write_text("0\n")
    for k, v in {"HCS_SIM_PROFILE": str(prof), "HCS_SIM_FAULTS": str(faults), "HCS_SIM_CLOCK": str(clock)}.items():
        monkeypatch.setenv(k, v)
    inv = discover()
    with HealthMonitor(inv, clock=lambda: float(clock.read_text())) as mon:
        yield Sim(faults, clock, mon)


@pytest.fixture
def a100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    yield from _sim(tmp_path, monkeypatch, "a100-80g-nvlink-8.json")


def first(trace: list[tuple[float, dict[str, str]]], key: str, grade: str) -> float | None:
    return next((t for t, g in trace if g[key] == grade), None)


def test_single_spikes_never_flap(a100: Sim) -> None:
    a100.set([
        "@10 nvidia 0 throttle thermal", "@11 nvidia 0 throttle none",  # a one-second throttle blip
        "@15 nvidia 1 clock_pct 60", "@16 nvidia 1 clock_pct 100",  # a one-second clock dip
        "@20 nvidia 2 ecc single 30",  # a burst of 30 SBEs at once (one sample's rate)
        "@25 nvidia 3 pcie_replay_rate 40", "@26 nvidia 3 pcie_replay_rate 0",  # one second of replays
        "@30 nvidia 4 temperature 88", "@31 nvidia 4 temperature 40",
    ])
    trace = a100.run(60)
    assert all(g == "healthy" for _, grades in trace for g in grades.values()), \
        [(t, k, g) for t, grades in trace for k, g in grades.items() if g != "healthy"]


def test_sustained_fault_raises_after_hold_and_clears_only_after_clear_window(a100: Sim) -> None:
    a100.set(["@10 nvidia 1 clock_pct 70", "@30 nvidia 1 clock_pct 100"])
    trace = a100.run(30 + CLEAR_S + 5)
    raised = first(trace, "nvidia-1", "degraded")
    assert raised is not None and 12 <= raised <= 13  # held 2 s, not on the first bad sample
    cleared = next(t for t, g in trace if t > raised and g["nvidia-1"] == "healthy")
    assert cleared >= 30 + CLEAR_S  # stays degraded through the clear window
    assert a100.monitor.verdicts()["nvidia-1"].grade == Grade.HEALTHY
    assert all(g[k] == "healthy" for _, g in trace for k in g if k != "nvidia-1")


def test_sbe_storm_then_dbe_is_failing_with_reasons(a100: Sim) -> None:
    a100.set(["@5 nvidia 2 ecc_rate single 40", "@12 nvidia 2 ecc double 1"])
    trace = a100.run(15)
    assert first(trace, "nvidia-2", "failing") == 8  # the storm: first rate sample at 6, held 2 s
    v = a100.monitor.verdicts()["nvidia-2"]
    assert v.grade == Grade.FAILING
    assert any("double-bit" in r for r in v.reasons) and any("storm" in r for r in v.reasons)
    health = a100.monitor.current()["nvidia-2"]
    assert health.grade == "failing" and not health.healthy


def test_pcie_replay_ramp_degraded_not_failing(a100: Sim) -> None:
    a100.set(["@0 nvidia 3 pcie_replay_rate 0 50 60"])
    trace = a100.run(70)
    t = first(trace, "nvidia-3", "degraded")
    assert t is not None and 2.4 <= t <= 2.4 + 5  # the rate passes 2/s at 2.4 s
    assert all(g["nvidia-3"] in ("healthy", "degraded") for _, g in trace)
    assert any("PCIe replays" in r for r in a100.monitor.verdicts()["nvidia-3"].reasons)


def test_noise_soak_has_no_false_positive(a100: Sim) -> None:
    a100.set([f"nvidia {i} noise {7 + i}" for i in range(8)])
    trace = a100.run(2 * 3600, step=2.0)  # 16 simulated device-hours of noise (the bench runs > 100)
    bad = [(t, k) for t, g in trace for k, v in g.items() if v != "healthy"]
    assert not bad


@pytest.mark.parametrize(("profile", "key", "lines", "grade"), [
    ("ascend-910b-hccs-8.json", "ascend-4", ["@0 ascend 4 clock_pct 70"], "degraded"),
    ("ascend-910b-hccs-8.json", "ascend-2", ["@0 ascend 2 ecc_rate single 3"], "degraded"),
    ("hygon-k100ai-xgmi-8.json", "hygon-2", ["@0 hygon 2 pcie_link 8 3"], "degraded"),
    ("hygon-k100ai-xgmi-8.json", "hygon-5", ["@0 hygon 5 link_crc_rate 5"], "degraded"),
    ("hygon-k100ai-xgmi-8.json", "hygon-1", ["@0 hygon 1 retired_pages 80"], "failing"),
    ("mlu370-x8-mlulink-8.json", "cambricon-3", ["@0 cambricon 3 link_crc_rate 6"], "degraded"),
    ("mlu370-x8-mlulink-8.json", "cambricon-6", ["@0 cambricon 6 throttle thermal"], "degraded"),
    ("mlu370-x8-mlulink-8.json", "cambricon-1", ["@0 cambricon 1 health critical"], "failing"),
])
def test_each_vendor_grades_its_signals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: str, key: str,
                                        lines: list[str], grade: str) -> None:
    for sim in _sim(tmp_path, monkeypatch, profile):
        sim.set(lines)
        trace = sim.run(8)
        t = first(trace, key, grade)
        assert t is not None and t <= 4, trace[-1]
        assert sim.monitor.verdicts()[key].reasons
        assert all(g[k] == "healthy" for _, g in trace for k in g if k != key)


def test_bad_scenario_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    faults = tmp_path / "f"
    faults.write_text("@-1 nvidia 0 slow 5\nnvidia 0 pcie_link 99 9\nnvidia 0 throttle sideways\n"
                      "nvidia 0 ecc_rate triple 4\n@abc nvidia 0 clock_pct 50\nnvidia 9 noise 1\n"
                      "nvidia 0 clock_pct 0\nnvidia 1 clock_pct 50\n")
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); assert lib.nvmlInit_v2() == 0\n"
            "def clk(i):\n"
            "    h, c = ctypes.c_void_p(), ctypes.c_uint()\n"
            "    assert lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h)) == 0\n"
            "    assert lib.nvmlDeviceGetClockInfo(h, 1, ctypes.byref(c)) == 0\n"
            "    return c.value\n"
            "print(clk(1), clk(0))")
    env = dict(os.environ, HCS_SIM_PROFILE=str(PROFILES / "a100-80g-nvlink-8.json"), HCS_SIM_FAULTS=str(faults))
    env.pop("HCS_SIM_CLOCK", None)
    out = subprocess.run([sys.executable, "-c", code, str(LIB / "libnvidia-ml.so.1")], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["705", "1410"]  # the one good line applies; device 0 untouched
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("hcs-sim:")]
    assert len(errors) == 7, out.stderr
    assert {int(ln.split(":")[2]) for ln in errors} == set(range(1, 8))


def test_grader_counter_reset_is_not_a_rate_spike() -> None:
    g = Grader()
    for t, n in [(0, 1000), (1, 1000), (2, 0), (3, 0), (4, 0)]:  # the driver reset its counter
        v = g.observe("x", t, Signals(pcie_replays=n))
    assert v.grade == Grade.HEALTHY


def test_taints_from_grades() -> None:
    from hcs.node.dra.slices import _taints

    base = _device()
    assert _taints(base, "ai.compute") == []
    deg = replace(base, health=Health(70, ("PCIe replays 9.0/s (limit 2/s)",), "degraded"))
    assert _taints(deg, "ai.compute") == [
        {"key": "ai.compute/degraded", "value": "PCIe-replays-9.0-s-limit-2-s", "effect": "NoSchedule"}]
    fail = replace(base, health=Health(10, ("uncorrectable (double-bit) ECC errors: 1",), "failing"))
    taint = _taints(fail, "ai.compute")[0]
    assert taint["effect"] == "NoExecute" and taint["key"] == "ai.compute/failing" and len(taint["value"]) <= 63


def _device() -> Device:
    from hcs.devices.model import Compute, Vendor

    return Device(Vendor.NVIDIA, "a100-80g", "NVIDIA A100", "GPU-x", 0, "0000:07:00.0", 0, 80 << 30, 0,
                  Compute(312, 19.5, 624, 1.0))


def test_straggler_detector_flags_the_slow_peer_only() -> None:
    det = StragglerDetector({f"d{i}": "m" for i in range(8)})
    for t in range(5):
        for i in range(8):
            det.add(float(t), f"d{i}", 100, 2.0e6 * (1.3 if i == 5 else 1.0) * (1 + 0.02 * (i % 3)))
    v = det.verdicts(4.0)
    assert list(v) == ["d5"]
    assert "above the median of 7 m peers" in v["d5"]
    det2 = StragglerDetector({"a": "m", "b": "m"})  # too few peers: no verdict
    det2.add(0, "a", 100, 1e6)
    det2.add(0, "b", 100, 9e6)
    assert det2.verdicts(0) == {}


def test_bpftrace_script_probes_only_exported_functions() -> None:
    lib = str(LIB / "libcuda.so.1")
    funcs = exported_functions(lib, ("cuCtxSynchronize", "cuNoSuchFunction"))
    assert funcs == ("cuCtxSynchronize",)
    script = bpftrace_script(lib, funcs)
    assert f"uretprobe:{lib}:cuCtxSynchronize" in script and "cuNoSuchFunction" not in script


def test_ebpf_source_says_unavailable_without_bpftrace(tmp_path: Path) -> None:
    from hcs.devices.workload import EbpfLatencySource

    src = EbpfLatencySource(str(LIB / "libcuda.so.1"), bpftrace=str(tmp_path / "no-bpftrace"))
    assert src.start(ready_timeout_s=5) is False
    assert not src.available and src.reason

