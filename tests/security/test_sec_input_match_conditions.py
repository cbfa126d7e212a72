"""Attack 3, cluster-wide part (issue 16): with ``failurePolicy: Fail`` and a templates webhook without
``matchConditions``, every Deployment, Job and ReplicaSet in the cluster waited on the webhook (and
stalled with it). Now the real API server evaluates the CEL match condition and sends only workloads
whose pod template asks for ``ai.compute/*``."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hcs.webhook.capacity import StaticCapacity
from hcs.webhook.certs import generate_certs
from hcs.webhook.config import WebhookConfig
from hcs.webhook.kube import ClusterView
from hcs.webhook.manifests import webhook_configurations
from hcs.webhook.review import Admission
from hcs.webhook.server import WebhookServer

pytestmark = pytest.mark.cluster
RUN = uuid.uuid4().hex[:6]
LABEL = "hcs-sec-input-mc"


def _mutations(server: WebhookServer, kind: str) -> float:
    total = 0.0
    for metric in server.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("endpoint") == "mutate" \
                    and sample.labels.get("kind") == kind:
                total += sample.value
    return total


@pytest.fixture()
def registered(api_client: Any, tmp_path: Path) -> Iterator[tuple[WebhookServer, str]]:
    from kubernetes import client

    core, admreg = client.CoreV1Api(api_client), client.AdmissionregistrationV1Api(api_client)
    ns = f"hcs-sec-mc-{RUN}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {LABEL: RUN}}})
    certs = generate_certs(tmp_path / "tls")
    cfg = WebhookConfig()
    server = WebhookServer("127.0.0.1", 0, str(certs.cert), str(certs.key),
                           Admission(cfg, StaticCapacity(80 * 2**30), ClusterView(cfg, None)))
    server.start()
    mutating, validating = webhook_configurations(
        url=f"https://127.0.0.1:{server.port}", ca_bundle=base64.b64encode(certs.ca.read_bytes()).decode(),
        name_suffix=f"-sec-mc-{RUN}", namespace_selector={"matchLabels": {LABEL: RUN}})
    admreg.create_mutating_webhook_configuration(mutating)
    admreg.create_validating_webhook_configuration(validating)
    try:
        deadline = time.monotonic() + 60
        while _mutations(server, "Deployment") == 0:  # the API server picks up configurations asynchronously
            assert time.monotonic() < deadline, "the API server never called the webhook"
            client.AppsV1Api(api_client).create_namespaced_deployment(ns, _deployment("probe", True), dry_run="All")
            time.sleep(0.5)
        yield server, ns
    finally:
        admreg.delete_mutating_webhook_configuration(mutating["metadata"]["name"])
        admreg.delete_validating_webhook_configuration(validating["metadata"]["name"])
        server.stop()
        core.delete_namespace(ns)


def _template(asks: bool) -> dict[str, Any]:
    resources = {"requests": {"ai.compute/vram": "16Gi"}, "limits": {"ai.compute/vram": "16Gi"}} if asks else {
        "requests": {"cpu": "10m"}}
    return {"metadata": {"labels": {"app": "x"}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "busybox", "resources": resources}]}}


def _deployment(name: str, asks: bool) -> dict[str, Any]:
    t = _template(asks)
    t["spec"]["restartPolicy"] = "Always"
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": t}}


def test_templates_webhook_sees_only_workloads_asking_for_ai_compute(
        api_client: Any, registered: tuple[WebhookServer, str]) -> None:
    from kubernetes import client

    server, ns = registered
    apps, batch = client.AppsV1Api(api_client), client.BatchV1Api(api_client)
    before = {k: _mutations(server, k) for k in ("Deployment", "Job", "CronJob")}
    for i in range(3):  # ordinary workloads: never sent to the mutating webhook
        apps.create_namespaced_deployment(ns, _deployment(f"plain-{i}", False), dry_run="All")
        batch.create_namespaced_job(ns, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"plain-{i}"},
                                         "spec": {"template": _template(False)}}, dry_run="All")
        batch.create_namespaced_cron_job(ns, {
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": f"plain-{i}"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": _template(False)}}}},
            dry_run="All")
    assert {k: _mutations(server, k) for k in before} == before
    # workloads asking for ai.compute still are (legitimate use)
    apps.create_namespaced_deployment(ns, _deployment("gpu", True), dry_run="All")
    out = batch.create_namespaced_cron_job(ns, {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "gpu"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": _template(True)}}}},
        dry_run="All", _preload_content=False)
    assert json.loads(out.data)["metadata"]["name"] == "gpu"
    assert _mutations(server, "Deployment") > before["Deployment"]
    assert _mutations(server, "CronJob") > before["CronJob"]
