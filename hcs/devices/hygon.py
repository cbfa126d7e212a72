"""Hygon DCU backend: ROCm-SMI (Hygon's fork, ``librocm_smi64.so``) through ctypes."""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref, c_bool, c_char_p, c_int, c_int64, c_size_t, c_uint16, c_uint32, c_uint64
from typing import Any

from hcs.devices.backend import CRITICAL, NOTICE, Backend, Finding, VendorError, score, temperature_finding
from hcs.devices.ctypes_util import bind, bind_optional, bus_id, checker, cstr
from hcs.devices.injection import VendorRuntime
from hcs.devices.model import Device, Health, Link, LinkType, Vendor
from hcs.devices.subhealth import Signals

HYGON_HAL_DIR = "/opt/hyhal"

#: Injection without a vendor runtime: /dev/kfd (and Hygon's /dev/mkfd), each DCU's /dev/dri nodes, the
#: HAL tree mounted whole, and the HIP / ROCm-SMI / HSA libraries of DTK or ROCm found on the host.
RUNTIME = VendorRuntime(
    visible_devices=(("HIP_VISIBLE_DEVICES", "container"),),
    control_nodes=("/dev/kfd", "/dev/mkfd"),
    mounts=(HYGON_HAL_DIR,),
    libraries=("libamdhip64.so", "librocm_smi64.so", "libhsa-runtime64.so.1", "libhsakmt.so.1"),
    library_dirs=(f"{HYGON_HAL_DIR}/lib", "/opt/dtk/lib", "/opt/dtk/hip/lib", "/opt/rocm/lib",
                  "/opt/rocm/rocm_smi/lib"),
)

RSMI_STATUS_SUCCESS = 0
RSMI_MEM_TYPE_VRAM = 0
RSMI_IOLINK_TYPE_XGMI = 2
RSMI_TEMP_TYPE_EDGE = 0
RSMI_TEMP_CURRENT = 0
RSMI_GPU_BLOCK_UMC = 0x1


class RsmiErrorCount(ctypes.Structure):
    _fields_ = [("correctable_err", c_uint64), ("uncorrectable_err", c_uint64)]


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "rsmi_init": (c_int, [c_uint64]),
    "rsmi_shut_down": (c_int, []),
    "rsmi_num_monitor_devices": (c_int, [POINTER(c_uint32)]),
    "rsmi_dev_name_get": (c_int, [c_uint32, c_char_p, c_size_t]),
    "rsmi_dev_unique_id_get": (c_int, [c_uint32, POINTER(c_uint64)]),
    "rsmi_dev_id_get": (c_int, [c_uint32, POINTER(c_uint16)]),
    "rsmi_dev_pci_id_get": (c_int, [c_uint32, POINTER(c_uint64)]),
    "rsmi_dev_memory_total_get": (c_int, [c_uint32, c_int, POINTER(c_uint64)]),
    "rsmi_dev_memory_usage_get": (c_int, [c_uint32, c_int, POINTER(c_uint64)]),
    "rsmi_topo_get_numa_node_number": (c_int, [c_uint32, POINTER(c_uint32)]),
    "rsmi_topo_get_link_type": (c_int, [c_uint32, c_uint32, POINTER(c_uint64), POINTER(c_int)]),
    "rsmi_is_P2P_accessible": (c_int, [c_uint32, c_uint32, POINTER(c_bool)]),
    "rsmi_dev_temp_metric_get": (c_int, [c_uint32, c_uint32, c_int, POINTER(c_int64)]),
    "rsmi_dev_busy_percent_get": (c_int, [c_uint32, POINTER(c_uint32)]),
    "rsmi_dev_ecc_count_get": (c_int, [c_uint32, c_int, POINTER(RsmiErrorCount)]),
}


class HygonBackend(Backend):
    vendor = Vendor.HYGON

    def open(self) -> None:
        self.f = bind(self.lib, _SIGNATURES)
        self.check = checker("ROCm-SMI")
        self.check("rsmi_init", self.f["rsmi_init"](0))
        n = c_uint32()
        self.check("rsmi_num_monitor_devices", self.f["rsmi_num_monitor_devices"](byref(n)))
        self.count = n.value

    def devices(self) -> list[Device]:
        out = []
        for i in range(self.count):
            try:
                out.append(self._device(i))
            except VendorError as exc:
                out.append(self._lost(i, str(exc)))
        return out

    def _device(self, i: int) -> Device:
        f, check = self.f, self.check
        name = ctypes.create_string_buffer(256)
        check("rsmi_dev_name_get", f["rsmi_dev_name_get"](i, name, 256))
        uid, bdf, total, used, numa = c_uint64(), c_uint64(), c_uint64(), c_uint64(), c_uint32()
        check("rsmi_dev_unique_id_get", f["rsmi_dev_unique_id_get"](i, byref(uid)))
        check("rsmi_dev_pci_id_get", f["rsmi_dev_pci_id_get"](i, byref(bdf)))
        check("rsmi_dev_memory_total_get", f["rsmi_dev_memory_total_get"](i, RSMI_MEM_TYPE_VRAM, byref(total)))
        check("rsmi_dev_memory_usage_get", f["rsmi_dev_memory_usage_get"](i, RSMI_MEM_TYPE_VRAM, byref(used)))
        check("rsmi_topo_get_numa_node_number", f["rsmi_topo_get_numa_node_number"](i, byref(numa)))
        b = bdf.value
        pci = bus_id(b >> 32, (b >> 8) & 0xFF, (b >> 3) & 0x1F, b & 0x7)
        model_name = cstr(name)
        spec = self.catalog.lookup(Vendor.HYGON, model_name, total.value)
        links = []
        for j in range(self.count):
            if j == i:
                continue
            hops, kind = c_uint64(), c_int()
            if f["rsmi_topo_get_link_type"](i, j, byref(hops), byref(kind)) != RSMI_STATUS_SUCCESS:
                continue
            if kind.value == RSMI_IOLINK_TYPE_XGMI and hops.value == 1:
                links.append(Link(LinkType.XGMI, j, spec.pair_gbps if spec else 0.0))
        busy = c_uint32()
        util = busy.value if f["rsmi_dev_busy_percent_get"](i, byref(busy)) == 0 else None
        return Device(
            vendor=Vendor.HYGON, model=spec.id if spec else f"unknown:{model_name}", name=model_name,
            uuid=f"0x{uid.value:016x}", index=i, pci_bus_id=pci,
            numa_node=numa.value if numa.value < 0xFFFF else -1,
            vram_total_bytes=total.value, vram_used_bytes=used.value, compute=self.catalog.compute(spec),
            device_nodes=("/dev/kfd", "/dev/mkfd", f"/dev/dri/card{i}", f"/dev/dri/renderD{128 + i}"),
            links=tuple(links), health=self.health(i), temperature_c=self._temperature(i), utilization_pct=util,
        )

    def _lost(self, i: int, error: str) -> Device:
        return Device(Vendor.HYGON, "unknown", "unknown", f"hygon-{i}-unreachable", i, "", -1, 0, 0,
                      self.catalog.compute(None), health=Health(0, (error,)))

    def _temperature(self, i: int) -> int | None:
        milli = c_int64()
        status = self.f["rsmi_dev_temp_metric_get"](i, RSMI_TEMP_TYPE_EDGE, RSMI_TEMP_CURRENT, byref(milli))
        return int(milli.value // 1000) if status == RSMI_STATUS_SUCCESS else None

    def health(self, index: int) -> Health:
        findings: list[Finding] = []
        ecc = RsmiErrorCount()
        status = self.f["rsmi_dev_ecc_count_get"](index, RSMI_GPU_BLOCK_UMC, byref(ecc))
        if status != RSMI_STATUS_SUCCESS:
            name = ctypes.create_string_buffer(64)
            if self.f["rsmi_dev_name_get"](index, name, 64) != RSMI_STATUS_SUCCESS:
                return score([Finding(CRITICAL, f"device not responding (ROCm-SMI error {status})")])
        else:
            if ecc.uncorrectable_err:
                findings.append(Finding(CRITICAL, f"uncorrectable ECC errors: {ecc.uncorrectable_err}"))
            if ecc.correctable_err:
                findings.append(Finding(NOTICE, f"correctable ECC errors: {ecc.correctable_err}"))
        findings += temperature_finding(self._temperature(index))
        return score(findings)

    def close(self) -> None:
        self.f["rsmi_shut_down"]()

    def signals(self, index: int) -> Signals:
        return _hygon_signals(self, index)


RSMI_MAX_NUM_FREQUENCIES = 32
RSMI_CLK_TYPE_SYS = 0


class RsmiFrequencies(ctypes.Structure):
    _fields_ = [("num_supported", c_uint32), ("current", c_uint32),
                ("frequency", c_uint64 * RSMI_MAX_NUM_FREQUENCIES)]


class RsmiPcieBandwidth(ctypes.Structure):
    _fields_ = [("transfer_rate", RsmiFrequencies), ("lanes", c_uint32 * RSMI_MAX_NUM_FREQUENCIES)]


class RsmiRetiredPage(ctypes.Structure):
    _fields_ = [("page_address", c_uint64), ("page_size", c_uint64), ("status", c_int)]


_SUBHEALTH_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "rsmi_dev_pci_replay_counter_get": (c_int, [c_uint32, POINTER(c_uint64)]),
    "rsmi_dev_pci_bandwidth_get": (c_int, [c_uint32, POINTER(RsmiPcieBandwidth)]),
    "rsmi_dev_gpu_clk_freq_get": (c_int, [c_uint32, c_int, POINTER(RsmiFrequencies)]),
    "rsmi_dev_memory_reserved_pages_get": (c_int, [c_uint32, POINTER(c_uint32), POINTER(RsmiRetiredPage)]),
    "rsmi_dev_xgmi_error_status": (c_int, [c_uint32, POINTER(c_int)]),
    "rsmi_dev_xgmi_error_reset": (c_int, [c_uint32]),
}


def _hygon_signals(self: HygonBackend, index: int) -> Signals:
    """Sub-health sample through ROCm-SMI: UMC ECC, reserved (retired/pending) pages, PCIe replay
    counter and link rate/width, system clock level, xGMI error status (read, then reset, so each
    poll sees the errors since the previous one), temperature. The Hygon ROCm-SMI fork HCS targets
    has no throttle-reason call: a throttled clock shows as a clock drop."""
    opt = self.__dict__.get("_opt")
    if opt is None:
        opt = self.__dict__["_opt"] = bind_optional(self.lib, _SUBHEALTH_SIGNATURES)
    temp = self._temperature(index)
    if temp is None:
        return Signals(vendor_health=Health(0, ("device not responding (ROCm-SMI)",)), lost=True)
    ok = RSMI_STATUS_SUCCESS
    ecc = RsmiErrorCount()
    have_ecc = self.f["rsmi_dev_ecc_count_get"](index, RSMI_GPU_BLOCK_UMC, byref(ecc)) == ok
    replay = c_uint64()
    have_replay = "rsmi_dev_pci_replay_counter_get" in opt and \
        opt["rsmi_dev_pci_replay_counter_get"](index, byref(replay)) == ok
    bw = RsmiPcieBandwidth()
    width = gen = max_width = max_gen = None
    if "rsmi_dev_pci_bandwidth_get" in opt and opt["rsmi_dev_pci_bandwidth_get"](index, byref(bw)) == ok:
        n = min(int(bw.transfer_rate.num_supported), RSMI_MAX_NUM_FREQUENCIES)
        cur = int(bw.transfer_rate.current)
        if n > 0 and cur < n:
            gen, max_gen = cur + 1, n
            width, max_width = int(bw.lanes[cur]), max(int(bw.lanes[i]) for i in range(n))
    clk = RsmiFrequencies()
    clock = max_clock = None
    if "rsmi_dev_gpu_clk_freq_get" in opt and opt["rsmi_dev_gpu_clk_freq_get"](index, RSMI_CLK_TYPE_SYS,
                                                                             byref(clk)) == ok:
        n = min(int(clk.num_supported), RSMI_MAX_NUM_FREQUENCIES)
        if n > 0 and clk.current < n:
            clock = int(clk.frequency[clk.current] // 1_000_000)
            max_clock = int(max(clk.frequency[i] for i in range(n)) // 1_000_000)
    retired = pending = None
    pages = c_uint32(0)
    if "rsmi_dev_memory_reserved_pages_get" in opt and \
            opt["rsmi_dev_memory_reserved_pages_get"](index, byref(pages), None) == ok:
        records = (RsmiRetiredPage * max(1, pages.value))()
        got = c_uint32(pages.value)
        if pages.value and opt["rsmi_dev_memory_reserved_pages_get"](index, byref(got), records) in (ok, 11):
            retired = sum(1 for r in records[: got.value] if r.status == 0)
            pending = any(r.status == 1 for r in records[: got.value])
        else:
            retired, pending = 0, False
    xgmi = None
    status = c_int()
    if "rsmi_dev_xgmi_error_status" in opt and opt["rsmi_dev_xgmi_error_status"](index, byref(status)) == ok:
        xgmi = int(status.value)
        if xgmi and "rsmi_dev_xgmi_error_reset" in opt:
            opt["rsmi_dev_xgmi_error_reset"](index)
    return Signals(
        temperature_c=temp, ecc_sbe=int(ecc.correctable_err) if have_ecc else None,
        ecc_dbe=int(ecc.uncorrectable_err) if have_ecc else None, retired_pages=retired, remap_pending=pending,
        pcie_replays=int(replay.value) if have_replay else None, pcie_width=width, pcie_max_width=max_width,
        pcie_gen=gen, pcie_max_gen=max_gen, link_errors_since_last=xgmi, clock_mhz=clock, max_clock_mhz=max_clock,
    )

