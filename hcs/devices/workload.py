"""Workload-side sub-health: per-device synchronise latency from eBPF uprobes, and stragglers.

Mode "ebpf" (``EbpfLatencySource``): Debian's ``bpftrace`` attaches uprobes to the vendor runtime's
entry points in the node's runtime library (``libcuda.so.1``: ``cuCtxCreate_v2`` and
``cuDevicePrimaryCtxRetain`` remember each thread's device ordinal; ``cuCtxSynchronize`` and
``cuStreamSynchronize`` entry/return time the synchronise) without touching the workload. Every
half second bpftrace prints, per (pid, device ordinal), the number of synchronise calls and their mean
latency. The ordinal is the process's CUDA ordinal; ``ordinal_map`` turns it into a node device
key (the container's visible-device list, read from /proc/<pid>/environ).

When bpftrace is missing, the agent is not root, or the kernel refuses the probes, the source says
so once (log) and ``available`` stays False: no workload-side signal in that mode (the vendor-
library signals are unaffected). docs/operations.md lists the signals per mode.

``StragglerDetector`` compares each device's latency (the median of those per-interval minima over
a sliding window) with the median of
its same-model peers on the node: a device ``STRAGGLER_RATIO`` x slower than that median (with at
least ``MIN_PEERS`` peers reporting) gets a straggler reason, which the grader turns into
``degraded`` after its hold time.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

STRAGGLER_RATIO = 1.2  # 20 % slower than the same-model median
MIN_PEERS = 3
WINDOW_S = 3.0
MIN_CALLS = 20  # calls in the window before a device's mean counts

_LINE = re.compile(r"^@s\[(\d+), (\d+)\]: count (\d+), average (\d+), total (\d+)")
_MIN = re.compile(r"^@mn\[(\d+), (\d+)\]: (\d+)")


def bpftrace_script(library: str, sync_functions: tuple[str, ...]) -> str:
    lib = library
    probes = [
        f"uprobe:{lib}:cuCtxCreate_v2 {{ @dev[tid] = arg2; }}",
        f"uprobe:{lib}:cuDevicePrimaryCtxRetain {{ @dev[tid] = arg1; }}",
    ]
    for fn in sync_functions:
        probes.append(f"uprobe:{lib}:{fn} {{ @t[tid] = nsecs; }}")
        probes.append(f"uretprobe:{lib}:{fn} /@t[tid]/ {{ $l = nsecs - @t[tid]; @s[pid, @dev[tid]] = stats($l); "
                      f"@mn[pid, @dev[tid]] = min($l); delete(@t[tid]); }}")
    probes.append("interval:ms:500 { print(@s); print(@mn); clear(@s); clear(@mn); }")
    return "\n".join(probes) + "\n"


def exported_functions(library: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """The names among ``names`` the library exports (a uprobe on a missing symbol fails the script)."""
    try:
        data = Path(library).read_bytes()
    except OSError:
        return ()
    return tuple(n for n in names if (n.encode() + b"\0") in data)


class EbpfLatencySource:
    """Per-(pid, ordinal) synchronise latency samples from bpftrace; ``samples()`` drains them."""

    def __init__(self, library: str, bpftrace: str | None = None) -> None:
        self.library = library
        self.bpftrace = bpftrace or shutil.which("bpftrace") or ""
        self.available = False
        self.reason = ""
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[float, int, int, int, float]] = []  # (t, pid, ordinal, calls, min_ns)

    def start(self, ready_timeout_s: float = 20.0) -> bool:
        if not self.bpftrace:
            return self._unavailable("bpftrace not installed (make ebpf-tools)")
        if os.geteuid() != 0:
            return self._unavailable("not root: loading BPF programs needs CAP_BPF/CAP_PERFMON")
        funcs = exported_functions(self.library, ("cuCtxSynchronize", "cuStreamSynchronize"))
        if not funcs:
            return self._unavailable(f"{self.library}: no synchronise entry point to probe")
        script = bpftrace_script(self.library, funcs)
        try:
            self._proc = subprocess.Popen([self.bpftrace, "-e", script], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, bufsize=1)
        except OSError as exc:
            return self._unavailable(f"cannot run bpftrace: {exc}")
        assert self._proc.stdout is not None
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                err = self._proc.stderr.read() if self._proc.stderr else ""
                return self._unavailable(f"bpftrace exited: {err.strip()[-300:]}")
            if line.startswith("Attaching"):
                self.available = True
                threading.Thread(target=self._pump, name="hcs-ebpf", daemon=True).start()
                log.info("workload-side signals: eBPF uprobes on %s (%s)", self.library, ", ".join(funcs))
                return True
        return self._unavailable("bpftrace did not attach in time")

    def _unavailable(self, why: str) -> bool:
        self.reason = why
        log.warning("eBPF unavailable (%s): no workload-side latency signal in this mode", why)
        self.stop()
        return False

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        counts: dict[tuple[int, int], int] = {}
        for line in self._proc.stdout:
            m = _LINE.match(line.strip())
            if m is not None:
                counts[(int(m[1]), int(m[2]))] = int(m[3])
                continue
            m = _MIN.match(line.strip())
            if m is None:
                continue
            key = (int(m[1]), int(m[2]))
            with self._lock:  # the interval's minimum: robust to CPU-scheduling delays, which only add
                self._pending.append((time.monotonic(), key[0], key[1], counts.pop(key, 1), float(m[3])))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def samples(self) -> list[tuple[float, int, int, int, float]]:
        with self._lock:
            out, self._pending = self._pending, []
        return out

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None


def ordinal_map(pid: int, devices: list[str], proc: Path = Path("/proc")) -> Callable[[int], str | None]:
    """Map a process's CUDA ordinal to a node device key via its visible-device list (UUIDs or indexes
    in NVIDIA_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES); without one the ordinal is the node index."""
    visible: list[str] = []
    try:
        env = (proc / str(pid) / "environ").read_bytes().split(b"\0")
        for item in env:
            k, _, v = item.decode(errors="replace").partition("=")
            if k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES") and v not in ("", "all"):
                visible = v.split(",")
                break
    except OSError:
        pass

    def lookup(ordinal: int) -> str | None:
        if visible:
            if ordinal >= len(visible):
                return None
            entry = visible[ordinal].strip()
            return devices[int(entry)] if entry.isdigit() and int(entry) < len(devices) else None
        return devices[ordinal] if 0 <= ordinal < len(devices) else None

    return lookup


class StragglerDetector:
    """Sliding-window mean latency per device; a device far slower than its same-model peers is a straggler."""

    def __init__(self, model_of: dict[str, str], window_s: float = WINDOW_S, ratio: float = STRAGGLER_RATIO,
                 min_peers: int = MIN_PEERS) -> None:
        self.model_of = model_of
        self.window_s = window_s
        self.ratio = ratio
        self.min_peers = min_peers
        self._windows: dict[str, deque[tuple[float, int, float]]] = {}

    def add(self, t: float, device: str, count: int, mean_ns: float) -> None:
        w = self._windows.setdefault(device, deque())
        w.append((t, count, mean_ns))
        while w and t - w[0][0] > self.window_s:
            w.popleft()

    def means(self, now: float) -> dict[str, float]:
        """Per device: the median of the window's per-interval values (one starved interval cannot move it)."""
        out = {}
        for dev, w in self._windows.items():
            pts = [(c, m) for t, c, m in w if now - t <= self.window_s]
            if sum(c for c, _ in pts) >= MIN_CALLS:
                out[dev] = statistics.median(m for _, m in pts)
        return out

    def verdicts(self, now: float | None = None) -> dict[str, str]:
        now = time.monotonic() if now is None else now
        means = self.means(now)
        out: dict[str, str] = {}
        for dev, mean in means.items():
            model = self.model_of.get(dev, "")
            peers = [m for d, m in means.items() if d != dev and self.model_of.get(d, "") == model]
            if len(peers) < self.min_peers:
                continue
            med = statistics.median(peers)
            if med > 0 and mean >= self.ratio * med:
                out[dev] = (f"straggler: synchronise latency {mean / 1e6:.2f} ms, {100 * (mean / med - 1):.0f}% "
                            f"above the median of {len(peers)} {model} peers")
        return out


class WorkloadSignals:
    """eBPF source + straggler detector, as the ``workload`` callable HealthMonitor takes."""

    def __init__(self, source: EbpfLatencySource, devices: list[str], model_of: dict[str, str]) -> None:
        self.source = source
        self.devices = devices
        self.detector = StragglerDetector(model_of)

    def __call__(self) -> dict[str, str]:
        for t, pid, ordinal, count, mean in self.source.samples():
            key = ordinal_map(pid, self.devices)(ordinal)
            if key is not None:
                self.detector.add(t, key, count, mean)
        return self.detector.verdicts()


def find_runtime_library() -> str:
    """The node's CUDA driver library (the NVIDIA management library's search dirs), or ""."""
    from hcs.devices.libraries import search_dirs
    from hcs.devices.model import Vendor

    for d in search_dirs(Vendor.NVIDIA):
        candidate = os.path.join(d, "libcuda.so.1")
        if os.path.isfile(candidate):
            return candidate
    return ""


def start_workload_signals(devices: list[tuple[str, str]]) -> WorkloadSignals | None:
    """eBPF workload-side signals for the node's NVIDIA devices ``(key, model)``; None (logged once) when
    eBPF or the runtime library is unavailable."""
    nvidia = [(k, m) for k, m in devices if k.startswith("nvidia-")]
    if not nvidia:
        return None
    lib = find_runtime_library()
    if not lib:
        log.warning("eBPF workload signals: libcuda.so.1 not found on this node; no workload-side signal")
        return None
    source = EbpfLatencySource(lib)
    if not source.start():
        return None
    return WorkloadSignals(source, [k for k, _ in nvidia], dict(nvidia))
