"""Vendor injection table, quota file format and CDI spec shape."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dra_helpers import GiB, make_device  # noqa: E402

from hcs.devices.injection import InjectionOptions, QuotaFiles, container_edits, quota_file_text  # noqa: E402
from hcs.devices.model import Vendor  # noqa: E402
from hcs.node import cdi  # noqa: E402

QF = QuotaFiles("/h/quota", "/var/run/hcs/quota", "/h/shm", "/var/run/hcs/shm")


def _edits(vendor, indices, isolation=True):
    devs = [make_device(vendor, i) for i in indices]
    return container_edits(devs, [16 * GiB] * len(devs), QF,
                           InjectionOptions(interceptor_host_dir="/opt/hcs/lib", device_isolation=isolation))


def test_nvidia():
    e = _edits(Vendor.NVIDIA, [2, 5])
    env = e.env_dict()
    uuids = f"{make_device(Vendor.NVIDIA, 2).uuid},{make_device(Vendor.NVIDIA, 5).uuid}"
    assert env["NVIDIA_VISIBLE_DEVICES"] == uuids and env["CUDA_VISIBLE_DEVICES"] == uuids
    paths = [n.path for n in e.device_nodes]
    assert paths[:2] == ["/dev/nvidia2", "/dev/nvidia5"] and "/dev/nvidiactl" in paths and "/dev/nvidia-uvm" in paths


def test_ascend():
    e = _edits(Vendor.ASCEND, [1, 3])
    env = e.env_dict()
    assert env["ASCEND_VISIBLE_DEVICES"] == "1,3" and env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1"
    assert env["LD_LIBRARY_PATH"].startswith("/usr/local/Ascend/driver/lib64")
    assert {"/dev/davinci1", "/dev/davinci3", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"} <= {
        n.path for n in e.device_nodes}
    assert any(m.host_path == "/usr/local/Ascend/driver" and m.read_only for m in e.mounts)


def test_hygon_and_host_indices_without_isolation():
    e = _edits(Vendor.HYGON, [1], isolation=False)
    assert e.env_dict()["HIP_VISIBLE_DEVICES"] == "1"
    assert {"/dev/kfd", "/dev/dri/card1", "/dev/dri/renderD129"} <= {n.path for n in e.device_nodes}
    assert _edits(Vendor.HYGON, [1]).env_dict()["HIP_VISIBLE_DEVICES"] == "0"


def test_cambricon():
    e = _edits(Vendor.CAMBRICON, [0, 1])
    assert e.env_dict()["MLU_VISIBLE_DEVICES"] == "0,1"
    assert {"/dev/cambricon_dev0", "/dev/cambricon_dev1", "/dev/cambricon_ctl"} <= {n.path for n in e.device_nodes}


def test_interceptor_and_quota_env():
    env = _edits(Vendor.NVIDIA, [0]).env_dict()
    assert env["LD_PRELOAD"] == "/usr/local/hcs/lib/libhcs_interceptor.so"
    assert env["HCS_QUOTA_FILE"] == "/var/run/hcs/quota" and env["HCS_SHM_DIR"] == "/var/run/hcs/shm"
    mounts = {m.container_path: m for m in _edits(Vendor.NVIDIA, [0]).mounts}
    assert mounts["/usr/local/hcs/lib"].host_path == "/opt/hcs/lib" and mounts["/usr/local/hcs/lib"].read_only
    # read-only ledger dir (issue 16): its locks are the accounting, nothing in the container writes it
    assert mounts["/var/run/hcs/quota"].read_only and mounts["/var/run/hcs/shm"].read_only
    no_quota = container_edits([make_device()], [GiB], None)
    assert "LD_PRELOAD" not in no_quota.env_dict() and "HCS_QUOTA_FILE" not in no_quota.env_dict()


def test_quota_file_is_indexed_by_container_ordinal():
    assert quota_file_text([16 * GiB, 8 * GiB]) == "0 17179869184\n1 8589934592\n"


def test_mixed_vendors_rejected():
    with pytest.raises(ValueError, match="mix vendors"):
        container_edits([make_device(Vendor.NVIDIA, 0), make_device(Vendor.ASCEND, 0)], [GiB, GiB], None)


def test_cdi_spec_minimum_version_and_validation():
    edits = _edits(Vendor.NVIDIA, [0])
    spec = cdi.build_spec("ai.compute/device", [cdi.CdiDevice("abc-gpu", edits)], {})
    assert spec["cdiVersion"] == "0.4.0"  # mount type
    spec2 = cdi.build_spec("ai.compute/device", [cdi.CdiDevice("0abc-gpu", edits)], {"hcs.io/claim": "{}"})
    assert spec2["cdiVersion"] == "0.6.0"  # annotations
    assert cdi.validate_spec(spec) == [] and cdi.validate_spec(spec2) == []
    bad = dict(spec, cdiVersion="1.1.0", extra=1)
    problems = cdi.validate_spec(bad)
    assert any("minimum" in p for p in problems) and any("extra" in p for p in problems)
    with pytest.raises(ValueError, match="characters outside"):
        cdi.build_spec("ai.compute/device", [cdi.CdiDevice("bad name", edits)], {})


def test_write_atomic_leaves_no_temp(tmp_path):
    from hcs.fileio import atomic_write

    atomic_write(tmp_path / "a.json", b"{}")
    atomic_write(tmp_path / "a.json", b'{"x":1}')
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and (tmp_path / "a.json").read_bytes() == b'{"x":1}'
