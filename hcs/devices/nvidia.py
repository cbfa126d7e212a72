"""NVIDIA backend: NVML through nvidia-ml-py (``import pynvml``)."""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

import pynvml

from hcs.devices.backend import CRITICAL, NOTICE, Backend, Finding, VendorError, score, temperature_finding
from hcs.devices.injection import VendorRuntime
from hcs.devices.model import Compute, Device, Health, Link, LinkType, Vendor
from hcs.devices.subhealth import Signals

#: Injection without the NVIDIA container runtime (plain containerd + CDI): the device nodes, the
#: user-space driver libraries (the compute subset ``nvidia-ctk cdi generate`` mounts), nvidia-smi.
#: CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA number the GPUs as NVML and the allocator do (by bus id)
#: instead of fastest-first.
RUNTIME = VendorRuntime(
    visible_devices=(("NVIDIA_VISIBLE_DEVICES", "uuid"), ("CUDA_VISIBLE_DEVICES", "uuid")),
    env=(("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),),
    control_nodes=("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"),
    mounts=("/usr/bin/nvidia-smi",),
    libraries=("libcuda.so.1", "libcudadebugger.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1",
               "libnvidia-nvvm.so.4", "libnvidia-gpucomp.so", "libnvidia-opencl.so.1", "libnvidia-cfg.so.1",
               "libnvidia-allocator.so.1"),
    library_dirs=("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/aarch64-linux-gnu",
                  "/usr/local/nvidia/lib64"),
)

#: Xids that are application errors, not device faults (NVIDIA k8s-device-plugin's list).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
_EVENT_MASK = (pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError
               | pynvml.nvmlEventTypeSingleBitEccError)


def normalize_bus_id(bus_id: str | bytes) -> str:
    """NVML's ``00000000:18:00.0`` → ``0000:18:00.0`` (lower case)."""
    text = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
    domain, rest = text.lower().split(":", 1)
    return f"{int(domain, 16):04x}:{rest}"


class NvidiaBackend(Backend):
    vendor = Vendor.NVIDIA
    has_events = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handles: list[Any] = []
        self._events: Any = None
        self._lock = threading.Lock()

    def open(self) -> None:
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            raise VendorError(f"NVML initialisation failed: {exc}") from exc

    def devices(self) -> list[Device]:
        bus_to_index: dict[str, int] = {}
        raw: list[dict[str, Any]] = []
        for i, h in enumerate(self._handles):
            try:
                pci = pynvml.nvmlDeviceGetPciInfo(h)
                bus = normalize_bus_id(pci.busId)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                name = _text(pynvml.nvmlDeviceGetName(h))
                entry = {
                    "name": name, "uuid": _text(pynvml.nvmlDeviceGetUUID(h)), "bus": bus,
                    "total": int(mem.total), "used": int(mem.used),
                    "numa": _optional(pynvml.nvmlDeviceGetNumaNodeId, h, -1),
                    "minor": _optional(pynvml.nvmlDeviceGetMinorNumber, h, i),
                    "temp": _optional(pynvml.nvmlDeviceGetTemperature, h, None, pynvml.NVML_TEMPERATURE_GPU),
                    "util": _optional(lambda x: pynvml.nvmlDeviceGetUtilizationRates(x).gpu, h, None),
                    "remote": self._nvlink_remotes(h),
                }
            except pynvml.NVMLError as exc:
                entry = {"lost": str(exc), "name": "unknown", "uuid": f"nvidia-{i}-unreachable", "bus": "",
                         "total": 0, "used": 0, "numa": -1, "minor": i, "temp": None, "util": None, "remote": []}
            bus_to_index[entry["bus"]] = i
            raw.append(entry)
        peers = nvlink_peers([e["remote"] for e in raw], [e["bus"] for e in raw])
        out = []
        for i, e in enumerate(raw):
            spec = self.catalog.lookup(Vendor.NVIDIA, e["name"], e["total"])
            compute = self.catalog.compute(spec)
            links = tuple(Link(LinkType.NVLINK, peer, gbps) for peer, gbps in sorted(peers[i].items()))
            health = self.health(i) if "lost" not in e else Health(0, (f"NVML query failed: {e['lost']}",))
            out.append(Device(
                vendor=Vendor.NVIDIA, model=spec.id if spec else f"unknown:{e['name']}", name=e["name"],
                uuid=e["uuid"], index=i, pci_bus_id=e["bus"], numa_node=e["numa"],
                vram_total_bytes=e["total"], vram_used_bytes=e["used"], compute=compute or Compute(0, 0, 0, 0),
                device_nodes=(f"/dev/nvidia{e['minor']}",), links=links, health=health,
                temperature_c=e["temp"], utilization_pct=e["util"],
            ))
        return out

    def _nvlink_remotes(self, h: Any) -> list[RemoteLink]:
        remotes = []
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            try:
                if pynvml.nvmlDeviceGetNvLinkState(h, link) != pynvml.NVML_FEATURE_ENABLED:
                    continue
                bus = normalize_bus_id(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId)
            except pynvml.NVMLError:
                break  # no more links (INVALID_ARGUMENT / NOT_SUPPORTED)
            kind = _optional(pynvml.nvmlDeviceGetNvLinkRemoteDeviceType, h, pynvml.NVML_NVLINK_DEVICE_TYPE_GPU, link)
            version = _optional(pynvml.nvmlDeviceGetNvLinkVersion, h, 3, link)
            remotes.append(RemoteLink(bus, kind == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH, LINK_GBPS.get(version, 50.0)))
        return remotes

    def health(self, index: int) -> Health:
        h = self._handles[index]
        findings: list[Finding] = []
        try:
            temp = pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
            findings += temperature_finding(int(temp))
            ecc_uncorrected = _optional(pynvml.nvmlDeviceGetTotalEccErrors, h, 0,
                                        pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
            if ecc_uncorrected:
                findings.append(Finding(CRITICAL, f"uncorrectable (double-bit) ECC errors: {ecc_uncorrected}"))
            ecc_corrected = _optional(pynvml.nvmlDeviceGetTotalEccErrors, h, 0,
                                      pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC)
            if ecc_corrected:
                findings.append(Finding(NOTICE, f"correctable (single-bit) ECC errors: {ecc_corrected}"))
        except pynvml.NVMLError as exc:
            findings.append(Finding(CRITICAL, f"NVML query failed: {exc}"))
        return score(findings)

    def signals(self, index: int) -> Signals:
        """Sub-health sample through NVML (ECC, row remap, PCIe, NVLink errors, clocks, throttle)."""
        h = self._handles[index]
        try:
            temp = int(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))
        except pynvml.NVMLError as exc:
            return Signals(vendor_health=Health(0, (f"NVML query failed: {exc}",)), lost=True)

        def opt(fn: Any, *args: Any) -> Any:
            try:
                return fn(h, *args)
            except pynvml.NVMLError:
                return None

        rows = opt(pynvml.nvmlDeviceGetRemappedRows)
        reasons = opt(pynvml.nvmlDeviceGetCurrentClocksEventReasons) or 0
        crc = recovery = None
        for link in range(self._nvlink_count(index)):
            c = opt(pynvml.nvmlDeviceGetNvLinkErrorCounter, link, pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT)
            r = opt(pynvml.nvmlDeviceGetNvLinkErrorCounter, link, pynvml.NVML_NVLINK_ERROR_DL_RECOVERY)
            crc = (crc or 0) + int(c or 0)
            recovery = (recovery or 0) + int(r or 0)
        return Signals(
            temperature_c=temp,
            ecc_sbe=opt(pynvml.nvmlDeviceGetTotalEccErrors, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                        pynvml.NVML_VOLATILE_ECC),
            ecc_dbe=opt(pynvml.nvmlDeviceGetTotalEccErrors, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                        pynvml.NVML_VOLATILE_ECC),
            retired_pages=int(rows[0]) if rows else None, remap_pending=bool(rows[2]) if rows else None,
            pcie_replays=opt(pynvml.nvmlDeviceGetPcieReplayCounter),
            pcie_width=opt(pynvml.nvmlDeviceGetCurrPcieLinkWidth), pcie_max_width=opt(
                pynvml.nvmlDeviceGetMaxPcieLinkWidth),
            pcie_gen=opt(pynvml.nvmlDeviceGetCurrPcieLinkGeneration),
            pcie_max_gen=opt(pynvml.nvmlDeviceGetMaxPcieLinkGeneration),
            link_crc=crc, link_recovery=recovery,
            throttle=frozenset(name for bit, name in _THROTTLE_BITS if reasons & bit),
            clock_mhz=opt(pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_SM),
            max_clock_mhz=opt(pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_SM),
        )

    def _nvlink_count(self, index: int) -> int:
        counts: dict[int, int] = self.__dict__.setdefault("_nvlink_counts", {})
        if index not in counts:
            n = 0
            for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
                try:
                    pynvml.nvmlDeviceGetNvLinkState(self._handles[index], link)
                except pynvml.NVMLError:
                    break
                n += 1
            counts[index] = n
        return counts[index]

    def start_events(self) -> None:
        with self._lock:
            if self._events is None:
                self._events = pynvml.nvmlEventSetCreate()
                for h in self._handles:
                    try:
                        supported = pynvml.nvmlDeviceGetSupportedEventTypes(h)
                        pynvml.nvmlDeviceRegisterEvents(h, supported & _EVENT_MASK, self._events)
                    except pynvml.NVMLError:
                        continue  # lost/unsupported device: polled health covers it

    def wait_events(self, timeout_s: float) -> dict[int, Finding]:
        """Xid and ECC events from an NVML event set (application Xids ignored)."""
        self.start_events()
        found: dict[int, Finding] = {}
        try:
            data = pynvml.nvmlEventSetWait(self._events, int(timeout_s * 1000))
        except pynvml.NVMLError_Timeout:
            return found
        except pynvml.NVMLError as exc:
            raise VendorError(f"nvmlEventSetWait failed: {exc}") from exc
        index = self._index_of(data.device)
        if index is None:
            return found
        if data.eventType == pynvml.nvmlEventTypeXidCriticalError:
            if int(data.eventData) not in APPLICATION_XIDS:
                found[index] = Finding(CRITICAL, f"Xid {int(data.eventData)} reported by the driver")
        elif data.eventType == pynvml.nvmlEventTypeDoubleBitEccError:
            found[index] = Finding(CRITICAL, "double-bit ECC error event")
        return found

    def _index_of(self, handle: Any) -> int | None:
        target = ctypes_address(handle)
        for i, h in enumerate(self._handles):
            if ctypes_address(h) == target:
                return i
        return None

    def close(self) -> None:
        try:
            if self._events is not None:
                pynvml.nvmlEventSetFree(self._events)
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


_THROTTLE_BITS = ((pynvml.nvmlClocksEventReasonSwPowerCap, "power"),
                  (pynvml.nvmlClocksEventReasonSwThermalSlowdown, "thermal"),
                  (pynvml.nvmlClocksEventReasonHwThermalSlowdown, "thermal"),
                  (pynvml.nvmlClocksEventReasonHwSlowdown, "hw_slowdown"),
                  (pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown, "hw_slowdown"))



#: Bandwidth of one NVLink (GB/s, both directions) by generation: V100 6 x 50 = 300, A100 12 x 50 = 600,
#: H100/H200 18 x 50 = 900, B200 18 x 100 = 1800 (NVIDIA's NVLink generations table).
LINK_GBPS = {1: 40.0, 2: 50.0, 3: 50.0, 4: 50.0, 5: 100.0}


@dataclass(frozen=True)
class RemoteLink:
    """One active NVLink as NVML reports it: the PCI address at the far end, and whether that is a switch."""

    bus: str
    to_switch: bool
    gbps: float


def nvlink_peers(remotes: list[list[RemoteLink]], buses: list[str]) -> list[dict[int, float]]:
    """GB/s between every pair of GPUs, from each GPU's NVLinks.

    A direct link (bridge or mesh) adds its bandwidth to that pair. Links to NVSwitches join every GPU that
    reaches a switch of the same baseboard fabric: on HGX A100/H100/H200 each GPU spreads its links over
    all the switches, so any two GPUs talk at the smaller of their two switch bandwidths.
    """
    index = {bus: i for i, bus in enumerate(buses) if bus}
    out: list[dict[int, float]] = [{} for _ in remotes]
    switch_gbps = [sum(r.gbps for r in links if r.to_switch) for links in remotes]
    for i, links in enumerate(remotes):
        for r in links:
            j = index.get(r.bus)
            if not r.to_switch and j is not None and j != i:
                out[i][j] = out[i].get(j, 0.0) + r.gbps
    fabric = _switch_fabrics(remotes)
    for i in range(len(remotes)):
        for j in range(len(remotes)):
            if i != j and fabric[i] is not None and fabric[i] == fabric[j]:
                out[i][j] = out[i].get(j, 0.0) + min(switch_gbps[i], switch_gbps[j])
    return out


def _switch_fabrics(remotes: list[list[RemoteLink]]) -> list[str | None]:
    """Which switch fabric each GPU is on (switches reached from one GPU are one fabric), None for none."""
    parent: dict[str, str] = {}

    def root(bus: str) -> str:
        while parent.setdefault(bus, bus) != bus:
            bus = parent[bus]
        return bus

    for links in remotes:
        switches = sorted({r.bus for r in links if r.to_switch})
        for other in switches[1:]:
            parent[root(other)] = root(switches[0])
    return [next((root(r.bus) for r in links if r.to_switch), None) for links in remotes]


def ctypes_address(handle: Any) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional(fn: Any, h: Any, default: Any, *args: Any) -> Any:
    try:
        return fn(h, *args)
    except pynvml.NVMLError as exc:
        if isinstance(exc, pynvml.NVMLError_GpuIsLost):
            raise
        return default
