"""Mutation as pure functions: the JSON patch applied to the pod gives the expected pod."""

from __future__ import annotations

import json
from typing import Any

from webhook_helpers import apply_patch, pod

from hcs.podspec import pod_template
from hcs.retarget import retarget_patch
from hcs.webhook.config import DraSettings, Mode, WebhookConfig
from hcs.webhook.mutate import Mutation, claim_template_spec, mutate_pod
from hcs.webhook.validate import validate_template

GI = 2**30
CFG = WebhookConfig()
IMAGES = {"pytorch/pytorch:2.4-cuda": {"ascend": "ascendhub/torch_npu:2.4", "hygon": "sourcefind/dtk-torch:2.4"}}


def mutate(obj: dict[str, Any], mode: Mode = Mode.DEVICE_PLUGIN, cfg: WebhookConfig = CFG,
           images: Any = None) -> tuple[dict[str, Any], Mutation]:
    t = pod_template(obj, "Pod")
    assert t is not None
    amounts, verdict = validate_template(t, cfg, None)
    assert verdict.allowed, verdict
    m = mutate_pod(obj, t, amounts, "team-a", mode, cfg, images)
    return apply_patch(obj, list(m.patch)), m


def test_device_plugin_mode_sets_scheduler_slot_and_normalises() -> None:
    obj = pod({"ai.compute/vram": "16384Mi", "ai.compute/tflops-fp16": "99.5", "cpu": "1"})
    out, m = mutate(obj)
    spec = out["spec"]
    assert spec["schedulerName"] == "hcs-scheduler"
    res = spec["containers"][0]["resources"]
    want = {"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "100", "ai.compute/slot": "1"}
    assert res["requests"] == {**want, "cpu": "1"}
    assert res["limits"] == want  # extended resources: limits must equal requests
    original = json.loads(out["metadata"]["annotations"]["hcs.io/original-request"])
    assert original == {"main": {"requests": {"ai.compute/vram": "16384Mi", "ai.compute/tflops-fp16": "99.5"}}}
    assert any("rounded up to 100" in w for w in m.warnings)
    assert m.templates == ()


def test_defaulted_scheduler_name_counts_as_unset() -> None:
    obj = pod({"ai.compute/vram": "8Gi"})
    obj["spec"]["schedulerName"] = "default-scheduler"  # what the API server's defaulting wrote
    out, _ = mutate(obj)
    assert out["spec"]["schedulerName"] == "hcs-scheduler"


def test_existing_scheduler_name_and_annotations_are_kept() -> None:
    obj = pod({"ai.compute/vram": "8Gi"}, annotations={"team": "x"})
    obj["spec"]["schedulerName"] = "my-scheduler"
    out, _ = mutate(obj)
    assert out["spec"]["schedulerName"] == "my-scheduler"
    assert out["metadata"]["annotations"]["team"] == "x"


def test_configurable_slot_resource() -> None:
    out, _ = mutate(pod({"ai.compute/vram": "8Gi"}), cfg=WebhookConfig(slot_resource="hcs.io/vslot"))
    assert out["spec"]["containers"][0]["resources"]["limits"]["hcs.io/vslot"] == "1"


def test_mutation_is_idempotent() -> None:
    for mode in Mode:
        once, _ = mutate(pod({"ai.compute/vram": "8Gi"}), mode)
        t = pod_template(once, "Pod")
        assert t is not None
        amounts, _ = validate_template(t, CFG, None)
        again = mutate_pod(once, t, amounts, "team-a", mode, CFG)
        assert again.patch == (), mode


def test_pod_without_metadata_gets_annotations() -> None:
    obj = pod({"ai.compute/vram": "8Gi"})
    del obj["metadata"]
    out, _ = mutate(obj)
    assert "hcs.io/original-request" in out["metadata"]["annotations"]


def test_dra_mode_translates_to_claim_template() -> None:
    obj = pod({"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "100", "cpu": "1"},
              {"ai.compute/vram": "16Gi", "memory": "1Gi"})
    out, m = mutate(obj, Mode.DRA, cfg=WebhookConfig(dra=DraSettings(min_split_bytes=GI)))
    spec = out["spec"]
    assert "schedulerName" not in spec  # kube-scheduler allocates DRA claims
    res = spec["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "1"} and res["limits"] == {"memory": "1Gi"}
    assert res["claims"] == [{"name": "hcs-main"}]
    (tpl,) = m.templates
    assert spec["resourceClaims"] == [{"name": "hcs-main", "resourceClaimTemplateName": tpl["metadata"]["name"]}]
    assert tpl["apiVersion"] == "resource.k8s.io/v1" and tpl["metadata"]["namespace"] == "team-a"
    (request,) = tpl["spec"]["spec"]["devices"]["requests"]
    alternatives = request["firstAvailable"]
    assert [(a["name"], a["count"], a["capacity"]["requests"]) for a in alternatives] == [
        ("x1", 1, {"memory": "16Gi", "tflopsFP16": "100"}),
        ("x2", 2, {"memory": "8Gi", "tflopsFP16": "50"}),
        ("x4", 4, {"memory": "4Gi", "tflopsFP16": "25"}),
        ("x8", 8, {"memory": "2Gi", "tflopsFP16": "13"}),
    ]
    assert all(a["deviceClassName"] == "vram.ai.compute" for a in alternatives)
    assert "constraints" not in tpl["spec"]["spec"]["devices"]


def test_dra_small_request_is_a_single_exact_request() -> None:
    spec = claim_template_spec(16 * GI, None, {}, DraSettings())
    assert "exactly" in spec["spec"]["devices"]["requests"][0]
    spec = claim_template_spec(32 * GI, None, {}, DraSettings())
    assert [a["count"] for a in spec["spec"]["devices"]["requests"][0]["firstAvailable"]] == [1, 2]
    spec = claim_template_spec(GI, None, {}, DraSettings())
    (request,) = spec["spec"]["devices"]["requests"]
    assert request["exactly"] == {"deviceClassName": "vram.ai.compute", "allocationMode": "ExactCount", "count": 1,
                                  "capacity": {"requests": {"memory": "1Gi"}}}


def test_dra_high_bandwidth_adds_island_constraint_and_selectors() -> None:
    ann = {"hcs.io/topology-preference": "high-bandwidth", "hcs.io/vendor": "nvidia", "hcs.io/model": "a100,!v100"}
    spec = claim_template_spec(160 * GI, None, ann, DraSettings(device_counts=(1, 2)))
    devices = spec["spec"]["devices"]
    assert devices["constraints"] == [{"requests": ["accel"], "matchAttribute": "ai.compute/island"}]
    alt = devices["requests"][0]["firstAvailable"]
    assert [a["capacity"]["requests"]["memory"] for a in alt] == ["160Gi", "80Gi"]
    exprs = [s["cel"]["expression"] for s in alt[0]["selectors"]]
    assert exprs == ['device.attributes["ai.compute"].vendor in ["nvidia"]',
                     'device.attributes["ai.compute"].model in ["a100-40g", "a100-80g"]',
                     '!(device.attributes["ai.compute"].model in ["v100"])']


def test_dra_templates_are_content_addressed() -> None:
    _, a = mutate(pod({"ai.compute/vram": "16Gi"}), Mode.DRA)
    _, b = mutate(pod({"ai.compute/vram": "16Gi"}, name="other"), Mode.DRA)
    _, c = mutate(pod({"ai.compute/vram": "24Gi"}), Mode.DRA)
    assert a.templates[0]["metadata"]["name"] == b.templates[0]["metadata"]["name"]
    assert a.templates[0]["metadata"]["name"] != c.templates[0]["metadata"]["name"]


def test_image_map_gates_the_pod_and_allocator_retargets() -> None:
    obj = pod({"ai.compute/vram": "16Gi"}, image="pytorch/pytorch:2.4-cuda")
    out, _ = mutate(obj, images=IMAGES)
    assert out["spec"]["schedulingGates"] == [{"name": "hcs.io/vendor-image"}]
    assert out["metadata"]["labels"]["hcs.io/allocator"] == "gated"  # the allocator's pod watch selects on it
    assert out["spec"]["containers"][0]["image"] == "pytorch/pytorch:2.4-cuda"
    recorded = json.loads(out["metadata"]["annotations"]["hcs.io/vendor-images"])
    assert recorded == {"main": IMAGES["pytorch/pytorch:2.4-cuda"]}
    out["metadata"]["resourceVersion"] = "42"
    ops = retarget_patch(out, "ascend")
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    final = apply_patch(out, ops)
    assert final["spec"]["containers"][0]["image"] == "ascendhub/torch_npu:2.4"
    assert final["spec"]["schedulingGates"] == []
    assert final["metadata"]["annotations"]["hcs.io/retargeted-vendor"] == "ascend"
    assert retarget_patch(final, "ascend") == []
    # a vendor without a mapped image keeps the original image but still loses the gate
    nv = apply_patch(out, retarget_patch(out, "nvidia"))
    assert nv["spec"]["containers"][0]["image"] == "pytorch/pytorch:2.4-cuda" and nv["spec"]["schedulingGates"] == []


def test_single_allowed_vendor_retargets_at_admission() -> None:
    obj = pod({"ai.compute/vram": "16Gi"}, image="pytorch/pytorch:2.4-cuda", annotations={"hcs.io/vendor": "hygon"})
    for mode in Mode:
        out, _ = mutate(obj, mode, images=IMAGES)
        assert out["spec"]["containers"][0]["image"] == "sourcefind/dtk-torch:2.4"
        assert "schedulingGates" not in out["spec"]


def test_unmapped_or_non_accelerator_pods_are_untouched() -> None:
    out, m = mutate(pod({"ai.compute/vram": "16Gi"}, image="busybox"), images=IMAGES)
    assert "schedulingGates" not in out["spec"] and "hcs.io/vendor-images" not in out["metadata"]["annotations"]
    t = pod_template(pod({"cpu": "1"}, image="pytorch/pytorch:2.4-cuda"), "Pod")
    assert t is not None
    assert mutate_pod(t.metadata, t, [], "ns", Mode.DEVICE_PLUGIN, CFG, IMAGES) == Mutation()


def test_dra_mode_multi_vendor_image_map_warns_instead_of_gating() -> None:
    out, m = mutate(pod({"ai.compute/vram": "16Gi"}, image="pytorch/pytorch:2.4-cuda"), Mode.DRA, images=IMAGES)
    assert "schedulingGates" not in out["spec"]
    assert any("DRA mode" in w for w in m.warnings)
