"""Shared helpers for the DRA tests: devices built directly on the model, claim objects, and a
plugin environment (real sockets, the DRA-kubelet simulator, claims from memory)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from hcs.api.gen.drahealth.v1alpha1 import api_pb2 as hv1alpha1
from hcs.devices.model import Compute, Device, Vendor

GiB = 1 << 30
REPO = Path(__file__).resolve().parents[2]

_NODES = {
    Vendor.NVIDIA: lambda i: (f"/dev/nvidia{i}",),
    Vendor.ASCEND: lambda i: (f"/dev/davinci{i}",),
    Vendor.HYGON: lambda i: (f"/dev/dri/card{i}", f"/dev/dri/renderD{128 + i}"),
    Vendor.CAMBRICON: lambda i: (f"/dev/cambricon_dev{i}",),
}


def make_device(vendor: Vendor = Vendor.NVIDIA, index: int = 0, *, vram_gib: int = 80, model: str = "a100-80g",
                rate: float = 1.0, island: str = "") -> Device:
    return Device(
        vendor=vendor, model=model, name=f"{vendor.value} {model}", uuid=f"GPU-{vendor.value}-{index:04d}-uuid",
        index=index, pci_bus_id=f"0000:{0x10 + index:02x}:00.0", numa_node=index // 4,
        vram_total_bytes=vram_gib * GiB, vram_used_bytes=0,
        compute=Compute(fp16_tflops=312.0 * rate, fp32_tflops=19.5, int8_tops=624.0, rate=rate),
        device_nodes=_NODES[vendor](index), island=island,
    )


def make_devices(n: int, vendor: Vendor = Vendor.NVIDIA, **kw: Any) -> list[Device]:
    return [make_device(vendor, i, **kw) for i in range(n)]


def claim_object(namespace: str, name: str, uid: str, node: str, results: list[dict[str, Any]],
                 driver: str = "ai.compute") -> dict[str, Any]:
    """A ResourceClaim as the API returns it after allocation."""
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "spec": {"devices": {"requests": [{"name": r["request"].split("/")[0]} for r in results]}},
        "status": {"allocation": {"devices": {"results": [
            {"driver": driver, "pool": node, **r} for r in results
        ]}}},
    }


def new_uid() -> str:
    return str(uuidlib.uuid4())


class MemoryClaims:
    """An in-memory stand-in for the claim store, for tests that exercise files and sockets only
    (tests of the API path use the real API server)."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.down = False

    def add(self, obj: dict[str, Any]) -> None:
        self.claims[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        from hcs.kube import KubeError

        if self.down:
            raise KubeError(0, "GET claim: API server unreachable: connection refused")
        try:
            return self.claims[(namespace, name)]
        except KeyError:
            raise KubeError(404, f"resourceclaims {name} not found") from None


def count_claim_reads(source: Any) -> list[str]:
    """Record the name of every claim ``source.get_claim`` is asked for (it still answers); returns
    the record, which grows as the code under test reads."""
    reads: list[str] = []
    orig = source.get_claim

    def counted(namespace: str, name: str) -> Any:
        reads.append(name)
        return orig(namespace, name)

    source.get_claim = counted
    return reads


class PluginEnv:
    """A DraPlugin under ``tmp`` on 4 simulated NVIDIA devices, registered with the DRA-kubelet
    simulator; claims come from a :class:`MemoryClaims`. ``config`` overrides DraConfig fields."""

    node = "node-a"

    def __init__(self, tmp: Path, **config: Any) -> None:
        from hcs.kubeletsim.dra import DraKubeletSim
        from hcs.node.dra.config import DraConfig

        self.tmp = tmp
        (tmp / "lib").mkdir()
        self.cfg = DraConfig(node_name=self.node, plugins_registry=str(tmp / "registry"),
                             plugin_dir=str(tmp / "plugin"), cdi_dir=str(tmp / "cdi"),
                             interceptor_host_dir=str(tmp / "lib"), **config)
        self.claims = MemoryClaims()
        self.devices = make_devices(4)
        self.plugin: Any = None
        self.sim = DraKubeletSim(tmp / "registry")

    def start(self, **kw: Any) -> Any:
        from hcs.node.dra.plugin import DraPlugin

        self.plugin = DraPlugin(self.cfg, self.devices, None, claim_source=self.claims, **kw)
        self.plugin.start()
        self.sim.register()
        return self.plugin

    def stop(self) -> None:
        if self.plugin is not None:
            self.plugin.stop()
            self.plugin = None

    def close(self) -> None:
        self.stop()
        self.sim.close()

    def add_claim(self, results: list[dict[str, Any]], name: str | None = None,
                  annotations: dict[str, str] | None = None) -> tuple[str, str, str]:
        """An allocated claim from this node's pool; returns (namespace, uid, name)."""
        uid = new_uid()
        name = name or f"c-{uid[:8]}"
        obj = claim_object("ns", name, uid, self.node, results)
        if annotations:
            obj["metadata"]["annotations"] = annotations
        self.claims.add(obj)
        return ("ns", uid, name)

    def cdi_files(self) -> list[Path]:
        d = self.tmp / "cdi"
        return sorted(d.glob("*.json")) if d.exists() else []


def pod_with_claim(name: str, node: str, *, template: str = "", claim: str = "",
                   image: str = "hcs.local/busybox:1.35") -> dict[str, Any]:
    """A pod that references one claim (by template or by name), pinned by label to ``node``."""
    source = {"resourceClaimTemplateName": template} if template else {"resourceClaimName": claim}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"operator": "Exists"}],
            "resourceClaims": [{"name": "acc", **source}],
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"], "resources": {"claims": [{"name": "acc"}]}}],
            "terminationGracePeriodSeconds": 0,
        },
    }


class HealthCollector:
    """Consumes a health stream in a thread; ``latest`` holds the last full list."""

    def __init__(self, stream: Iterator[hv1alpha1.NodeWatchResourcesResponse]) -> None:
        self.latest: dict[str, int] = {}
        self.messages = 0
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._t.start()

    def _run(self, stream: Iterator[hv1alpha1.NodeWatchResourcesResponse]) -> None:
        try:
            for msg in stream:
                with self._cond:
                    self.latest = {d.device.device_name: d.health for d in msg.devices}
                    self.messages += 1
                    self._cond.notify_all()
        except grpc.RpcError:
            pass

    def wait_for(self, device: str, health: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.latest.get(device) != health:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


# ------------------------------------------------------------- the local cluster's real kubelet


@contextlib.contextmanager
def real_kubelet_plugin(kube_cluster: Any, api_client: Any, driver: str,
                        **config: Any) -> Iterator[tuple[Any, Any, list[Device]]]:
    """A DraPlugin named ``driver`` on the local cluster's real kubelet (2 simulated 80 GiB NVIDIA
    devices; ``config`` adds DraConfig fields): yields (plugin, cfg, devices), then stops it and deletes
    its ResourceSlices. Skips the test when not root (the kubelet's directories need it)."""
    import pytest

    from hcs.node.dra.config import DraConfig
    from hcs.node.dra.plugin import DraPlugin

    if os.geteuid() != 0:
        pytest.skip("the real kubelet's directories need root")
    lib = REPO / "interceptor" / "build"
    cfg = DraConfig(
        node_name=kube_cluster.node_name,
        driver_name=driver,
        plugins_registry=str(kube_cluster.kubelet_dir / "plugins_registry"),
        plugin_dir=str(kube_cluster.kubelet_dir / "plugins" / driver),
        cdi_dir="/var/run/cdi",
        interceptor_host_dir=str(lib) if (lib / "libhcs_interceptor.so").exists() else "",
        device_isolation=False,
        **config,
    )
    devices = [make_device(Vendor.NVIDIA, i, vram_gib=80) for i in range(2)]
    plugin = DraPlugin(cfg, devices, api_client)
    plugin.start()
    yield plugin, cfg, devices
    plugin.stop()
    if plugin.slices is not None:
        plugin.slices.delete_all()


def registered_with_a_device_class(plugin: Any, rest: Any, device_class: str, driver: str) -> None:
    """Wait until the real kubelet registered ``plugin`` and its ResourceSlices are synced, and make sure
    the DeviceClass ``device_class`` (selecting ``driver``'s devices) exists."""
    from hcs.kube import RESOURCE_API, KubeError

    assert plugin.registered.wait(30), f"the kubelet did not register the plugin: {plugin.registration_error}"
    assert plugin.slices is not None and plugin.slices.wait_synced(30), plugin.slices.last_error
    try:
        rest.request("POST", f"{RESOURCE_API}/deviceclasses", body={
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": device_class},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]}})
    except KubeError as exc:
        assert exc.status == 409, exc


def create_claim_template(rest: Any, ns: str, name: str, device_class: str, capacity: dict[str, str]) -> None:
    """A ResourceClaimTemplate ``name`` in ``ns``: one device of ``device_class`` with ``capacity``."""
    from hcs.kube import RESOURCE_API

    rest.request("POST", f"{RESOURCE_API}/namespaces/{ns}/resourceclaimtemplates", body={
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": name},
        "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": device_class, "capacity": {"requests": capacity}}}]}}},
    })


def run_to_completion(rest: Any, ns: str, pod: dict[str, Any], timeout_s: float = 120) -> dict[str, str]:
    """Create ``pod`` in ``ns``, wait for it to succeed (the namespace's last events in the failure) and
    return the ``KEY=value`` lines of its log."""
    from hcs.testing.kube_objects import wait_for

    name = pod["metadata"]["name"]
    rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)

    def phase() -> str | None:
        p = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        ph = p.get("status", {}).get("phase")
        return ph if ph in ("Succeeded", "Failed") else None

    final = wait_for(phase, timeout_s, interval_s=0.5)
    events = rest.request("GET", f"/api/v1/namespaces/{ns}/events").get("items") or []
    assert final == "Succeeded", [e.get("message") for e in events][-8:]
    log = rest._send("GET", f"/api/v1/namespaces/{ns}/pods/{name}/log").read().decode()
    return dict(line.split("=", 1) for line in log.splitlines() if "=" in line)
