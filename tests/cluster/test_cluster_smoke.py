"""Smoke tests against the real local cluster (kube-apiserver, scheduler, kubelet, containerd, runc)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from hcs.testing.cluster import SCRIPTS_DIR, Cluster, busybox_pod, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture()
def namespace(api_client: Any) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"hcs-smoke-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def test_status_script_reports_up(kube_cluster: Cluster) -> None:
    result = subprocess.run([str(SCRIPTS_DIR / "status")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "status: up" in result.stdout


def test_up_is_idempotent_when_already_up(kube_cluster: Cluster) -> None:
    result = subprocess.run([sys.executable, str(SCRIPTS_DIR / "hcs_cluster.py"), "up"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "already up" in result.stderr


def test_namespace_and_configmap_round_trip(api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    assert core.read_namespace(namespace).metadata.name == namespace
    core.create_namespaced_config_map(namespace, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "smoke"}, "data": {"vram": "16Gi"}})
    got = core.read_namespaced_config_map("smoke", namespace)
    assert got.data == {"vram": "16Gi"}


def test_resourceslice_and_deviceclass_round_trip(api_client: Any, kube_cluster: Cluster) -> None:
    resource = client.ResourceV1Api(api_client)
    suffix = uuid.uuid4().hex[:8]
    driver = f"smoke-{suffix}.hcs.io"
    slice_name = f"smoke-{suffix}"
    class_name = f"smoke-{suffix}.ai.compute"
    resource.create_resource_slice({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": slice_name},
        "spec": {
            "driver": driver, "nodeName": kube_cluster.node_name,
            "pool": {"name": "smoke", "generation": 1, "resourceSliceCount": 1},
            "devices": [{
                "name": "gpu-0",
                "attributes": {"vendor": {"string": "nvidia"}, "model": {"string": "a100"}},
                # consumable capacity (DRAConsumableCapacity): shared device with a request policy
                "allowMultipleAllocations": True,
                "capacity": {"memory": {"value": "80Gi", "requestPolicy": {
                    "default": "1Gi", "validRange": {"min": "1Gi", "step": "1Gi"}}}},
            }],
        },
    })
    try:
        resource.create_device_class({
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": class_name},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}],
                     "extendedResourceName": f"{driver}/vram"},
        })
        try:
            got_slice = resource.read_resource_slice(slice_name)
            device = got_slice.spec.devices[0]
            assert device.name == "gpu-0"
            assert device.attributes["vendor"].string == "nvidia"
            assert device.capacity["memory"].value == "80Gi"
            # kept only when the DRAConsumableCapacity gate is on in the apiserver
            assert device.allow_multiple_allocations is True
            assert device.capacity["memory"].request_policy.default == "1Gi"
            got_class = resource.read_device_class(class_name)
            assert got_class.spec.selectors[0].cel.expression == f'device.driver == "{driver}"'
            assert got_class.spec.extended_resource_name == f"{driver}/vram"
        finally:
            resource.delete_device_class(class_name)
    finally:
        resource.delete_resource_slice(slice_name)
    with pytest.raises(ApiException) as err:
        resource.read_resource_slice(slice_name)
    assert err.value.status == 404


def test_busybox_pod_runs_to_completion(api_client: Any, kube_cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(api_client)

    def default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(default_sa, timeout=60, what=f"service account {namespace}/default")  # made by the controller
    core.create_namespaced_pod(namespace, busybox_pod(
        "hello", ["sh", "-c", "echo hello from $(hostname) on hcs"], image=kube_cluster.busybox_image,
        namespace=namespace, node_name=kube_cluster.node_name))

    def finished() -> Any:
        pod = core.read_namespaced_pod("hello", namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = wait_for(finished, timeout=180, what=f"pod {namespace}/hello to finish")
    assert pod.status.phase == "Succeeded", pod.status
    assert pod.spec.node_name == kube_cluster.node_name
    log = core.read_namespaced_pod_log("hello", namespace)
    assert log == "hello from hello on hcs\n"
