"""Fault injection: health states per vendor (driver/README.md table), Xid/ECC events, ECC counters."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from drv_sim import build, profile_path, run_child

# Child prelude: FAULTS names the fault file; fault() appends (or rewrites) directives.
PRELUDE = r"""
FAULTS = os.environ["HCS_SIM_FAULTS"]
def fault(text, mode="a"):
    if mode == "w":
        tmp = FAULTS + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, FAULTS)
    else:
        with open(FAULTS, "a") as f:
            f.write(text)
"""


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    build()


def child(code: str, profile: str | Path, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    faults = tmp_path / "node.faults"
    return run_child(PRELUDE + code, profile, env={"HCS_SIM_FAULTS": str(faults)}, **kw)


def test_nvml_health_states(tmp_path: Path) -> None:
    code = r"""
lib("nvidia")
import pynvml as n
n.nvmlInit()
h = [n.nvmlDeviceGetHandleByIndex(i) for i in range(4)]
def probe(i):
    try:
        return {"mem": n.nvmlDeviceGetMemoryInfo(h[i]).total > 0, "temp": n.nvmlDeviceGetTemperature(h[i], 0),
                "uuid": n.nvmlDeviceGetUUID(h[i])}
    except n.NVMLError as e:
        return {"error": e.value, "uuid": n.nvmlDeviceGetUUID(h[i]), "name": n.nvmlDeviceGetName(h[i])}
out = {"before": probe(1)}
fault("nvidia 1 health warning\nnvidia 2 health critical\nnvidia 3 health lost\n")
out.update({"warning": probe(1), "critical": probe(2), "lost": probe(3)})
fault("nvidia 1 clear  # back to normal\nnvidia 2 health ok\n")
out.update({"cleared": probe(1), "ok_again": probe(2), "still_lost": probe(3)})
print(json.dumps(out))
"""
    out = child(code, "t4-pcie-4", tmp_path)
    assert out["before"]["temp"] == 35
    assert out["warning"]["temp"] == 90 and out["warning"]["mem"]
    assert out["critical"]["error"] == 15 and out["lost"]["error"] == 15  # GPU_IS_LOST
    assert out["critical"]["uuid"].startswith("GPU-") and out["lost"]["name"] == "Tesla T4"
    assert out["cleared"]["temp"] == 35 and "error" not in out["ok_again"]
    assert out["still_lost"]["error"] == 15


def test_nvml_link_to_lost_peer_is_down(tmp_path: Path) -> None:
    code = r"""
lib("nvidia")
import pynvml as n
n.nvmlInit()
h0 = n.nvmlDeviceGetHandleByIndex(0)
fault("nvidia 3 health lost\n")
print(json.dumps({"states": [n.nvmlDeviceGetNvLinkState(h0, k) for k in range(12)]}))
"""
    out = child(code, "a100-40g-nvlink-2x4", tmp_path)
    # Device 0's 12 NVLinks go 4 each to devices 1, 2 and 3 (an HGX A100 4-GPU mesh); links 8-11 reach device 3.
    assert out["states"] == [1] * 8 + [0] * 4


def test_nvml_links_to_nvswitches_stay_up_when_a_gpu_is_lost(tmp_path: Path) -> None:
    code = r"""
lib("nvidia")
import pynvml as n
n.nvmlInit()
h0 = n.nvmlDeviceGetHandleByIndex(0)
fault("nvidia 3 health lost\n")
print(json.dumps({"states": [n.nvmlDeviceGetNvLinkState(h0, k) for k in range(12)],
                  "types": [n.nvmlDeviceGetNvLinkRemoteDeviceType(h0, k) for k in range(12)]}))
"""
    out = child(code, "hgx-a100-nvswitch-8", tmp_path)
    assert out["states"] == [1] * 12 and out["types"] == [2] * 12  # NVML_NVLINK_DEVICE_TYPE_SWITCH


def test_xid_event_is_delivered_within_the_timeout(tmp_path: Path) -> None:
    code = r"""
import threading, time
lib("nvidia")
import pynvml as n
n.nvmlInit()
handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
fault("nvidia 5 xid 48\n")  # before the set exists: must never be delivered
s = n.nvmlEventSetCreate()
mask = n.nvmlEventTypeXidCriticalError | n.nvmlEventTypeDoubleBitEccError | n.nvmlEventTypeSingleBitEccError
for h in handles:
    n.nvmlDeviceRegisterEvents(h, mask & n.nvmlDeviceGetSupportedEventTypes(h), s)
threading.Timer(0.3, fault, args=("nvidia 3 xid 79\n",)).start()
ev = n.nvmlEventSetWait(s, 20000)
out = {"device": n.nvmlDeviceGetUUID(ev.device), "type": ev.eventType, "xid": ev.eventData}
try:
    n.nvmlEventSetWait(s, 100)
    out["then"] = "event"
except n.NVMLError as e:
    out["then"] = e.value
fault("nvidia 2 ecc double 3\nnvidia 2 ecc single\n")
e1 = n.nvmlEventSetWait(s, 20000); e2 = n.nvmlEventSetWait(s, 20000)
out["ecc_events"] = [[n.nvmlDeviceGetUUID(e.device), e.eventType] for e in (e1, e2)]
h2 = handles[2]
out["ecc"] = {"corrected": n.nvmlDeviceGetTotalEccErrors(h2, 0, 0),
              "uncorrected": n.nvmlDeviceGetTotalEccErrors(h2, 1, 1)}
out["uuids"] = [n.nvmlDeviceGetUUID(h) for h in handles]
n.nvmlEventSetFree(s)
print(json.dumps(out))
"""
    out = child(code, "h100-nvlink-8", tmp_path)
    assert out["device"] == out["uuids"][3]
    assert out["type"] == 0x8 and out["xid"] == 79
    assert out["then"] == 10  # NVML_ERROR_TIMEOUT: the pre-existing Xid 48 is not delivered
    assert out["ecc_events"] == [[out["uuids"][2], 0x2], [out["uuids"][2], 0x1]]
    assert out["ecc"] == {"corrected": 1, "uncorrected": 3}


def test_events_only_for_registered_devices_and_types(tmp_path: Path) -> None:
    code = r"""
lib("nvidia")
import pynvml as n
n.nvmlInit()
h0, h1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
s = n.nvmlEventSetCreate()
n.nvmlDeviceRegisterEvents(h0, n.nvmlEventTypeXidCriticalError, s)
fault("nvidia 1 xid 79\nnvidia 0 ecc double\nnvidia 0 xid 31\n")
ev = n.nvmlEventSetWait(s, 20000)
out = {"xid": ev.eventData, "is_h0": n.nvmlDeviceGetIndex(ev.device)}
try:
    n.nvmlEventSetWait(s, 50)
except n.NVMLError as e:
    out["then"] = e.value
print(json.dumps(out))
"""
    out = child(code, "t4-pcie-4", tmp_path)
    assert out == {"xid": 31, "is_h0": 0, "then": 10, "_stderr": out["_stderr"]}


def test_rewritten_fault_file_delivers_its_events(tmp_path: Path) -> None:
    code = r"""
lib("nvidia")
import pynvml as n
n.nvmlInit()
s = n.nvmlEventSetCreate()
for i in range(4):
    n.nvmlDeviceRegisterEvents(n.nvmlDeviceGetHandleByIndex(i), 0xB, s)
fault("nvidia 0 xid 13\n")
a = n.nvmlEventSetWait(s, 20000).eventData
fault("nvidia 1 xid 43\nnvidia 1 xid 45\n", mode="w")   # replaced, not appended
b = n.nvmlEventSetWait(s, 20000).eventData
c = n.nvmlEventSetWait(s, 20000).eventData
print(json.dumps({"xids": [a, b, c]}))
"""
    assert child(code, "t4-pcie-4", tmp_path)["xids"] == [13, 43, 45]


def test_dcmi_health_states_and_error_codes(tmp_path: Path) -> None:
    code = r"""
from ctypes import byref, c_int, c_uint
d = lib("ascend")
assert d.dcmi_init() == 0
def probe(card):
    h = c_uint(99); mem = DcmiMemoryInfo(); chip = DcmiChipInfo()
    return [d.dcmi_get_device_health(card, 0, byref(h)), h.value,
            d.dcmi_get_device_memory_info_v3(card, 0, byref(mem)), d.dcmi_get_device_chip_info(card, 0, byref(chip))]
fault("ascend 0 health warning\nascend 1 health critical\nascend 2 health lost\n"
      "ascend 3 errorcode 0x80E01801\nascend 3 errorcode 80CB8009\nascend 3 ecc double 2\n")
out = {"warning": probe(0), "critical": probe(1), "lost": probe(2)}
count = c_int(); codes = (c_uint * 8)(); ecc = DcmiEccInfo()
assert d.dcmi_get_device_errorcode_v2(3, 0, byref(count), codes, 8) == 0
assert d.dcmi_get_device_ecc_info(3, 0, 2, byref(ecc)) == 0
out["codes"] = [codes[i] for i in range(count.value)]
out["ecc"] = ecc.double_bit_error_cnt
one = (c_uint * 1)()
assert d.dcmi_get_device_errorcode_v2(3, 0, byref(count), one, 1) == 0
out["truncated"] = count.value
fault("ascend 3 clear\n")
assert d.dcmi_get_device_errorcode_v2(3, 0, byref(count), codes, 8) == 0
out["after_clear"] = count.value
print(json.dumps(out))
"""
    out = child(code, "ascend-910b-hccs-8", tmp_path)
    assert out["warning"] == [0, 1, 0, 0]
    assert out["critical"] == [0, 3, 0, 0]
    assert out["lost"][0] == -8007 and out["lost"][2] == -8007 and out["lost"][3] == 0
    assert out["codes"] == [0x80E01801, 0x80CB8009]
    assert out["ecc"] == 2 and out["truncated"] == 1 and out["after_clear"] == 0


def test_rocm_smi_health_states_and_event_notification(tmp_path: Path) -> None:
    code = r"""
from ctypes import byref, c_int64, c_uint32, c_uint64, create_string_buffer
r = rsmi(lib("hygon"))
assert r.rsmi_init(0) == 0
for i in range(8):
    assert r.rsmi_event_notification_init(i) == 0
    assert r.rsmi_event_notification_mask_set(i, c_uint64(1 << (3 - 1))) == 0   # GPU_PRE_RESET
def probe(i):
    t = c_int64(); ecc = RsmiErrorCount(); total = c_uint64(); name = create_string_buffer(32)
    return [r.rsmi_dev_temp_metric_get(i, 0, 0, byref(t)), t.value,
            r.rsmi_dev_ecc_count_get(i, c_uint64(1), byref(ecc)),
            ecc.uncorrectable_err, r.rsmi_dev_memory_total_get(i, 0, byref(total)), r.rsmi_dev_name_get(i, name, 32)]
fault("hygon 0 health warning\nhygon 1 health critical\nhygon 2 health lost\nhygon 4 ecc double 2\n")
out = {"warning": probe(0), "critical": probe(1), "lost": probe(2), "ecc": probe(4)}
n = c_uint32(8); data = (RsmiEvent * 8)()
out["notify"] = [r.rsmi_event_notification_get(5000, byref(n), data), n.value, data[0].dv_ind, data[0].event]
n = c_uint32(8)
out["none"] = r.rsmi_event_notification_get(50, byref(n), data)
print(json.dumps(out))
"""
    out = child(code, "hygon-k100ai-xgmi-8", tmp_path)
    assert out["warning"][:2] == [0, 90000]
    assert out["critical"][2:4] == [0, 1]  # uncorrectable >= 1
    assert out["lost"][0] == 10 and out["lost"][4] == 10 and out["lost"][5] == 0  # NOT_FOUND; name still answers
    assert out["ecc"][3] == 2
    assert out["notify"] == [0, 1, 4, 3]  # device 4, GPU_PRE_RESET
    assert out["none"] == 14  # NO_DATA


def test_cndev_health_states(tmp_path: Path) -> None:
    code = r"""
c = cndev(lib("cambricon"))
assert c.cndevInit(0) == 0
from ctypes import byref
def probe(i):
    hs = CnCardHealthState(version=6); t = CnTemperatureInfo(version=6); u = CnUUID(version=6)
    return [c.cndevGetCardHealthState(byref(hs), i), hs.deviceState, c.cndevGetTemperatureInfo(byref(t), i), t.board,
            c.cndevGetUUID(byref(u), i)]
fault("cambricon 0 health warning\ncambricon 1 health critical\ncambricon 2 health lost\ncambricon 3 ecc single 5\n")
ecc = CnECCInfo(version=6)
assert c.cndevGetECCInfo(byref(ecc), 3) == 0
st = CnMLULinkStatusV2()
assert c.cndevGetMLULinkStatusV2(byref(st), 0, 1) == 0   # device 0 link 1 -> device 2 (lost)
print(json.dumps({"warning": probe(0), "critical": probe(1), "lost": probe(2), "ecc": ecc.correctedError,
                  "link_to_lost": st.macState}))
"""
    out = child(code, "mlu370-x8-mlulink-8", tmp_path)
    assert out["warning"] == [0, 1, 0, 90, 0]
    assert out["critical"][:2] == [0, 0]  # IN_PROBLEM
    assert out["lost"][0] == 6 and out["lost"][2] == 6 and out["lost"][4] == 0  # INVALID_DEVICE_ID; uuid answers
    assert out["ecc"] == 5 and out["link_to_lost"] == 0


def test_bad_fault_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    code = r"""
lib("nvidia")
import pynvml as n
n.nvmlInit()
fault("nvidia 9 health lost\namd 0 health lost\nnvidia 0 health sick\nnvidia 0 xid\nnvidia 0 errorcode 1\n"
      "nvidia 0 frobnicate\nnvidia 1 health warning\n")
print(json.dumps({"t1": n.nvmlDeviceGetTemperature(n.nvmlDeviceGetHandleByIndex(1), 0),
                  "t0": n.nvmlDeviceGetTemperature(n.nvmlDeviceGetHandleByIndex(0), 0)}))
"""
    out = child(code, "t4-pcie-4", tmp_path)
    assert out["t1"] == 90 and out["t0"] == 33
    err = out["_stderr"]
    for lineno, what in [(1, "device index out of range"), (2, "unknown vendor"), (3, "health needs"), (4, "xid needs"),
                         (5, "errorcode applies to ascend"), (6, "unknown directive")]:
        assert f"node.faults:{lineno}: {what}" in err
    assert "node.faults:7" not in err


def test_default_fault_file_is_next_to_the_profile(tmp_path: Path) -> None:
    profile = tmp_path / "node.json"
    shutil.copy(profile_path("t4-pcie-4"), profile)
    (tmp_path / "node.json.faults").write_text("nvidia 2 health critical\n")
    code = r"""
lib("nvidia")
import pynvml as n
n.nvmlInit()
try:
    n.nvmlDeviceGetMemoryInfo(n.nvmlDeviceGetHandleByIndex(2))
    print(json.dumps({"code": 0}))
except n.NVMLError as e:
    print(json.dumps({"code": e.value}))
"""
    assert run_child(code, profile)["code"] == 15


CONCURRENT = r"""
import threading, time
lib("nvidia")
import pynvml as n
n.nvmlInit()
handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
s = n.nvmlEventSetCreate()
for h in handles:
    n.nvmlDeviceRegisterEvents(h, n.nvmlEventTypeXidCriticalError, s)
got, sweeps, errors = [], [], []
def waiter():
    while len(got) < 20:
        try:
            ev = n.nvmlEventSetWait(s, 20000)
        except n.NVMLError as e:
            errors.append(e.value)
            return
        got.append(ev.eventData)
def sweeper():
    for _ in range(30):
        sweeps.append(sorted((n.nvmlDeviceGetUUID(h), n.nvmlDeviceGetMemoryInfo(h).total,
                              n.nvmlDeviceGetTemperature(h, 0)) for h in handles))
threads = [threading.Thread(target=waiter)] + [threading.Thread(target=sweeper) for _ in range(3)]
for t in threads:
    t.start()
for code in range(1, 21):
    fault(f"nvidia {code % len(handles)} xid {code}\n")
    time.sleep(0.005)
for t in threads:
    t.join(60)
print(json.dumps({"xids": got, "errors": errors, "sweeps": len(sweeps),
                  "consistent": all(sw == sweeps[0] for sw in sweeps)}))
"""


def test_concurrent_waits_queries_and_appends(tmp_path: Path) -> None:
    out = child(CONCURRENT, "a100-80g-nvlink-8", tmp_path)
    assert out["errors"] == []
    assert out["xids"] == list(range(1, 21))  # every appended Xid once, in file order
    assert out["sweeps"] == 90 and out["consistent"]
