"""Cambricon MLU backend: CNDev (``libcndev.so``) through ctypes, with its versioned structs."""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref, c_char, c_char_p, c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64
from typing import Any

from hcs.devices.backend import CRITICAL, Backend, Finding, VendorError, score, temperature_finding
from hcs.devices.ctypes_util import bind, bind_optional, bus_id, checker, cstr
from hcs.devices.injection import VendorRuntime
from hcs.devices.model import Device, Health, Link, LinkType, Vendor
from hcs.devices.subhealth import Signals

#: Injection without Cambricon's container toolkit: the MLU nodes and cambricon_ctl, cnmon, and the
#: Neuware driver libraries (CNRT, CNDrv, CNDev) found on the host.
RUNTIME = VendorRuntime(
    visible_devices=(("MLU_VISIBLE_DEVICES", "container"),),
    control_nodes=("/dev/cambricon_ctl",),
    mounts=("/usr/bin/cnmon",),
    libraries=("libcnrt.so", "libcndrv.so", "libcndev.so", "libcnpapi.so"),
    library_dirs=("/usr/local/neuware/lib64", "/usr/local/neuware/lib"),
)

CNDEV_VERSION_6 = 6
CNDEV_DEVICE_GOOD = 1
CNDEV_DRIVER_RUNNING = 4
MLULINK_UP = 1


class CardInfo(ctypes.Structure):
    _fields_ = [("version", c_int32), ("number", c_uint32)]


class UUIDInfo(ctypes.Structure):
    _fields_ = [("version", c_int32), ("uuid", c_uint8 * 37), ("ncsUUID64", c_uint64)]


class PCIeInfoV2(ctypes.Structure):
    _fields_ = [("subsystemId", c_uint32), ("deviceId", c_uint32), ("vendor", c_uint16),
                ("subsystemVendor", c_uint16), ("domain", c_uint32), ("bus", c_uint32), ("device", c_uint32),
                ("function", c_uint32), ("moduleId", c_uint16), ("slotId", c_uint16), ("reserved", c_uint32 * 8)]


class MemoryInfoV2(ctypes.Structure):
    _fields_ = [("physicalMemoryTotal", c_int64), ("physicalMemoryUsed", c_int64), ("reservedMemory", c_int64),
                ("virtualMemoryTotal", c_int64), ("virtualMemoryUsed", c_int64), ("globalMemory", c_uint64),
                ("reserved", c_uint64 * 16)]


class NUMANodeId(ctypes.Structure):
    _fields_ = [("version", c_int32), ("nodeId", c_int32)]


class MLULinkStatusV2(ctypes.Structure):
    _fields_ = [("macState", c_int32), ("serdesState", c_int32), ("presenceState", c_int32),
                ("serdesProgress", c_uint32), ("reserved", c_uint32 * 7)]


class MLULinkRemoteInfo(ctypes.Structure):
    _fields_ = [("version", c_int32), ("mcSn", c_uint64), ("baSn", c_uint64), ("slotId", c_uint32),
                ("portId", c_uint32), ("devIp", c_uint8 * 16), ("uuid", c_uint8 * 37), ("devIpVersion", c_uint32),
                ("isIpValid", c_uint32), ("connectType", c_int32), ("ncsUUID64", c_uint64),
                ("mac_addr", c_uint8 * 6), ("port_name", c_char * 256)]


class CardHealthState(ctypes.Structure):
    _fields_ = [("version", c_int32), ("health", c_int32), ("deviceState", c_int32), ("driverState", c_int32)]


class TemperatureInfo(ctypes.Structure):
    _fields_ = [("version", c_int32), ("board", c_int32), ("cluster", c_int32 * 20), ("memoryDie", c_int32 * 8),
                ("chip", c_int32), ("airInlet", c_int32), ("airOutlet", c_int32), ("memory", c_int32),
                ("videoInput", c_int32), ("cpu", c_int32), ("isp", c_int32)]


class UtilizationInfo(ctypes.Structure):
    _fields_ = [("version", c_int32), ("averageCoreUtilization", c_int32), ("coreUtilization", c_int32 * 80)]


_Dev = c_int32
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "cndevInit": (c_int32, [c_int32]),
    "cndevRelease": (c_int32, []),
    "cndevGetDeviceCount": (c_int32, [POINTER(CardInfo)]),
    "cndevGetDeviceHandleByIndex": (c_int32, [c_int32, POINTER(_Dev)]),
    "cndevGetCardNameStringByDevId": (c_char_p, [_Dev]),
    "cndevGetUUID": (c_int32, [POINTER(UUIDInfo), _Dev]),
    "cndevGetPCIeInfoV2": (c_int32, [POINTER(PCIeInfoV2), _Dev]),
    "cndevGetMemoryUsageV2": (c_int32, [POINTER(MemoryInfoV2), _Dev]),
    "cndevGetNUMANodeIdByDevId": (c_int32, [POINTER(NUMANodeId), _Dev]),
    "cndevGetMLULinkPortNumber": (c_int32, [_Dev]),
    "cndevGetMLULinkStatusV2": (c_int32, [POINTER(MLULinkStatusV2), _Dev, c_int32]),
    "cndevGetMLULinkRemoteInfo": (c_int32, [POINTER(MLULinkRemoteInfo), _Dev, c_int32]),
    "cndevGetCardHealthState": (c_int32, [POINTER(CardHealthState), _Dev]),
    "cndevGetTemperatureInfo": (c_int32, [POINTER(TemperatureInfo), _Dev]),
    "cndevGetDeviceUtilizationInfo": (c_int32, [POINTER(UtilizationInfo), _Dev]),
}


def mlu_uuid(raw: str) -> str:
    """CNDev returns the bare 36-character UUID; cnmon and HCS show it as ``MLU-<uuid>``."""
    return raw if raw.startswith("MLU-") else f"MLU-{raw}"


class CambriconBackend(Backend):
    vendor = Vendor.CAMBRICON

    def open(self) -> None:
        self.f = bind(self.lib, _SIGNATURES)
        self.check = checker("CNDev")
        self.check("cndevInit", self.f["cndevInit"](0))
        info = CardInfo(version=CNDEV_VERSION_6)
        self.check("cndevGetDeviceCount", self.f["cndevGetDeviceCount"](byref(info)))
        self.handles = []
        for i in range(info.number):
            h = _Dev()
            self.check("cndevGetDeviceHandleByIndex", self.f["cndevGetDeviceHandleByIndex"](i, byref(h)))
            self.handles.append(h.value)

    def devices(self) -> list[Device]:
        raw = []
        for i, h in enumerate(self.handles):
            try:
                raw.append(self._read(i, h))
            except VendorError as exc:
                raw.append({"error": str(exc)})
        uuid_to_index = {r["uuid"]: i for i, r in enumerate(raw) if "uuid" in r}
        out = []
        for i, r in enumerate(raw):
            if "error" in r:
                out.append(Device(Vendor.CAMBRICON, "unknown", "unknown", f"cambricon-{i}-unreachable", i, "", -1,
                                  0, 0, self.catalog.compute(None), health=Health(0, (r["error"],))))
                continue
            spec = self.catalog.lookup(Vendor.CAMBRICON, r["name"], r["total"])
            peers: dict[int, int] = {}
            for remote in r["remotes"]:
                j = uuid_to_index.get(remote)
                if j is not None and j != i:
                    peers[j] = peers.get(j, 0) + 1
            pair = spec.pair_gbps if spec else 0.0
            out.append(Device(
                vendor=Vendor.CAMBRICON, model=spec.id if spec else f"unknown:{r['name']}", name=r["name"],
                uuid=r["uuid"], index=i, pci_bus_id=r["pci"], numa_node=r["numa"], vram_total_bytes=r["total"],
                vram_used_bytes=r["used"], compute=self.catalog.compute(spec),
                device_nodes=(f"/dev/cambricon_dev{i}", "/dev/cambricon_ctl"),
                links=tuple(Link(LinkType.MLULINK, j, pair * n) for j, n in sorted(peers.items())),
                health=self.health(i), temperature_c=r["temp"], utilization_pct=r["util"],
            ))
        return out

    def _read(self, i: int, h: int) -> dict[str, Any]:
        f, check = self.f, self.check
        uuid = UUIDInfo(version=CNDEV_VERSION_6)
        check("cndevGetUUID", f["cndevGetUUID"](byref(uuid), h))
        pcie = PCIeInfoV2()
        check("cndevGetPCIeInfoV2", f["cndevGetPCIeInfoV2"](byref(pcie), h))
        mem = MemoryInfoV2()
        check("cndevGetMemoryUsageV2", f["cndevGetMemoryUsageV2"](byref(mem), h))
        numa = NUMANodeId(version=CNDEV_VERSION_6)
        numa_node = numa.nodeId if f["cndevGetNUMANodeIdByDevId"](byref(numa), h) == 0 else -1
        remotes = []
        for port in range(max(0, f["cndevGetMLULinkPortNumber"](h))):
            status = MLULinkStatusV2()
            if f["cndevGetMLULinkStatusV2"](byref(status), h, port) != 0 or status.macState != MLULINK_UP:
                continue
            remote = MLULinkRemoteInfo(version=CNDEV_VERSION_6)
            if f["cndevGetMLULinkRemoteInfo"](byref(remote), h, port) == 0:
                remotes.append(mlu_uuid(cstr(remote.uuid)))
        util = UtilizationInfo(version=CNDEV_VERSION_6)
        name = f["cndevGetCardNameStringByDevId"](h)
        return {
            "name": (name or b"unknown").decode(), "uuid": mlu_uuid(cstr(uuid.uuid)),
            "pci": bus_id(pcie.domain, pcie.bus, pcie.device, pcie.function),
            "total": int(mem.physicalMemoryTotal) << 20, "used": int(mem.physicalMemoryUsed) << 20,
            "numa": numa_node, "remotes": remotes, "temp": self._temperature(h),
            "util": util.averageCoreUtilization if f["cndevGetDeviceUtilizationInfo"](byref(util), h) == 0 else None,
        }

    def _temperature(self, h: int) -> int | None:
        temp = TemperatureInfo(version=CNDEV_VERSION_6)
        return temp.chip if self.f["cndevGetTemperatureInfo"](byref(temp), h) == 0 else None

    def health(self, index: int) -> Health:
        h = self.handles[index]
        state = CardHealthState(version=CNDEV_VERSION_6)
        status = self.f["cndevGetCardHealthState"](byref(state), h)
        if status != 0:
            return score([Finding(CRITICAL, f"device not responding (CNDev error {status})")])
        findings: list[Finding] = []
        if state.deviceState != CNDEV_DEVICE_GOOD:
            findings.append(Finding(CRITICAL, f"device state IN_PROBLEM (deviceState={state.deviceState})"))
        if state.driverState != CNDEV_DRIVER_RUNNING:
            findings.append(Finding(CRITICAL, f"driver not running (driverState={state.driverState})"))
        findings += temperature_finding(self._temperature(h))
        return score(findings)

    def close(self) -> None:
        self.f["cndevRelease"]()

    def signals(self, index: int) -> Signals:
        return _cambricon_signals(self, index)


class ECCInfo(ctypes.Structure):
    _fields_ = [("version", c_int32), ("oneBitError", c_uint64), ("multipleOneError", c_uint64),
                ("multipleError", c_uint64), ("multipleMultipleError", c_uint64),
                ("correctedError", c_uint64), ("uncorrectedError", c_uint64), ("totalError", c_uint64),
                ("addressForbiddenError", c_uint64)]


class PcieReplayCounter(ctypes.Structure):
    _fields_ = [("version", c_int32), ("counter", c_uint32)]


class CurrentPCIInfo(ctypes.Structure):
    _fields_ = [("version", c_int32), ("currentSpeed", c_int32), ("currentWidth", c_int32)]


class MaxPCIInfo(ctypes.Structure):
    _fields_ = [("version", c_int32), ("maxSpeed", c_int32), ("maxWidth", c_int32)]


class MLULinkErrorCounter(ctypes.Structure):
    _fields_ = [("correctFecCnt", c_uint64), ("uncorrectFecCnt", c_uint64), ("rxBadFcsPkt", c_uint64),
                ("txBadFcsPkt", c_uint64), ("illegalAccessCnt", c_uint64), ("reserved", c_uint64 * 11)]


class ThrottleReason(ctypes.Structure):
    _fields_ = [("version", c_int32), ("tdp", c_int32), ("powerSetting", c_int32), ("clockSetting", c_int32),
                ("frequencyLocked", c_int32), ("powerBrake", c_int32), ("thermalSlowdown", c_int32)]


class FrequencyInfo(ctypes.Structure):
    _fields_ = [("version", c_int32), ("boardFreq", c_int32), ("ddrFreq", c_int32), ("overtempDfsFlag", c_uint8),
                ("fastDfsFlag", c_uint8), ("mluClusterFreqCount", c_uint16), ("mluClusterFreq", c_uint16 * 20),
                ("boardDefaultFreq", c_int32), ("boardFreqArange", c_int32 * 2)]


class RemappedRow(ctypes.Structure):
    _fields_ = [("version", c_int32), ("correctRows", c_uint32), ("uncorrectRows", c_uint32),
                ("pendingRows", c_uint32), ("failedRows", c_uint32)]


_SUBHEALTH_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "cndevGetECCInfo": (c_int32, [POINTER(ECCInfo), _Dev]),
    "cndevGetPcieReplayCounter": (c_int32, [POINTER(PcieReplayCounter), _Dev]),
    "cndevGetCurrentPCIInfo": (c_int32, [POINTER(CurrentPCIInfo), _Dev]),
    "cndevGetMaxPCIInfo": (c_int32, [POINTER(MaxPCIInfo), _Dev]),
    "cndevGetMLULinkErrorCounter": (c_int32, [POINTER(MLULinkErrorCounter), _Dev, c_int32]),
    "cndevGetPerformanceThrottleReason": (c_int32, [POINTER(ThrottleReason), _Dev]),
    "cndevGetFrequencyInfo": (c_int32, [POINTER(FrequencyInfo), _Dev]),
    "cndevGetRemappedRows": (c_int32, [POINTER(RemappedRow), _Dev]),
}


def _cambricon_signals(self: CambriconBackend, index: int) -> Signals:
    """Sub-health sample through CNDev: card health, ECC, remapped rows, PCIe replay counter and
    current/max link, MLU-Link error counters (bad-FCS packets = CRC, uncorrected FEC = recovery),
    throttle reasons, board frequency, temperature."""
    opt = self.__dict__.get("_opt")
    if opt is None:
        opt = self.__dict__["_opt"] = bind_optional(self.lib, _SUBHEALTH_SIGNATURES)
    h = self.handles[index]
    v = CNDEV_VERSION_6
    state = CardHealthState(version=v)
    status = self.f["cndevGetCardHealthState"](byref(state), h)
    if status != 0:
        return Signals(vendor_health=Health(0, (f"device not responding (CNDev error {status})",)), lost=True)
    findings: list[Finding] = []
    if state.deviceState != CNDEV_DEVICE_GOOD:
        findings.append(Finding(CRITICAL, f"device state IN_PROBLEM (deviceState={state.deviceState})"))
    if state.driverState != CNDEV_DRIVER_RUNNING:
        findings.append(Finding(CRITICAL, f"driver not running (driverState={state.driverState})"))

    def call(name: str, obj: Any, *extra: Any) -> bool:
        return name in opt and opt[name](byref(obj), h, *extra) == 0

    ecc, replay, cur, top = ECCInfo(version=v), PcieReplayCounter(version=v), CurrentPCIInfo(version=v), \
        MaxPCIInfo(version=v)
    thr, freq, rows = ThrottleReason(version=v), FrequencyInfo(version=v), RemappedRow(version=v)
    have_ecc, have_replay = call("cndevGetECCInfo", ecc), call("cndevGetPcieReplayCounter", replay)
    have_link = call("cndevGetCurrentPCIInfo", cur) and call("cndevGetMaxPCIInfo", top)
    have_thr, have_freq, have_rows = call("cndevGetPerformanceThrottleReason", thr), \
        call("cndevGetFrequencyInfo", freq), call("cndevGetRemappedRows", rows)
    crc = recovery = None
    for port in range(max(0, self.f["cndevGetMLULinkPortNumber"](h))):
        errs = MLULinkErrorCounter()
        if call("cndevGetMLULinkErrorCounter", errs, port):
            crc = (crc or 0) + int(errs.rxBadFcsPkt)
            recovery = (recovery or 0) + int(errs.uncorrectFecCnt)
    throttle = frozenset(name for flag, name in ((thr.tdp, "power"), (thr.thermalSlowdown, "thermal"),
                                                 (thr.powerBrake, "hw_slowdown")) if have_thr and flag)
    return Signals(
        vendor_health=score(findings), temperature_c=self._temperature(h),
        ecc_sbe=int(ecc.correctedError) if have_ecc else None, ecc_dbe=int(ecc.uncorrectedError) if have_ecc else None,
        retired_pages=int(rows.correctRows) if have_rows else None,
        remap_pending=bool(rows.pendingRows) if have_rows else None,
        pcie_replays=int(replay.counter) if have_replay else None,
        pcie_width=int(cur.currentWidth) if have_link else None,
        pcie_max_width=int(top.maxWidth) if have_link else None,
        pcie_gen=int(cur.currentSpeed) if have_link else None, pcie_max_gen=int(top.maxSpeed) if have_link else None,
        link_crc=crc, link_recovery=recovery, throttle=throttle,
        clock_mhz=int(freq.boardFreq) if have_freq else None,
        max_clock_mhz=int(freq.boardDefaultFreq) if have_freq else None,
    )

