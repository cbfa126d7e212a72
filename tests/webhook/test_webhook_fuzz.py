"""Hypothesis: whatever the object inside an AdmissionReview looks like, the answer is a proper one."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_helpers import review

from hcs.webhook.capacity import StaticCapacity
from hcs.webhook.config import Mode, WebhookConfig
from hcs.webhook.kube import ClusterView
from hcs.webhook.review import Admission

KEYS = st.sampled_from(["spec", "metadata", "containers", "initContainers", "resources", "requests", "limits",
                        "ai.compute/vram", "ai.compute/tflops-fp16", "ai.compute/slot", "annotations",
                        "hcs.io/vendor", "hcs.io/model", "template", "jobTemplate", "name", "image",
                        "securityContext", "privileged", "schedulingGates", "resourceClaims", "x"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.sampled_from(["16Gi", "0", "-1", "1e3", "nvidia,!amd", "high-bandwidth", "", "1.5"]),
                    st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda children: st.one_of(st.lists(children, max_size=3),
                                                          st.dictionaries(KEYS, children, max_size=4)),
                      max_leaves=30)


def _admission(mode: Mode) -> Admission:
    cfg = WebhookConfig(mode=mode)
    return Admission(cfg, StaticCapacity(80 * 2**30), ClusterView(cfg, None))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=VALUES, kind=st.sampled_from(["Pod", "Deployment", "CronJob", "Widget"]),
       endpoint=st.sampled_from(["mutate", "validate"]), mode=st.sampled_from(list(Mode)))
def test_any_object_gets_a_well_formed_answer(obj: Any, kind: str, endpoint: str, mode: Mode) -> None:
    rev = review(obj, kind=kind, dry_run=True)  # dry run: DRA mode needs no API server
    answer = _admission(mode).handle(endpoint, json.dumps(rev).encode())
    assert answer.status == 200, answer.body
    out = json.loads(answer.body)
    assert out["response"]["uid"] == rev["request"]["uid"]
    if not out["response"]["allowed"]:
        assert out["response"]["status"]["message"]


@settings(max_examples=200, deadline=None)
@given(body=st.one_of(st.binary(max_size=200), VALUES.map(lambda v: json.dumps(v).encode())))
def test_any_body_gets_400_or_an_answer(body: bytes) -> None:
    answer = _admission(Mode.DEVICE_PLUGIN).handle("validate", body)
    assert answer.status in (200, 400)
