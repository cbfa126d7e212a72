"""Each simulated library exports the vendor ABI of reference/vendors.md under the real names (and
nothing of the shared simulator code), and is built under its real soname."""

from __future__ import annotations

import subprocess

import pytest
from drv_sim import LIB, SONAMES, build, run_child

ABI = {
    "nvidia": """nvmlInitWithFlags nvmlInit_v2 nvmlInit nvmlShutdown nvmlErrorString nvmlSystemGetDriverVersion
        nvmlSystemGetCudaDriverVersion nvmlSystemGetCudaDriverVersion_v2 nvmlDeviceGetCount_v2
        nvmlDeviceGetHandleByIndex_v2 nvmlDeviceGetHandleByUUID nvmlDeviceGetHandleByPciBusId_v2 nvmlDeviceGetName
        nvmlDeviceGetUUID nvmlDeviceGetSerial nvmlDeviceGetMinorNumber nvmlDeviceGetPciInfo_v3 nvmlDeviceGetMemoryInfo
        nvmlDeviceGetMemoryInfo_v2 nvmlDeviceGetNumaNodeId nvmlDeviceGetCudaComputeCapability
        nvmlDeviceGetTopologyCommonAncestor nvmlDeviceGetNvLinkState nvmlDeviceGetNvLinkRemotePciInfo_v2
        nvmlDeviceGetTemperature nvmlDeviceGetUtilizationRates nvmlDeviceGetTotalEccErrors
        nvmlDeviceGetSupportedEventTypes nvmlEventSetCreate nvmlDeviceRegisterEvents nvmlEventSetWait_v2
        nvmlEventSetFree""",
    "ascend": """dcmi_init dcmi_get_card_list dcmi_get_card_num_list dcmi_get_device_num_in_card
        dcmi_get_device_logic_id dcmi_get_device_phyid_from_logicid dcmi_get_card_id_device_id_from_logicid
        dcmi_get_device_chip_info dcmi_get_device_chip_info_v2 dcmi_get_product_type dcmi_get_device_die_v2
        dcmi_get_device_pcie_info_v2 dcmi_get_device_memory_info_v3 dcmi_get_device_hbm_info
        dcmi_get_affinity_cpu_info_by_device_id dcmi_get_topo_info_by_device_id dcmi_get_hccs_link_bandwidth_info
        dcmi_get_device_health dcmi_get_device_errorcode_v2 dcmi_get_device_ecc_info dcmi_get_device_temperature
        dcmi_get_device_utilization_rate dcmi_get_device_power_info dcmi_get_driver_version dcmi_get_dcmi_version""",
    "hygon": """rsmi_init rsmi_shut_down rsmi_status_string rsmi_num_monitor_devices rsmi_dev_name_get
        rsmi_dev_serial_number_get rsmi_dev_unique_id_get rsmi_dev_id_get rsmi_dev_pci_id_get
        rsmi_dev_memory_total_get rsmi_dev_memory_usage_get rsmi_topo_get_numa_node_number rsmi_topo_get_link_type
        rsmi_topo_get_link_weight rsmi_is_P2P_accessible rsmi_dev_xgmi_hive_id_get rsmi_dev_xgmi_error_status
        rsmi_dev_temp_metric_get rsmi_dev_busy_percent_get rsmi_dev_ecc_count_get rsmi_dev_power_ave_get
        rsmi_event_notification_init rsmi_event_notification_mask_set rsmi_event_notification_get
        rsmi_event_notification_stop""",
    "cambricon": """cndevInit cndevRelease cndevGetErrorString cndevGetDeviceCount cndevGetDeviceHandleByIndex
        cndevGetCardName cndevGetCardNameStringByDevId cndevGetCardSN cndevGetUUID cndevGetPCIeInfoV2
        cndevGetMemoryUsageV2 cndevGetNUMANodeIdByDevId cndevTopologyGetRelationship cndevGetMLULinkPortNumber
        cndevGetMLULinkStatusV2 cndevGetMLULinkRemoteInfo cndevGetCardHealthState cndevGetTemperatureInfo
        cndevGetDeviceUtilizationInfo cndevGetECCInfo""",
}
INTERNAL = ["sim_profile_load", "sim_vendor_count", "sim_device_health", "sj_parse", "sim_events_next"]


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    build()


@pytest.mark.parametrize("vendor", sorted(ABI))
def test_library_exports_the_vendor_abi_only(vendor: str) -> None:
    code = f"""
l = lib({vendor!r})
print(json.dumps({{"missing": [s for s in {ABI[vendor].split()!r} if not hasattr(l, s)],
                   "leaked": [s for s in {INTERNAL!r} if hasattr(l, s)]}}))
"""
    res = run_child(code, None)
    assert res["missing"] == [] and res["leaked"] == []


@pytest.mark.parametrize("vendor", sorted(SONAMES))
def test_real_soname(vendor: str) -> None:
    out = subprocess.run(["readelf", "-d", str(LIB / SONAMES[vendor])], capture_output=True, text=True).stdout
    assert f"Library soname: [{SONAMES[vendor]}]" in out


def test_development_links() -> None:
    assert (LIB / "libnvidia-ml.so").resolve() == (LIB / "libnvidia-ml.so.1").resolve()
    assert (LIB / "librocm_smi64.so").resolve() == (LIB / "librocm_smi64.so.2").resolve()
