"""Validation rules as pure functions (no server): each denial says what, where and how to fix."""

from __future__ import annotations

from typing import Any

import pytest
from webhook_helpers import hb_pod, pod

from hcs.errors import ConfigError
from hcs.podspec import depth_exceeds, pod_template, split_selector
from hcs.webhook.capacity import CapacityUnavailable, ClusterIslands, Island, StaticCapacity
from hcs.webhook.config import FailurePolicy, Mode, WebhookConfig, webhook_config
from hcs.webhook.validate import validate_template

GI = 2**30
CFG = WebhookConfig()
BIG = StaticCapacity(640 * GI)


class Down:
    def islands(self) -> ClusterIslands:
        raise CapacityUnavailable("allocator unreachable (test)")


class Known:
    """A source that knows where each vendor's largest island is (like the allocator)."""

    def __init__(self, *islands: Island) -> None:
        by_vendor: dict[str, Island] = {}
        for i in islands:
            if i.vendor not in by_vendor or i.vram_bytes > by_vendor[i.vendor].vram_bytes:
                by_vendor[i.vendor] = i
        largest = max(islands, key=lambda i: i.vram_bytes) if islands else None
        self.answer = ClusterIslands(largest, by_vendor)

    def islands(self) -> ClusterIslands:
        return self.answer


NVL = Island(320 * GI, "nvidia", "big", "nvl-a", tuple(f"nvidia-{i}" for i in range(4)))
HCCS = Island(128 * GI, "ascend", "npu", "hccs-0", ("ascend-0", "ascend-1"))
MIXED = Known(NVL, HCCS)


def verdict(obj: dict[str, Any], kind: str = "Pod", cfg: WebhookConfig = CFG, capacity: Any = BIG) -> Any:
    t = pod_template(obj, kind)
    assert t is not None
    return validate_template(t, cfg, capacity)[1]


def test_plain_request_is_allowed() -> None:
    v = verdict(pod({"ai.compute/vram": "16Gi", "ai.compute/tflops-fp16": "100"}))
    assert v.allowed and not v.warnings


def test_pod_without_accelerators_is_not_ours() -> None:
    v = verdict(pod({"cpu": "1"}, privileged=True), capacity=Down())
    assert v.allowed and not v.warnings


@pytest.mark.parametrize(
    ("requests", "limits", "needle"),
    [
        ({"ai.compute/vram": "16GB"}, None, "not a valid quantity"),
        ({"ai.compute/vram": "0"}, None, "must be positive"),
        ({"ai.compute/vram": "-1Gi"}, None, "must be positive"),
        ({"ai.compute/tflops-fp16": "0"}, None, "must be positive"),
        ({"ai.compute/vram": "32Gi"}, {"ai.compute/vram": "16Gi"}, "limit 16Gi is smaller than its request 32Gi"),
        ({"ai.compute/gpus": "1"}, None, "unknown resource"),
    ],
)
def test_bad_requests_are_denied_with_location(requests: dict[str, str], limits: Any, needle: str) -> None:
    v = verdict(pod(requests, limits))
    assert not v.allowed
    text = " ".join(v.denials)
    assert needle in text
    assert "spec.containers[0] (container 'main')" in text


def test_limit_above_request_is_allowed_and_explained() -> None:
    t = pod_template(pod({"ai.compute/vram": "16Gi"}, {"ai.compute/vram": "32Gi"}), "Pod")
    assert t is not None
    amounts, v = validate_template(t, CFG, BIG)
    assert v.allowed
    assert amounts[0].vram_bytes == 16 * GI
    assert any("limit lowered" in n for n in amounts[0].notes)


def test_limit_only_counts_as_request() -> None:
    t = pod_template(pod(None, {"ai.compute/vram": "8Gi"}), "Pod")
    assert t is not None
    amounts, v = validate_template(t, CFG, BIG)
    assert v.allowed and amounts[0].vram_bytes == 8 * GI


def test_larger_than_largest_island_is_denied() -> None:
    v = verdict(hb_pod({"ai.compute/vram": "700Gi"}), capacity=StaticCapacity(640 * GI))
    assert not v.allowed
    assert "larger than the largest interconnect island in the cluster (640Gi)" in v.denials[0]
    assert verdict(hb_pod({"ai.compute/vram": "640Gi"}), capacity=StaticCapacity(640 * GI)).allowed


def test_denial_names_the_island_and_node() -> None:
    v = verdict(hb_pod({"ai.compute/vram": "321Gi"}), capacity=MIXED)
    assert v.denials == ("spec.containers[0] (container 'main'): ai.compute/vram 321Gi is larger than the largest "
                         "interconnect island in the cluster (320Gi: island nvl-a on node big, 4 devices); no node "
                         "can ever run it. Ask for less VRAM per container or split the work across pods",)
    assert verdict(hb_pod({"ai.compute/vram": "320Gi"}), capacity=MIXED).allowed


def test_vendor_pin_is_checked_against_that_vendors_islands() -> None:
    ann = {"hcs.io/vendor": "ascend"}
    v = verdict(hb_pod({"ai.compute/vram": "200Gi"}, annotations=ann), capacity=MIXED)
    assert not v.allowed
    assert v.denials[0] == (
        "spec.containers[0] (container 'main'): ai.compute/vram 200Gi is larger than the largest ascend "
        "interconnect island in the cluster (128Gi: island hccs-0 on node npu, 2 devices); no node can ever run "
        "it with metadata.annotations[hcs.io/vendor]='ascend'. Ask for less VRAM per container, split the work "
        "across pods, or allow nvidia in metadata.annotations[hcs.io/vendor]: its largest island holds 320Gi "
        "(island nvl-a on node big, 4 devices)")
    assert verdict(hb_pod({"ai.compute/vram": "128Gi"}, annotations=ann), capacity=MIXED).allowed
    # too big for every vendor: no point suggesting another one
    v = verdict(hb_pod({"ai.compute/vram": "400Gi"}, annotations=ann), capacity=MIXED)
    assert "largest ascend interconnect island" in v.denials[0] and "allow nvidia" not in v.denials[0]
    assert v.denials[0].endswith("Ask for less VRAM per container or split the work across pods")


def test_vendor_exclusion_is_checked_against_the_others() -> None:
    v = verdict(hb_pod({"ai.compute/vram": "200Gi"}, annotations={"hcs.io/vendor": "!nvidia"}), capacity=MIXED)
    assert not v.allowed
    assert "larger than the largest ascend, hygon or cambricon interconnect island in the cluster (128Gi: " \
           "island hccs-0 on node npu, 2 devices)" in v.denials[0]
    assert "allow nvidia" in v.denials[0]
    # excluding a vendor that is not the largest one changes nothing
    assert verdict(hb_pod({"ai.compute/vram": "300Gi"}, annotations={"hcs.io/vendor": "!ascend"}),
                   capacity=MIXED).allowed
    # naming every vendor is no restriction
    v = verdict(hb_pod({"ai.compute/vram": "321Gi"}, annotations={"hcs.io/vendor": "nvidia,ascend,hygon,cambricon"}),
                capacity=MIXED)
    assert "the largest interconnect island in the cluster (320Gi" in v.denials[0]


def test_vendor_pin_without_a_healthy_device_is_admitted_with_a_warning() -> None:
    v = verdict(hb_pod({"ai.compute/vram": "16Gi"}, annotations={"hcs.io/vendor": "hygon,cambricon"}), capacity=MIXED)
    assert v.allowed
    assert v.warnings == ("metadata.annotations[hcs.io/vendor]: no healthy hygon or cambricon accelerator is "
                          "registered in the cluster yet: VRAM was not checked; the pod stays Pending until one is",)


def test_a_configured_size_ignores_the_vendor_pin() -> None:
    ann = {"hcs.io/vendor": "ascend"}
    assert verdict(hb_pod({"ai.compute/vram": "640Gi"}, annotations=ann), capacity=StaticCapacity(640 * GI)).allowed
    v = verdict(hb_pod({"ai.compute/vram": "641Gi"}, annotations=ann), capacity=StaticCapacity(640 * GI))
    assert "larger than the largest interconnect island in the cluster (640Gi); no node can ever run it. " \
           "Ask for less VRAM" in v.denials[0]


def test_allocator_down_fails_open_with_warning_by_default() -> None:
    v = verdict(hb_pod({"ai.compute/vram": "16Gi"}), capacity=Down())
    assert v.allowed
    assert any("allocator unreachable" in w for w in v.warnings)


def test_allocator_down_fails_closed_when_configured() -> None:
    cfg = WebhookConfig(allocator_failure=FailurePolicy.CLOSED)
    v = verdict(hb_pod({"ai.compute/vram": "16Gi"}), cfg=cfg, capacity=Down())
    assert not v.allowed
    assert "retry when the HCS allocator is reachable" in v.denials[0]


def test_no_inventory_configured_warns() -> None:
    v = verdict(hb_pod({"ai.compute/vram": "16Gi"}), capacity=None)
    assert v.allowed and v.warnings
    v = verdict(hb_pod({"ai.compute/vram": "16Gi"}), capacity=StaticCapacity(None))
    assert v.allowed and "no accelerators are registered" in v.warnings[0]


@pytest.mark.parametrize(
    ("annotations", "needle"),
    [
        ({"hcs.io/vendor": "nvidia,amd"}, "unknown vendor 'amd'"),
        ({"hcs.io/model": "a100,b300x"}, "unknown model 'b300x'"),
        ({"hcs.io/vendor": "nvidia,!nvidia"}, "both included and excluded"),
        ({"hcs.io/vendor": " , "}, "empty vendor list"),
        ({"hcs.io/topology-preference": "fast"}, "not one of high-bandwidth"),
        ({"hcs.io/scheduling-policy": "random"}, "not one of binpack, spread"),
        ({"hcs.io/compute-policy": "soft"}, "not one of hard, burst"),
    ],
)
def test_bad_annotations_are_denied(annotations: dict[str, str], needle: str) -> None:
    v = verdict(pod({"ai.compute/vram": "16Gi"}, annotations=annotations))
    assert not v.allowed
    assert needle in " ".join(v.denials)
    assert "metadata.annotations[" in " ".join(v.denials)


def test_good_annotations_pass() -> None:
    ann = {"hcs.io/vendor": "nvidia,ascend,!hygon", "hcs.io/model": "a100,910b2,!h100",
           "hcs.io/topology-preference": "high-bandwidth", "hcs.io/scheduling-policy": "spread",
           "hcs.io/compute-policy": "burst"}
    ann["hcs.io/vendor"] = "nvidia, ascend"
    assert verdict(pod({"ai.compute/vram": "16Gi"}, annotations=ann)).allowed


def test_privileged_with_quota_is_denied_unless_configured() -> None:
    obj = pod({"ai.compute/vram": "16Gi"}, privileged=True)
    v = verdict(obj)
    assert not v.allowed and "bypass the in-container quota" in v.denials[0]
    assert "denyPrivilegedWithQuota" in v.denials[0]
    v = verdict(obj, cfg=WebhookConfig(deny_privileged_with_quota=False))
    assert v.allowed and "bypass" in v.warnings[0]


def test_sys_admin_counts_as_privileged() -> None:
    obj = pod({"ai.compute/vram": "16Gi"})
    obj["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
    assert not verdict(obj).allowed


def _deployment(spec_pod: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"metadata": spec_pod["metadata"], "spec": spec_pod["spec"]}}}


def test_workload_templates_are_validated_with_their_path() -> None:
    v = verdict(_deployment(pod({"ai.compute/vram": "0"})), kind="Deployment")
    assert not v.allowed
    cron = {"spec": {"jobTemplate": {"spec": {"template": pod({"ai.compute/vram": "16Gi"},
                                                               annotations={"hcs.io/vendor": "amd"})}}}}
    v = verdict(cron, kind="CronJob")
    assert not v.allowed and "spec.jobTemplate.spec.template.metadata.annotations[hcs.io/vendor]" in v.denials[0]


def test_unknown_kind_is_not_ours() -> None:
    assert pod_template({"spec": {}}, "Widget") is None


def test_malformed_shapes_do_not_raise() -> None:
    for obj in ({"spec": []}, {"spec": {"containers": "x"}}, {"spec": {"containers": [None, 3, "a"]}},
                {"metadata": [], "spec": {"containers": [{"resources": {"requests": []}}]}}):
        assert verdict(obj).allowed
    obj = {"spec": {"containers": [{"name": 5, "resources": {"requests": {"ai.compute/vram": {"x": 1}}}}]}}
    v = verdict(obj)
    assert not v.allowed and "not a valid quantity" in v.denials[0]


def test_depth_and_selector_helpers() -> None:
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    assert depth_exceeds(deep, 100) and not depth_exceeds(deep, 300)
    assert split_selector("NVIDIA, !Ascend,,") == (("nvidia",), ("ascend",))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"webhook.mode: 'gpu' is not one of device-plugin, dra"):
        webhook_config({"mode": "gpu"})
    with pytest.raises(ConfigError, match=r"webhook.listen"):
        webhook_config({"listen": "nowhere"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) bogus"):
        webhook_config({"bogus": 1})
    with pytest.raises(ConfigError, match=r"webhook.dra.deviceCounts"):
        webhook_config({"dra": {"deviceCounts": [0]}})
    with pytest.raises(ConfigError, match=r"webhook.imageMap"):
        webhook_config({"imageMap": "nonamespace"})
    cfg = webhook_config({"listen": "127.0.0.1:8443", "mode": "dra", "allocatorFailurePolicy": "closed",
                          "dra": {"deviceCounts": [1, 2], "minSplit": "8Gi"}})
    assert (cfg.host, cfg.port, cfg.mode, cfg.allocator_failure) == ("127.0.0.1", 8443, Mode.DRA,
                                                                     FailurePolicy.CLOSED)
    assert cfg.dra.device_counts == (1, 2) and cfg.dra.min_split_bytes == 8 * GI
