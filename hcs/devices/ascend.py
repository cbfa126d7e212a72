"""Huawei Ascend backend: DCMI (``libdcmi.so``) through ctypes, card/device addressing."""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref, c_char_p, c_int, c_uint, c_ulonglong
from pathlib import Path
from typing import Any

from hcs.devices.backend import CRITICAL, WARNING, Backend, Finding, VendorError, score, temperature_finding
from hcs.devices.ctypes_util import bind, bind_optional, bus_id, checker, cstr
from hcs.devices.injection import VendorRuntime
from hcs.devices.model import Device, Health, Link, LinkType, Vendor
from hcs.devices.simhost import host_sysfs
from hcs.devices.subhealth import Signals

ASCEND_DRIVER_ROOT = "/usr/local/Ascend/driver"

#: Injection without the Ascend docker runtime: the davinci nodes, the driver tree (libascend_hal,
#: libdcmi, ...) and npu-smi mounted whole as Ascend's runtime does, plus libraries found elsewhere.
RUNTIME = VendorRuntime(
    visible_devices=(("ASCEND_VISIBLE_DEVICES", "host"),  # physical ids, for the Ascend docker runtime
                     ("ASCEND_RT_VISIBLE_DEVICES", "container")),
    control_nodes=("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"),
    mounts=(ASCEND_DRIVER_ROOT, "/usr/local/dcmi", "/usr/local/bin/npu-smi"),
    library_path=(f"{ASCEND_DRIVER_ROOT}/lib64", f"{ASCEND_DRIVER_ROOT}/lib64/driver"),
    libraries=("libascend_hal.so", "libdcmi.so", "libascendcl.so", "libc_sec.so", "libmmpa.so",
               "libdrvdsmi_host.so"),
    library_dirs=(f"{ASCEND_DRIVER_ROOT}/lib64", f"{ASCEND_DRIVER_ROOT}/lib64/driver",
                  f"{ASCEND_DRIVER_ROOT}/lib64/common", "/usr/local/dcmi"),
)

DCMI_TOPO_HCCS = 3
DCMI_DIE_NDIE = 0
DCMI_DEVICE_TYPE_HBM = 2
DCMI_UTIL_AICORE = 2
_HEALTH_TEXT = {1: ("minor alarm", WARNING), 2: ("major alarm", CRITICAL), 3: ("critical alarm", CRITICAL)}


class ChipInfo(ctypes.Structure):
    _fields_ = [("chip_type", ctypes.c_ubyte * 32), ("chip_name", ctypes.c_ubyte * 32),
                ("chip_ver", ctypes.c_ubyte * 32), ("aicore_cnt", c_uint)]


class PcieInfoAll(ctypes.Structure):
    _fields_ = [("venderid", c_uint), ("subvenderid", c_uint), ("deviceid", c_uint), ("subdeviceid", c_uint),
                ("domain", c_int), ("bdf_busid", c_uint), ("bdf_deviceid", c_uint), ("bdf_funcid", c_uint),
                ("reserve", ctypes.c_ubyte * 32)]


class DieId(ctypes.Structure):
    _fields_ = [("soc_die", c_uint * 5)]


class HbmInfo(ctypes.Structure):
    _fields_ = [("memory_size", c_ulonglong), ("freq", c_uint), ("memory_usage", c_ulonglong), ("temp", c_int),
                ("bandwith_util_rate", c_uint)]


class EccInfo(ctypes.Structure):
    _fields_ = [("enable_flag", c_int), ("single_bit_error_cnt", c_uint), ("double_bit_error_cnt", c_uint),
                ("total_single_bit_error_cnt", c_uint), ("total_double_bit_error_cnt", c_uint),
                ("single_bit_isolated_pages_cnt", c_uint), ("double_bit_isolated_pages_cnt", c_uint),
                ("single_bit_next_isolated_pages_cnt", c_uint), ("double_bit_next_isolated_pages_cnt", c_uint)]


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "dcmi_init": (c_int, []),
    "dcmi_get_card_list": (c_int, [POINTER(c_int), POINTER(c_int), c_int]),
    "dcmi_get_device_num_in_card": (c_int, [c_int, POINTER(c_int)]),
    "dcmi_get_device_logic_id": (c_int, [POINTER(c_int), c_int, c_int]),
    "dcmi_get_device_phyid_from_logicid": (c_int, [c_uint, POINTER(c_uint)]),
    "dcmi_get_device_chip_info": (c_int, [c_int, c_int, POINTER(ChipInfo)]),
    "dcmi_get_device_die_v2": (c_int, [c_int, c_int, c_int, POINTER(DieId)]),
    "dcmi_get_device_pcie_info_v2": (c_int, [c_int, c_int, POINTER(PcieInfoAll)]),
    "dcmi_get_device_hbm_info": (c_int, [c_int, c_int, POINTER(HbmInfo)]),
    "dcmi_get_affinity_cpu_info_by_device_id": (c_int, [c_int, c_int, c_char_p, POINTER(c_int)]),
    "dcmi_get_topo_info_by_device_id": (c_int, [c_int, c_int, c_int, c_int, POINTER(c_int)]),
    "dcmi_get_device_health": (c_int, [c_int, c_int, POINTER(c_uint)]),
    "dcmi_get_device_errorcode_v2": (c_int, [c_int, c_int, POINTER(c_int), POINTER(c_uint), c_uint]),
    "dcmi_get_device_ecc_info": (c_int, [c_int, c_int, c_int, POINTER(EccInfo)]),
    "dcmi_get_device_temperature": (c_int, [c_int, c_int, POINTER(c_int)]),
    "dcmi_get_device_utilization_rate": (c_int, [c_int, c_int, c_int, POINTER(c_uint)]),
}


def numa_of_pci(bus: str) -> int:
    """The kernel's NUMA node for a PCI device (what NVML reports for a GPU); -1 if unknown."""
    try:
        return max(-1, int((host_sysfs() / "bus/pci/devices" / bus / "numa_node").read_text().strip()))
    except (OSError, ValueError):
        return -1


def numa_of_cpus(cpulist: str, sysfs: Path = Path("/sys/devices/system/node")) -> int:
    """NUMA node holding every CPU of ``cpulist`` (``"0-23,48-71"``) on this host; -1 if unknown.

    Trusted only when the host's own NUMA layout contains all those CPUs (a simulated device on a
    smaller host, or a container with a partial /sys, gives -1 rather than a wrong guess).
    """
    try:
        wanted = _expand(cpulist)
    except ValueError:
        return -1
    for node in sorted(sysfs.glob("node[0-9]*")):
        try:
            if wanted and wanted <= _expand((node / "cpulist").read_text().strip()):
                return int(node.name[4:])
        except (OSError, ValueError):
            continue
    return -1


def _expand(cpulist: str) -> set[int]:
    cpus: set[int] = set()
    for part in filter(None, cpulist.split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


class AscendBackend(Backend):
    vendor = Vendor.ASCEND

    def open(self) -> None:
        self.f = bind(self.lib, _SIGNATURES)
        self.check = checker("DCMI")
        self.check("dcmi_init", self.f["dcmi_init"]())
        num = c_int()
        cards = (c_int * 64)()
        self.check("dcmi_get_card_list", self.f["dcmi_get_card_list"](byref(num), cards, 64))
        slots: list[tuple[int, int, int]] = []  # (logic id, card, device)
        for card in cards[: num.value]:
            n = c_int()
            self.check("dcmi_get_device_num_in_card", self.f["dcmi_get_device_num_in_card"](card, byref(n)))
            for dev in range(n.value):
                logic = c_int()
                self.check("dcmi_get_device_logic_id", self.f["dcmi_get_device_logic_id"](byref(logic), card, dev))
                slots.append((logic.value, card, dev))
        self.slots = [(card, dev) for _, card, dev in sorted(slots)]
        self.logic_ids = [logic for logic, _, _ in sorted(slots)]

    def devices(self) -> list[Device]:
        out = []
        for i, (card, dev) in enumerate(self.slots):
            try:
                out.append(self._device(i, card, dev))
            except VendorError as exc:
                out.append(Device(Vendor.ASCEND, "unknown", "unknown", f"ascend-{i}-unreachable", i, "", -1, 0, 0,
                                  self.catalog.compute(None), health=Health(0, (str(exc),))))
        return out

    def _device(self, i: int, card: int, dev: int) -> Device:
        f, check = self.f, self.check
        chip = ChipInfo()
        check("dcmi_get_device_chip_info", f["dcmi_get_device_chip_info"](card, dev, byref(chip)))
        die = DieId()
        check("dcmi_get_device_die_v2", f["dcmi_get_device_die_v2"](card, dev, DCMI_DIE_NDIE, byref(die)))
        pcie = PcieInfoAll()
        check("dcmi_get_device_pcie_info_v2", f["dcmi_get_device_pcie_info_v2"](card, dev, byref(pcie)))
        hbm = HbmInfo()
        check("dcmi_get_device_hbm_info", f["dcmi_get_device_hbm_info"](card, dev, byref(hbm)))
        phy = c_uint()
        check("dcmi_get_device_phyid_from_logicid", f["dcmi_get_device_phyid_from_logicid"](self.logic_ids[i],
                                                                                             byref(phy)))
        cpus = ctypes.create_string_buffer(256)
        length = c_int(256)
        bus = bus_id(pcie.domain, pcie.bdf_busid, pcie.bdf_deviceid, pcie.bdf_funcid)
        numa = numa_of_pci(bus)
        if numa < 0 and f["dcmi_get_affinity_cpu_info_by_device_id"](card, dev, cpus, byref(length)) == 0:
            numa = numa_of_cpus(cpus.value.decode(errors="replace"), host_sysfs() / "devices/system/node")
        name = cstr(chip.chip_name)
        total = int(hbm.memory_size) << 20
        spec = self.catalog.lookup(Vendor.ASCEND, name, total)
        links = []
        for j, (card2, dev2) in enumerate(self.slots):
            topo = c_int()
            if j != i and f["dcmi_get_topo_info_by_device_id"](card, dev, card2, dev2, byref(topo)) == 0 \
                    and topo.value == DCMI_TOPO_HCCS:
                links.append(j)
        pair = spec.pair_gbps if spec else 0.0
        util = c_uint()
        return Device(
            vendor=Vendor.ASCEND, model=spec.id if spec else f"unknown:{name}", name=name,
            uuid="-".join(f"{w:08X}" for w in die.soc_die), index=i,
            pci_bus_id=bus, numa_node=numa,
            vram_total_bytes=total, vram_used_bytes=int(hbm.memory_usage) << 20, compute=self.catalog.compute(spec),
            device_nodes=(f"/dev/davinci{phy.value}", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"),
            links=tuple(Link(LinkType.HCCS, j, pair) for j in links), health=self.health(i),
            temperature_c=self._temperature(card, dev),
            utilization_pct=util.value if f["dcmi_get_device_utilization_rate"](card, dev, DCMI_UTIL_AICORE,
                                                                                  byref(util)) == 0 else None,
        )

    def _temperature(self, card: int, dev: int) -> int | None:
        t = c_int()
        return t.value if self.f["dcmi_get_device_temperature"](card, dev, byref(t)) == 0 else None

    def health(self, index: int) -> Health:
        card, dev = self.slots[index]
        state = c_uint()
        status = self.f["dcmi_get_device_health"](card, dev, byref(state))
        if status != 0:
            return score([Finding(CRITICAL, f"device not responding (DCMI error {status})")])
        findings = health_code_findings(state.value)
        count = c_int()
        codes = (c_uint * 32)()
        if self.f["dcmi_get_device_errorcode_v2"](card, dev, byref(count), codes, 32) == 0 and count.value:
            shown = ", ".join(f"0x{c:08X}" for c in codes[: min(count.value, 32)])
            findings.append(Finding(0, f"error codes: {shown}"))
        ecc = EccInfo()
        if self.f["dcmi_get_device_ecc_info"](card, dev, DCMI_DEVICE_TYPE_HBM, byref(ecc)) == 0 \
                and ecc.double_bit_error_cnt:
            findings.append(Finding(CRITICAL, f"HBM double-bit ECC errors: {ecc.double_bit_error_cnt}"))
        findings += temperature_finding(self._temperature(card, dev))
        return score(findings)

    def signals(self, index: int) -> Signals:
        return _ascend_signals(self, index)


class PcieErrRate(ctypes.Structure):
    _fields_ = [(name, c_uint) for name in (
        "reg_deskew_fifo_overflow_intr_status", "reg_symbol_unlock_intr_status", "reg_deskew_unlock_intr_status",
        "reg_phystatus_timeout_intr_status", "symbol_unlock_counter", "pcs_rx_err_cnt", "phy_lane_err_counter",
        "pcs_rcv_err_status", "symbol_unlock_err_status", "phy_lane_err_status", "dl_lcrc_err_num",
        "dl_dcrc_err_num")]


DCMI_FREQ_AICORE_CURRENT = 7
DCMI_FREQ_AICORE_MAX = 9
_SUBHEALTH_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "dcmi_get_device_pcie_error_cnt": (c_int, [c_int, c_int, POINTER(PcieErrRate)]),
    "dcmi_get_device_frequency": (c_int, [c_int, c_int, c_int, POINTER(c_uint)]),
}


def health_code_findings(code: int) -> list[Finding]:
    """What DCMI's device health code says (0 = healthy)."""
    if code in _HEALTH_TEXT:
        text, penalty = _HEALTH_TEXT[code]
        return [Finding(penalty, f"DCMI health: {text} ({code})")]
    return [Finding(CRITICAL, f"DCMI health: unknown state {code}")] if code != 0 else []


def _ascend_signals(self: AscendBackend, index: int) -> Signals:
    """Sub-health sample through DCMI: health code, HBM ECC + isolated pages, PCIe link-layer CRC
    errors (what the link replays), AI Core frequency, temperature. DCMI has no HCCS error counter in
    the calls HCS uses: HCCS faults reach HCS as the device's health code and error codes."""
    opt = self.__dict__.get("_opt")
    if opt is None:
        opt = self.__dict__["_opt"] = bind_optional(self.lib, _SUBHEALTH_SIGNATURES)
    card, dev = self.slots[index]
    f = self.f
    state = c_uint()
    status = f["dcmi_get_device_health"](card, dev, byref(state))
    if status != 0:
        return Signals(vendor_health=Health(0, (f"device not responding (DCMI error {status})",)), lost=True)
    findings = health_code_findings(state.value)
    ecc = EccInfo()
    have_ecc = f["dcmi_get_device_ecc_info"](card, dev, DCMI_DEVICE_TYPE_HBM, byref(ecc)) == 0
    pcie = PcieErrRate()
    have_pcie = "dcmi_get_device_pcie_error_cnt" in opt and \
        opt["dcmi_get_device_pcie_error_cnt"](card, dev, byref(pcie)) == 0
    cur, top = c_uint(), c_uint()
    have_freq = "dcmi_get_device_frequency" in opt and \
        opt["dcmi_get_device_frequency"](card, dev, DCMI_FREQ_AICORE_CURRENT, byref(cur)) == 0 and \
        opt["dcmi_get_device_frequency"](card, dev, DCMI_FREQ_AICORE_MAX, byref(top)) == 0
    return Signals(
        vendor_health=score(findings), temperature_c=self._temperature(card, dev),
        ecc_sbe=int(ecc.total_single_bit_error_cnt) if have_ecc else None,
        ecc_dbe=int(ecc.total_double_bit_error_cnt) if have_ecc else None,
        retired_pages=int(ecc.single_bit_isolated_pages_cnt) + int(ecc.double_bit_isolated_pages_cnt)
        if have_ecc else None,
        pcie_replays=int(pcie.dl_lcrc_err_num) if have_pcie else None,
        clock_mhz=int(cur.value) if have_freq else None, max_clock_mhz=int(top.value) if have_freq else None,
    )

