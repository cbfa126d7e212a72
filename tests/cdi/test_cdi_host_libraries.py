"""Issue 22: CDI without a vendor container runtime, through the local cluster's real kubelet and containerd.

The simulated runtime libraries are installed at the vendors' real paths on this host (host_libs.py:
libcuda.so.<version> + ``ldconfig`` for NVIDIA, /usr/local/Ascend/driver/lib64, /opt/rocm/lib,
/usr/local/neuware/lib64) with the devices' nodes. The DRA plugin (registered with the real kubelet)
finds them as ``nvidia-ctk cdi generate`` would and writes them into the claim's CDI spec; containerd
parses the spec and applies it. Each pod, one per vendor, runs a small program that ``dlopen()``s the
vendor library by soname and counts devices. Its spec has nothing vendor-specific: no env, no vendor
volume. The pods' busybox image has no C library, so the host's glibc (loader + libc.so.6 only, not the
library directory) and the probe are hostPath-mounted; the vendor library can only come from CDI.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import host_libs  # noqa: E402

from hcs.devices.inventory import discover  # noqa: E402
from hcs.devices.model import Device, Vendor  # noqa: E402
from hcs.kube import RESOURCE_API, KubeError, KubeRest  # noqa: E402
from hcs.node.dra.config import DraConfig  # noqa: E402
from hcs.node.dra.plugin import DraPlugin  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
#: its own driver name: other suites on the shared cluster run ai.compute plugins for the same node
DRIVER = "cdi-test.ai.compute"
PROFILES = ("a100-80g-nvlink-8", "ascend-910b-hccs-8", "hygon-k100ai-xgmi-8", "mlu370-x8-mlulink-8")
#: vendor -> (soname the application opens, init symbol or "-", device-count symbol)
PROBE = {
    "nvidia": ("libcuda.so.1", "cuInit", "cuDeviceGetCount"),
    "ascend": ("libascendcl.so", "aclInit", "aclrtGetDeviceCount"),
    "hygon": ("libamdhip64.so", "-", "hipGetDeviceCount"),
    "cambricon": ("libcnrt.so", "-", "cnrtGetDeviceCount"),
}
#: where each library must appear in the container (the soname path the host's cache / vendor dir names)
EXPECTED_LIB = {
    "nvidia": f"{host_libs.LIBDIR}/libcuda.so.1",  # or its /lib twin on merged-/usr hosts (as the cache says)
    "ascend": "/usr/local/Ascend/driver/lib64/libascendcl.so",
    "hygon": "/opt/rocm/lib/libamdhip64.so",
    "cambricon": "/usr/local/neuware/lib64/libcnrt.so",
}


def _wait(pred: Any, timeout_s: float, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


def four_vendor_profile(path: Path) -> Path:
    """One device of each vendor (from the shipped profiles), for the simulated libraries."""
    devices = []
    for name in PROFILES:
        dev = dict(json.loads((REPO / "driver" / "profiles" / f"{name}.json").read_text())["devices"][0])
        dev["links"] = []
        devices.append(dev)
    path.write_text(json.dumps({"name": "cdi-four-vendors", "description": "tests/cdi", "driver_version":
                                host_libs.NVIDIA_DRIVER_VERSION, "devices": devices}))
    path.chmod(0o644)
    return path


def sim_devices(profile: Path) -> list[Device]:
    old = os.environ.get("HCS_SIM_PROFILE")
    os.environ["HCS_SIM_PROFILE"] = str(profile)
    try:
        return list(discover().devices)
    finally:
        if old is None:
            del os.environ["HCS_SIM_PROFILE"]
        else:
            os.environ["HCS_SIM_PROFILE"] = old


def build_probe(out: Path) -> Path:
    exe = out / "cdi_probe"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe),
                    str(Path(__file__).parent / "cdi_probe.c"), "-ldl"], check=True, timeout=120)
    exe.chmod(0o755)
    return exe


def probe_pod(name: str, vendor: str, probe: Path, image: str, node: str) -> dict[str, Any]:
    soname, init, count = PROBE[vendor]
    loader = "/lib64/ld-linux-x86-64.so.2"
    libc = f"/lib/{host_libs.LIBDIR.rsplit('/', 1)[1]}/libc.so.6"
    host = [("loader", os.path.realpath(loader), loader), ("libc", os.path.realpath(libc), libc),
            ("probe", str(probe), "/hcs-probe/cdi_probe")]
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "nodeSelector": {"kubernetes.io/hostname": node},
            "resourceClaims": [{"name": "acc", "resourceClaimName": name}],
            "volumes": [{"name": n, "hostPath": {"path": p, "type": "File"}} for n, p, _ in host],
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", f"env; ls /dev; /hcs-probe/cdi_probe {soname} {init} {count}"],
                "volumeMounts": [{"name": n, "mountPath": c, "readOnly": True} for n, _, c in host],
                "resources": {"claims": [{"name": "acc"}]},
            }],
        },
    }


def claim(name: str, vendor: str) -> dict[str, Any]:
    expr = f'device.attributes["{DRIVER}"].vendor == "{vendor}"'
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name},
            "spec": {"devices": {"requests": [{"name": "acc", "exactly": {
                "deviceClassName": DRIVER, "selectors": [{"cel": {"expression": expr}}],
                "capacity": {"requests": {"memory": "1Gi"}}}}]}}}


@pytest.fixture
def host_setup(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("installing libraries at the vendors' paths and the real kubelet's directories need root")
    if not (host_libs.SIM_LIB / "libcuda.so.1").exists():
        pytest.skip("the simulated libraries are not built (make dev)")
    tmp_path.chmod(0o755)
    profile = four_vendor_profile(tmp_path / "profile.json")
    devices = sim_devices(profile)
    assert {d.vendor.value for d in devices} == set(PROBE), devices
    nodes = [n for d in devices for n in d.device_nodes] + ["/dev/nvidiactl", "/dev/nvidia-uvm",
                                                            "/dev/nvidia-uvm-tools", "/dev/cambricon_ctl"]
    with host_libs.installed(PROBE, nodes):
        yield profile, devices, build_probe(tmp_path)


def test_pods_load_vendor_libraries_from_the_host_through_cdi(kube_cluster: Any, api_client: Any,
                                                              host_setup: Any) -> None:
    profile, devices, probe = host_setup
    rest = KubeRest(api_client)
    cfg = DraConfig(
        node_name=kube_cluster.node_name, driver_name=DRIVER,
        plugins_registry=str(kube_cluster.kubelet_dir / "plugins_registry"),
        plugin_dir=str(kube_cluster.kubelet_dir / "plugins" / DRIVER),
        cdi_dir="/var/run/cdi", interceptor_host_dir="", device_isolation=False, sim_profile=str(profile),
    )
    plugin = DraPlugin(cfg, devices, api_client)
    plugin.start()
    ns = f"hcs-cdi-libs-{os.getpid()}"
    try:
        found = plugin.state.options.driver_libraries
        expected = dict(EXPECTED_LIB)
        if found[Vendor.NVIDIA] and found[Vendor.NVIDIA][0].container_path == expected["nvidia"].removeprefix("/usr"):
            expected["nvidia"] = expected["nvidia"].removeprefix("/usr")
        assert {v.value: [m.container_path for m in found[v]] for v in Vendor} == {
            v: [expected[v]] for v in PROBE}, found
        # the NVIDIA entry came from the linker cache: the soname link resolves to the versioned file
        assert found[Vendor.NVIDIA][0].host_path.endswith(f"libcuda.so.{host_libs.NVIDIA_DRIVER_VERSION}")
        assert plugin.registered.wait(30), f"the kubelet did not register the plugin: {plugin.registration_error}"
        assert plugin.slices is not None and plugin.slices.wait_synced(30), plugin.slices.last_error
        with contextlib.suppress(KubeError):
            rest.request("POST", f"{RESOURCE_API}/deviceclasses", body={
                "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": DRIVER},
                "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]}})
        rest.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": ns}})
        for vendor in PROBE:
            rest.request("POST", f"{RESOURCE_API}/namespaces/{ns}/resourceclaims", body=claim(vendor, vendor))
            pod = probe_pod(vendor, vendor, probe, kube_cluster.busybox_image, kube_cluster.node_name)
            assert "env" not in pod["spec"]["containers"][0]
            rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)

        def done() -> dict[str, str] | None:
            phases = {v: rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{v}").get("status", {}).get("phase")
                      for v in PROBE}
            return phases if all(p in ("Succeeded", "Failed") for p in phases.values()) else None

        phases = _wait(done, 180)
        events = rest.request("GET", f"/api/v1/namespaces/{ns}/events").get("items") or []
        assert phases, [e.get("message") for e in events][-10:]
        for vendor in PROBE:
            log = rest._send("GET", f"/api/v1/namespaces/{ns}/pods/{vendor}/log").read().decode()
            assert phases[vendor] == "Succeeded", (vendor, log, [e.get("message") for e in events][-10:])
            values = dict(line.split("=", 1) for line in log.splitlines() if "=" in line)
            assert values["LIB"] == expected[vendor], (vendor, log)  # opened by soname, from the CDI mount
            assert values["COUNT"] == "0:1", (vendor, log)  # the simulated runtime sees its one device
            assert values.get("INIT", "0") == "0", (vendor, log)
            assert values["HCS_SIM_PROFILE"] == "/etc/hcs/sim-profile.json"
            own = [n for d in devices if d.vendor.value == vendor for n in d.device_nodes]
            listed = set(log.split())
            assert {n.rsplit("/", 1)[1] for n in own if n.count("/") == 2} <= listed, (vendor, log)
            if vendor == "nvidia":
                assert values["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{ns}", query={"gracePeriodSeconds": "0"})
        # the kubelet unprepares the claims through the plugin: keep it running until the specs are gone
        _wait(lambda: not list(Path(cfg.cdi_dir).glob(f"{DRIVER}-device_*.json")), 60)
        plugin.stop()
        if plugin.slices is not None:
            plugin.slices.delete_all()
        _wait(lambda: _gone(rest, ns), 60)


def _gone(rest: KubeRest, ns: str) -> bool:
    try:
        rest.request("GET", f"/api/v1/namespaces/{ns}")
    except KubeError as exc:
        return exc.status == 404
    return False


def test_device_plugin_pod_loads_the_vendor_library_from_the_host(kube_cluster: Any, api_client: Any,
                                                                  host_setup: Any) -> None:
    """The same discovery on the device-plugin path: the agent's Allocate answers the library mounts and
    LD_LIBRARY_PATH, the real kubelet hands them to containerd. The pod asks only for HCS resources."""
    import shutil
    import tempfile
    import uuid

    from hcs.node.agent import NodeAgent
    from hcs.node.config import node_config

    profile, devices, probe = host_setup
    rest = KubeRest(api_client)
    resource = "cdi-test.hcs.io/slot"
    root = Path(tempfile.mkdtemp(prefix="hcsc", dir="/tmp"))
    cfg = node_config({
        "nodeName": kube_cluster.node_name,
        "devicePluginDir": str(Path(kube_cluster.kubelet_dir) / "device-plugins"),
        "podResourcesSocket": str(Path(kube_cluster.kubelet_dir) / "pod-resources" / "kubelet.sock"),
        "resourceName": resource, "socketName": f"hcs-cdilib-{uuid.uuid4().hex[:6]}.sock",
        "stateDir": str(root / "state"), "quotaDir": str(root / "quota"), "shmDir": str(root / "shm"),
        "cdiDir": str(root / "cdi"), "interceptorDir": "", "slotsPerDevice": 2, "metricsPort": 0,
        "reportInterval": 3600, "deviceIsolation": False, "simProfile": str(profile),
    })
    gpu = [d for d in devices if d.vendor is Vendor.NVIDIA]
    agent = NodeAgent(cfg, gpu, kube=rest).start()
    node, ns, name = kube_cluster.node_name, "default", f"hcs-cdilib-{uuid.uuid4().hex[:6]}"
    try:
        assert [m.container_path for m in agent.core.driver_libraries[Vendor.NVIDIA]] in (
            [EXPECTED_LIB["nvidia"]], [EXPECTED_LIB["nvidia"].removeprefix("/usr")])
        _wait(lambda: rest.request("GET", f"/api/v1/nodes/{node}")["status"].get("allocatable", {}).get(resource)
              == "2", 60)
        pod = probe_pod(name, "nvidia", probe, kube_cluster.busybox_image, node)
        del pod["spec"]["resourceClaims"]
        limits = {"ai.compute/vram": "1Gi", resource: "1"}
        pod["spec"]["nodeName"] = node
        pod["spec"]["containers"][0]["resources"] = {"requests": limits, "limits": limits}
        rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)

        def finished() -> Any:
            p = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
            return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

        p = _wait(finished, 120)
        assert p, rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")["status"]
        log = rest._send("GET", f"/api/v1/namespaces/{ns}/pods/{name}/log").read().decode()
        assert p["status"]["phase"] == "Succeeded", log
        values = dict(line.split("=", 1) for line in log.splitlines() if "=" in line)
        assert values["LIB"].endswith("/x86_64-linux-gnu/libcuda.so.1"), log
        assert values["COUNT"] == "0:1" and values["INIT"] == "0", log
        assert values["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID", log
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", query={"gracePeriodSeconds": "0"})
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)
