"""Workload-side sub-health: per-device synchronise latency from eBPF uprobes, and stragglers.

Mode "ebpf" (``EbpfLatencySource``): Debian's ``bpftrace`` attaches uprobes to the vendor runtimes'
entry points in the node's runtime libraries (``RUNTIMES``: CUDA's ``libcuda.so.1``, Ascend's
``libascendcl.so``, HIP's ``libamdhip64.so``, Cambricon's ``libcnrt.so``): the set-device / context
calls remember each thread's device ordinal (``cuCtxCreate_v2``, ``cuDevicePrimaryCtxRetain``,
``aclrtSetDevice``, ``hipSetDevice``, ``cnrtSetDevice``), the synchronise calls' entry/return time
the synchronise (``cuCtxSynchronize``, ``aclrtSynchronizeStream``, ``hipStreamSynchronize``,
``cnrtQueueSync``, ... ``RUNTIMES`` lists them) without touching the workload. With ``ioctl=True``
the syscall tracepoints ``sys_enter_ioctl``/``sys_exit_ioctl`` also time every ioctl of the
processes that use a runtime, per (pid, fd); the agent keeps the fds that are a vendor device node
(``DEVICE_NODES``, read from /proc/<pid>/fd) as a second latency signal of that device. Every half
second bpftrace prints, per (pid, runtime, device ordinal), the number of synchronise calls and
their minimum latency. The ordinal is the process's runtime ordinal; ``ordinal_map`` turns it into a
node device key (the container's visible-device list of that vendor, read from /proc/<pid>/environ).

Mode "interceptor" (``InterceptorTimingSource``, the fallback and the default): the interceptor
(libhcs_interceptor.so, interceptor/src/synctime.h) times every synchronise it passes through and
writes the latency into a per-device ring file in the node-wide compute dir (node.computeDir), named
by the device's UUID. The agent reads the new entries each poll: the same per-interval (count,
minimum) samples as the eBPF path, for the same detector. The files are tenant-writable (every
container of the node maps that dir read-write): sizes are fixed, every field is validated, a bad
file is ignored with one log line, and the signal can only ever raise ``degraded``.

``start_workload_signals`` picks the mode from ``HCS_WORKLOAD_PROBES``: ``ebpf`` tries the uprobes
and, when bpftrace is missing, the agent is not root, or the kernel refuses the probes, says so once
and falls back to the interceptor's timing; unset or ``interceptor``: the interceptor's timing;
``off``: no workload-side signal. docs/operations.md lists the signals per mode.

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
import stat
import statistics
import struct
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

READY = "hcs-ebpf-ready"  # printed by the script's BEGIN probe once every probe is attached
_LINE = re.compile(r"^@s\[(\d+), (\d+), (\d+)\]: count (\d+), average (\d+), total (\d+)")
_MIN = re.compile(r"^@mn\[(\d+), (\d+), (\d+)\]: (\d+)")
_IOCTL_LINE = re.compile(r"^@is\[(\d+), (\d+)\]: count (\d+), average (\d+), total (\d+)")
_IOCTL_MIN = re.compile(r"^@imn\[(\d+), (\d+)\]: (\d+)")


class Runtime:
    """A vendor runtime the uprobes time: its library, how a thread picks its device, its synchronises."""

    def __init__(self, vendor: str, rid: int, library: str, set_device: tuple[tuple[str, int], ...],
                 syncs: tuple[str, ...], visible: tuple[str, ...]) -> None:
        self.vendor = vendor
        self.rid = rid  # the runtime's number in bpftrace's map keys
        self.library = library  # soname, found in the vendor's library dirs
        self.set_device = set_device  # (function, argument index of the device ordinal)
        self.syncs = syncs
        self.visible = visible  # the environment variables that remap its ordinals in a container


RUNTIMES: dict[str, Runtime] = {r.vendor: r for r in (
    Runtime("nvidia", 0, "libcuda.so.1", (("cuCtxCreate_v2", 2), ("cuDevicePrimaryCtxRetain", 1)),
            ("cuCtxSynchronize", "cuStreamSynchronize"), ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")),
    Runtime("ascend", 1, "libascendcl.so", (("aclrtSetDevice", 0),),
            ("aclrtSynchronizeStream", "aclrtSynchronizeStreamWithTimeout", "aclrtSynchronizeDevice",
             "aclrtSynchronizeDeviceWithTimeout", "aclrtSynchronizeEvent"),
            ("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES")),
    Runtime("hygon", 2, "libamdhip64.so", (("hipSetDevice", 0),),
            ("hipStreamSynchronize", "hipDeviceSynchronize", "hipEventSynchronize"),
            ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")),
    Runtime("cambricon", 3, "libcnrt.so", (("cnrtSetDevice", 0),),
            ("cnrtQueueSync", "cnrtSyncQueue", "cnrtSyncDevice", "cnrtWaitNotifier"), ("MLU_VISIBLE_DEVICES",)),
)}
_BY_RID = {r.rid: r for r in RUNTIMES.values()}

#: Vendor device nodes an ioctl is attributed to: (vendor, pattern with the node's device number).
#: ``HCS_SIM_DEVICE_NODES`` (the simulated drivers' node dir) adds ``<dir>/<vendor>-<n>``.
DEVICE_NODES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("nvidia", re.compile(r"^/dev/nvidia(\d+)$")),
    ("ascend", re.compile(r"^/dev/davinci(\d+)$")),
    ("hygon", re.compile(r"^/dev/dri/renderD(\d+)$")),
    ("cambricon", re.compile(r"^/dev/cambricon_dev(\d+)$")),
)


def bpftrace_script(library: str | dict[str, str], sync_functions: tuple[str, ...] | dict[str, tuple[str, ...]],
                    ioctl: bool = False) -> str:
    """The bpftrace program: per runtime (vendor → library path, and the synchronise functions it
    exports) the set-device uprobes and the synchronise uprobe/uretprobe pairs; ``ioctl``: the ioctl
    syscall tracepoints for the processes that called one of those runtimes. A plain ``library`` /
    tuple is the CUDA runtime (the first version's signature)."""
    libs = {"nvidia": library} if isinstance(library, str) else library
    funcs = {"nvidia": sync_functions} if isinstance(sync_functions, tuple) else sync_functions
    # BEGIN fires once every other probe is attached ("Attaching N probes..." comes before): from
    # that line on, no set-device call of a starting workload is missed
    probes: list[str] = [f'BEGIN {{ printf("{READY}\\n"); }}']
    for vendor, lib in libs.items():
        rt = RUNTIMES[vendor]
        fns = funcs.get(vendor, ())
        if not fns:
            continue
        for fn, arg in rt.set_device:
            probes.append(f"uprobe:{lib}:{fn} {{ @dev{rt.rid}[tid] = arg{arg}; }}")
        for fn in fns:
            mark = " @proc[pid] = 1;" if ioctl else ""
            probes.append(f"uprobe:{lib}:{fn} {{ @t[tid] = nsecs;{mark} }}")
            probes.append(f"uretprobe:{lib}:{fn} /@t[tid]/ {{ $l = nsecs - @t[tid]; "
                          f"@s[pid, {rt.rid}, @dev{rt.rid}[tid]] = stats($l); "
                          f"@mn[pid, {rt.rid}, @dev{rt.rid}[tid]] = min($l); delete(@t[tid]); }}")
    if ioctl:
        probes.append("tracepoint:syscalls:sys_enter_ioctl /@proc[pid]/ { @it[tid] = nsecs; @ifd[tid] = args->fd; }")
        probes.append("tracepoint:syscalls:sys_exit_ioctl /@it[tid]/ { $l = nsecs - @it[tid]; "
                      "@is[pid, @ifd[tid]] = stats($l); @imn[pid, @ifd[tid]] = min($l); "
                      "delete(@it[tid]); delete(@ifd[tid]); }")
    # a thread's device and pending start go when it exits, so the maps (bpftrace's default 4,096 keys;
    # a larger BPFTRACE_MAP_KEYS_MAX made bpftrace 0.17's map updates fail silently here) stay small
    # however many threads come and go; the ioctl-process marks are re-made by the next synchronise
    # after each clear
    rids = sorted({RUNTIMES[v].rid for v, f in funcs.items() if f and v in libs})
    gone = " ".join(f"delete(@dev{r}[tid]);" for r in rids)
    if ioctl:
        gone += " delete(@it[tid]); delete(@ifd[tid]);"
    probes.append(f"tracepoint:sched:sched_process_exit {{ {gone} delete(@t[tid]); }}")
    if ioctl:
        probes.append("interval:s:60 { clear(@proc); }")
    prints = "print(@s); print(@mn); clear(@s); clear(@mn);"
    if ioctl:
        prints += " print(@is); print(@imn); clear(@is); clear(@imn);"
    probes.append(f"interval:ms:500 {{ {prints} }}")
    return "\n".join(probes) + "\n"


def exported_functions(library: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """The names among ``names`` the library exports (a uprobe on a missing symbol fails the script)."""
    try:
        data = Path(library).read_bytes()
    except OSError:
        return ()
    return tuple(n for n in names if (n.encode() + b"\0") in data)


def ensure_tracefs() -> str:
    """The syscall tracepoints need tracefs at /sys/kernel/tracing; mounted here when absent (root).
    Returns "" when it is there, else why not."""
    if os.path.isdir("/sys/kernel/tracing/events/syscalls"):
        return ""
    try:
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True, capture_output=True,
                       timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"tracefs not mounted and cannot be ({exc})"
    return "" if os.path.isdir("/sys/kernel/tracing/events/syscalls") else "no syscall tracepoints in tracefs"


class EbpfLatencySource:
    """Per-(pid, vendor, ordinal) synchronise latency samples from bpftrace; ``samples()`` drains them.

    ``library``: vendor → runtime library path (a plain path: the CUDA runtime). ``ioctl``: also the
    ioctl syscall tracepoints of the processes using those runtimes (``ioctl_samples()``)."""

    def __init__(self, library: str | dict[str, str], bpftrace: str | None = None, log_unavailable: bool = True,
                 ioctl: bool = False) -> None:
        self.libraries = {"nvidia": library} if isinstance(library, str) else dict(library)
        self.library = ", ".join(self.libraries.values())
        self.log_unavailable = log_unavailable  # False: the caller logs the reason (with its fallback)
        self.bpftrace = bpftrace or shutil.which("bpftrace") or ""
        self.ioctl = ioctl
        self.ioctl_note = ""  # why the ioctl tracepoints are not used ("" when they are or were not asked for)
        self.available = False
        self.reason = ""
        self.probed: dict[str, tuple[str, ...]] = {}  # vendor -> synchronise functions probed
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[float, int, str, int, int, float]] = []  # (t, pid, vendor, ordinal, calls, min)
        self._ioctl: list[tuple[float, int, int, int, float]] = []  # (t, pid, fd, calls, min_ns)

    def start(self, ready_timeout_s: float = 20.0) -> bool:
        if not self.bpftrace:
            return self._unavailable("bpftrace not installed (make ebpf-tools)")
        if os.geteuid() != 0:
            return self._unavailable("not root: loading BPF programs needs CAP_BPF/CAP_PERFMON")
        self.probed = {v: f for v, lib in self.libraries.items()
                       if (f := exported_functions(lib, RUNTIMES[v].syncs))}
        if not self.probed:
            return self._unavailable(f"{self.library}: no synchronise entry point to probe")
        ioctl = self.ioctl
        if ioctl:
            self.ioctl_note = ensure_tracefs()
            ioctl = not self.ioctl_note
            if self.ioctl_note:
                log.warning("eBPF ioctl tracepoints unavailable (%s): synchronise uprobes only", self.ioctl_note)
        script = bpftrace_script({v: self.libraries[v] for v in self.probed}, self.probed, ioctl=ioctl)
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
            if line.strip() == READY:
                self.available = True
                threading.Thread(target=self._pump, name="hcs-ebpf", daemon=True).start()
                log.info("workload-side signals: eBPF uprobes on %s%s", "; ".join(
                    f"{self.libraries[v]} ({', '.join(f)})" for v, f in self.probed.items()),
                    " and the ioctl syscall tracepoints" if ioctl else "")
                return True
        return self._unavailable("bpftrace did not attach in time")

    def _unavailable(self, why: str) -> bool:
        self.reason = why
        if self.log_unavailable:
            log.warning("eBPF unavailable (%s): no workload-side latency signal from uprobes", why)
        self.stop()
        return False

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        counts: dict[tuple[int, int, int], int] = {}
        icounts: dict[tuple[int, int], int] = {}
        for raw in self._proc.stdout:
            line = raw.strip()
            if (m := _LINE.match(line)) is not None:
                counts[(int(m[1]), int(m[2]), int(m[3]))] = int(m[4])
            elif (m := _MIN.match(line)) is not None:
                key = (int(m[1]), int(m[2]), int(m[3]))
                rt = _BY_RID.get(key[1])
                if rt is not None:
                    with self._lock:  # the interval's minimum: robust to CPU-scheduling delays, which only add
                        self._pending.append((time.monotonic(), key[0], rt.vendor, key[2], counts.pop(key, 1),
                                              float(m[4])))
            elif (m := _IOCTL_LINE.match(line)) is not None:
                icounts[(int(m[1]), int(m[2]))] = int(m[3])
            elif (m := _IOCTL_MIN.match(line)) is not None:
                ikey = (int(m[1]), int(m[2]))
                with self._lock:
                    self._ioctl.append((time.monotonic(), ikey[0], ikey[1], icounts.pop(ikey, 1), float(m[3])))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def samples(self) -> list[tuple[float, int, str, int, int, float]]:
        with self._lock:
            out, self._pending = self._pending, []
        return out

    def ioctl_samples(self) -> list[tuple[float, int, int, int, float]]:
        """(t, pid, fd, calls, min_ns) per interval of the ioctl tracepoints."""
        with self._lock:
            out, self._ioctl = self._ioctl, []
        return out

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None


def ordinal_map(pid: int, devices: list[str], proc: Path = Path("/proc"),
                vendor: str = "nvidia") -> Callable[[int], str | None]:
    """Map a process's runtime ordinal to a node device key via its visible-device list of that
    vendor (UUIDs or indexes in e.g. CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES); without one
    the ordinal is the node index among ``devices`` (that vendor's keys in node order)."""
    names = RUNTIMES[vendor].visible if vendor in RUNTIMES else ()
    visible: list[str] = []
    try:
        env = (proc / str(pid) / "environ").read_bytes().split(b"\0")
        found: dict[str, str] = {}
        for item in env:
            k, _, v = item.decode(errors="replace").partition("=")
            if k in names and v not in ("", "all"):
                found[k] = v
        for k in names:  # the first name the vendor's runtime honours wins
            if k in found:
                visible = found[k].split(",")
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


def device_node_key(pid: int, fd: int, devices: dict[str, list[str]], proc: Path = Path("/proc")) -> str | None:
    """The node device key of a process's fd when it is a vendor device node (``DEVICE_NODES``, or a
    simulated node ``<HCS_SIM_DEVICE_NODES>/<vendor>-<n>``), else None. ``devices``: vendor → keys."""
    try:
        target = os.readlink(proc / str(pid) / "fd" / str(fd))
    except OSError:
        return None
    for vendor, pattern in DEVICE_NODES:
        m = pattern.match(target)
        if m is not None:
            keys = devices.get(vendor, [])
            n = int(m[1]) - (128 if vendor == "hygon" else 0)  # renderD128 is the first GPU
            return keys[n] if 0 <= n < len(keys) else None
    sim = os.environ.get("HCS_SIM_DEVICE_NODES", "")
    if sim and os.path.dirname(target) == os.path.normpath(sim):
        vendor, _, n_s = os.path.basename(target).rpartition("-")
        keys = devices.get(vendor, [])
        if n_s.isdigit() and int(n_s) < len(keys):
            return keys[int(n_s)]
    return None


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
    """eBPF source + straggler detectors (synchronise latency; with the ioctl tracepoints, ioctl
    latency too), as the ``workload`` callable HealthMonitor takes. ``devices``: node keys
    ("<vendor>-<index>"); each vendor's keys in node order are its runtime's default ordinals."""

    mode = "ebpf"

    def __init__(self, source: EbpfLatencySource, devices: list[str], model_of: dict[str, str]) -> None:
        self.source = source
        self.devices = devices
        self.by_vendor: dict[str, list[str]] = {}
        for k in devices:
            self.by_vendor.setdefault(k.rsplit("-", 1)[0], []).append(k)
        self.detector = StragglerDetector(model_of)
        self.ioctl_detector = StragglerDetector(model_of)
        self._maps: dict[tuple[int, str], Callable[[int], str | None]] = {}

    def _lookup(self, pid: int, vendor: str) -> Callable[[int], str | None]:
        m = self._maps.get((pid, vendor))
        if m is None:
            if len(self._maps) > 4096:
                self._maps.clear()  # pids come and go
            m = self._maps[(pid, vendor)] = ordinal_map(pid, self.by_vendor.get(vendor, []), vendor=vendor)
        return m

    def __call__(self) -> dict[str, str]:
        for t, pid, vendor, ordinal, count, mean in self.source.samples():
            key = self._lookup(pid, vendor)(ordinal)
            if key is not None:
                self.detector.add(t, key, count, mean)
        for t, pid, fd, count, mn in self.source.ioctl_samples():
            key = device_node_key(pid, fd, self.by_vendor)
            if key is not None:
                self.ioctl_detector.add(t, key, count, mn)
        out = self.detector.verdicts()
        for k, why in self.ioctl_detector.verdicts().items():
            why = why.replace("straggler: synchronise latency", "straggler: driver ioctl latency")
            out[k] = f"{out[k]}; {why}" if k in out else why
        return out


def find_runtime_library(vendor: str = "nvidia") -> str:
    """The node's runtime library of ``vendor`` (RUNTIMES; in the vendor's library search dirs), or ""."""
    from hcs.devices.libraries import search_dirs
    from hcs.devices.model import Vendor

    rt = RUNTIMES.get(vendor)
    if rt is None:
        return ""
    for d in search_dirs(Vendor(vendor)):
        candidate = os.path.join(d, rt.library)
        if os.path.isfile(candidate):
            return candidate
    return ""


RING_MAGIC = 0x31545348  # "HST1" (interceptor/src/synctime.h)
RING_VERSION = 1
RING_SLOTS = 512
RING_ENTRY = 24
RING_HEADER = 64
RING_SIZE = RING_HEADER + RING_SLOTS * RING_ENTRY
MAX_LATENCY_NS = 3600 * 10**9  # a synchronise longer than an hour is not a sample, it is garbage
BAD_LOG_EVERY_S = 300.0  # a file that stays (or keeps turning) bad is logged at most this often
_HEADER = struct.Struct("<IIIIQ")
_ENTRY = struct.Struct("<QQQ")


def ring_id(uuid: str) -> str | None:
    """A device UUID's ring id (interceptor/src/synctime.h hcs_synctime_id): a "GPU-", "MIG-", "MLU-"
    or "0x" prefix and dashes dropped, lower case, 8 to 64 hex digits; None otherwise. NVIDIA
    "GPU-5f0c...", Ascend "F6D19118-C02FBE68-...", Hygon "0xb7c1...", Cambricon "MLU-5c4d..."."""
    u = uuid.strip()
    for prefix in ("GPU-", "MIG-", "MLU-", "0x"):
        if u[:len(prefix)].lower() == prefix.lower():
            u = u[len(prefix):]
            break
    u = u.replace("-", "").lower()
    if not 8 <= len(u) <= 64 or any(c not in "0123456789abcdef" for c in u):
        return None
    return u


def ring_name(uuid: str) -> str | None:
    """The interceptor's ring file name for a device UUID ("GPU-5f0c..." → "hcs-sync-5f0c....ring")."""
    rid = ring_id(uuid)
    return f"hcs-sync-{rid}.ring" if rid is not None else None


class BadRing(ValueError):
    pass


def ring_slot(seq: int) -> int:
    """The slot the interceptor writes sample ``seq`` (pid << 32 | n) to (synctime.h HCS_ST_SLOT)."""
    return ((seq >> 32) * 7919 + (seq & 0xFFFFFFFF)) % RING_SLOTS


def parse_ring(data: bytes, previous: bytes | None, fresh_from_ns: int, until_ns: int) -> list[int]:
    """The latencies (ns) of the valid entries whose bytes changed since ``previous`` (the last read's
    bytes; None: every entry) and that ended in [fresh_from_ns, until_ns]. Raises BadRing (with the
    reason) for a file that is not a ring or holds entries that are not samples."""
    if len(data) != RING_SIZE:
        raise BadRing(f"size {len(data)} bytes, expected {RING_SIZE}")
    magic, version, slots, entry, _ = _HEADER.unpack_from(data, 0)
    if (magic, version, slots, entry) != (RING_MAGIC, RING_VERSION, RING_SLOTS, RING_ENTRY):
        raise BadRing(f"header {magic:#x}/v{version}/{slots} slots/{entry} bytes is not an HST1 ring")
    out: list[int] = []
    invalid = 0
    old = previous if previous is not None and len(previous) == RING_SIZE else None
    for j in range(RING_SLOTS):
        off = RING_HEADER + j * RING_ENTRY
        if old is not None and data[off:off + RING_ENTRY] == old[off:off + RING_ENTRY]:
            continue  # read before
        seq, end_ns, lat_ns = _ENTRY.unpack_from(data, off)
        if seq == 0:
            continue  # empty
        if seq & 0xFFFFFFFF == 0 or ring_slot(seq) != j or not 0 < lat_ns <= MAX_LATENCY_NS or end_ns == 0:
            invalid += 1
            continue
        if fresh_from_ns <= end_ns <= until_ns:
            out.append(lat_ns)
    if invalid:
        raise BadRing(f"{invalid} of {RING_SLOTS} entries are not samples (sequence in another slot or latency "
                      f"outside 0..{MAX_LATENCY_NS // 10**9} s)")
    return out


class InterceptorTimingSource:
    """Per-device synchronise latency the interceptor records (the fallback when eBPF is unavailable).

    ``uuids`` maps node device keys to UUIDs; only those devices' ring files are read (by name, never
    by listing the directory). ``samples()`` returns ``(t, key, count, min_ns)`` per device with new
    entries since the last call."""

    available = True

    def __init__(self, directory: str | Path, uuids: dict[str, str], window_s: float = WINDOW_S,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.directory = Path(directory)
        self.window_s = window_s
        self._clock_ns = clock_ns
        self.files: dict[str, Path] = {}
        for key, uuid in uuids.items():
            name = ring_name(uuid)
            if name is not None:
                self.files[key] = self.directory / name
        self._last: dict[str, bytes] = {}  # the last good read's bytes, per device
        self._bad: set[str] = set()  # devices whose file is bad now
        self._last_said: dict[str, float] = {}  # key -> monotonic time of its last "ignored" line

    def _read(self, path: Path) -> bytes | None:
        """The file's bytes (at most RING_SIZE + 1), None when absent; OSError/BadRing otherwise."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadRing("not a regular file")
            return os.pread(fd, RING_SIZE + 1, 0)
        finally:
            os.close(fd)

    def samples(self) -> list[tuple[float, str, int, float]]:
        now_ns = self._clock_ns()
        t = now_ns / 1e9
        out: list[tuple[float, str, int, float]] = []
        for key, path in self.files.items():
            try:
                data = self._read(path)
                if data is None:
                    continue
                previous = self._last.get(key)
                if data == previous:
                    continue  # nothing written since the last read
                lats = parse_ring(data, previous, now_ns - int(self.window_s * 1e9), now_ns + 10**9)
                self._last[key] = data
            except (OSError, BadRing) as exc:
                self._say_bad(key, path, str(exc))
                continue
            if key in self._bad:
                self._bad.discard(key)
                log.info("workload timing %s: valid again", path)
            if lats:
                out.append((t, key, len(lats), float(min(lats))))
        return out

    def _say_bad(self, key: str, path: Path, why: str) -> None:
        now = time.monotonic()
        was_bad = key in self._bad
        self._bad.add(key)
        if was_bad or now - self._last_said.get(key, -BAD_LOG_EVERY_S) < BAD_LOG_EVERY_S:
            return  # already said for this episode, or said recently (a file flipping good/bad)
        self._last_said[key] = now
        log.warning("workload timing %s (%s): ignored (%s) until it is a valid ring again; this "
                    "advisory signal can only raise 'degraded'", path, key, why)

    def stop(self) -> None:
        pass


class TimingFileSignals:
    """Interceptor timing source + straggler detector, as the ``workload`` callable HealthMonitor takes."""

    mode = "interceptor"

    def __init__(self, source: InterceptorTimingSource, model_of: dict[str, str]) -> None:
        self.source = source
        self.detector = StragglerDetector(model_of)

    def __call__(self) -> dict[str, str]:
        for t, key, count, min_ns in self.source.samples():
            self.detector.add(t, key, count, min_ns)
        return self.detector.verdicts(time.monotonic())


def start_workload_signals(devices: list[tuple[str, str]], uuids: dict[str, str] | None = None,
                           compute_dir: str = "", probes: str | None = None,
                           bpftrace: str | None = None) -> WorkloadSignals | TimingFileSignals | None:
    """Workload-side signals for the node's devices ``(key, model)`` of every vendor with a runtime
    in ``RUNTIMES``, in the mode ``probes`` (default: ``HCS_WORKLOAD_PROBES``) asks for; the mode used
    is logged once. ``uuids`` (key → UUID) and ``compute_dir`` (node.computeDir) locate the
    interceptor's timing files. In eBPF mode the ioctl tracepoints are on unless
    ``HCS_WORKLOAD_IOCTL=off``."""
    known = [(k, m) for k, m in devices if k.rsplit("-", 1)[0] in RUNTIMES]
    if not known:
        return None
    probes = os.environ.get("HCS_WORKLOAD_PROBES", "") if probes is None else probes
    if probes == "off":
        log.info("workload-side signals: off (HCS_WORKLOAD_PROBES=off); vendor-library signals only")
        return None
    fallback_why = ""
    if probes == "ebpf":
        vendors = dict.fromkeys(k.rsplit("-", 1)[0] for k, _ in known)
        libs = {v: lib for v in vendors if (lib := find_runtime_library(v))}
        if not libs:
            fallback_why = "no vendor runtime library (" + ", ".join(RUNTIMES[v].library for v in vendors) + \
                ") found on this node"
        else:
            source = EbpfLatencySource(libs, bpftrace=bpftrace, log_unavailable=False,
                                       ioctl=os.environ.get("HCS_WORKLOAD_IOCTL", "") != "off")
            if source.start():
                return WorkloadSignals(source, [k for k, _ in known], dict(known))
            fallback_why = source.reason
    elif probes not in ("", "interceptor"):
        log.warning("HCS_WORKLOAD_PROBES=%r is not ebpf, interceptor or off; using the interceptor's timing",
                    probes[:40])
    keyed = {k: (uuids or {}).get(k, "") for k, _ in known}
    if not compute_dir or not any(ring_name(u) for u in keyed.values()):
        why = "no compute dir (node.computeDir)" if not compute_dir else "no device UUIDs"
        log.warning("workload-side signals: %s%s; no workload-side signal (vendor-library signals only)",
                    f"eBPF unavailable ({fallback_why}) and " if fallback_why else "", why)
        return None
    if fallback_why:
        log.warning("eBPF unavailable (%s); workload-side signals: falling back to the interceptor's "
                    "synchronise timing in %s", fallback_why, compute_dir)
    else:
        log.info("workload-side signals: the interceptor's synchronise timing in %s (HCS_WORKLOAD_PROBES=ebpf "
                 "for uprobes)", compute_dir)
    return TimingFileSignals(InterceptorTimingSource(compute_dir, keyed), dict(known))
