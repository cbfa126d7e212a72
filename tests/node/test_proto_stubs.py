"""The checked-in stubs under hcs/api/gen must be exactly what `make proto` generates today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "hcs" / "api" / "gen"


def _load_generate():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("hcs_proto_generate", REPO / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_checked_in_stubs_match_protos(tmp_path: Path) -> None:
    generate = _load_generate().generate
    out = tmp_path / "gen"
    generate(out)
    fresh, checked_in = _tree(out), _tree(GEN)
    missing = sorted(set(fresh) - set(checked_in))
    stale = sorted(set(checked_in) - set(fresh))
    differ = sorted(k for k in set(fresh) & set(checked_in) if fresh[k] != checked_in[k])
    assert not (missing or stale or differ), (
        f"hcs/api/gen is out of date with proto/: missing={missing} stale={stale} differ={differ}; "
        "run `make proto` and commit the result"
    )


def test_kubelet_method_paths_are_upstreams() -> None:
    from hcs.api.gen.deviceplugin.v1beta1 import api_pb2 as dp
    from hcs.api.gen.pluginregistration.v1 import api_pb2 as reg
    from hcs.api.gen.podresources.v1 import api_pb2 as pr

    assert dp.DESCRIPTOR.services_by_name["DevicePlugin"].full_name == "v1beta1.DevicePlugin"
    assert dp.DESCRIPTOR.services_by_name["Registration"].full_name == "v1beta1.Registration"
    assert reg.DESCRIPTOR.services_by_name["Registration"].full_name == "pluginregistration.Registration"
    assert pr.DESCRIPTOR.services_by_name["PodResourcesLister"].full_name == "v1.PodResourcesLister"
    # a few wire facts the kubelet depends on
    fields = dp.ContainerAllocateResponse.DESCRIPTOR.fields_by_name
    assert fields["cdi_devices"].number == 5 and fields["annotations"].number == 4
    assert dp.RegisterRequest.DESCRIPTOR.fields_by_name["options"].number == 4
    assert pr.ContainerDevices.DESCRIPTOR.fields_by_name["device_ids"].number == 2
    assert pr.DynamicResource.DESCRIPTOR.fields_by_name["claim_name"].number == 2
