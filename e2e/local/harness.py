"""Run the HCS components as host processes against the local real cluster (e2e/cluster).

The configuration is the one the chart renders (``helm template helm/hcs`` with mode ``both`` and
simulated devices), with only host-specific values rewritten: the kubelet directory of the local
cluster, a per-session state directory, loopback addresses and free ports. What runs:

- ``hcs node`` (device plugin ``ai.compute/slot`` + ComputeNode + health) on the one real node, with the
  simulated drivers and the mixed profile ``driver/profiles/mixed-a100-910b.json`` (4x A100-80GB on an
  NVLink island + 4x Ascend 910B3 on an HCCS island): two vendors behind one real kubelet.
- ``python -m hcs.node.dra`` (the chart's ``dra-plugin`` container): DRA kubelet plugin ``ai.compute``
  registered with the real kubelet, ResourceSlices published for the same devices.
- ``hcs webhook`` over TLS; its Mutating/ValidatingWebhookConfigurations point at 127.0.0.1 and select
  only namespaces labelled ``hcs-e2e=<session>``, so other users of the shared cluster are untouched.
- a second kube-scheduler (profile ``hcs-scheduler``), as the chart's allocator Deployment runs it. When
  ``hcs allocator`` exists it runs too and the scheduler uses it as extender (the chart's rendered
  KubeSchedulerConfiguration); otherwise the chart's ``scheduler.enabled=false`` rendering is used (node
  agent ``assignmentSource: local``) and the profile ignores ``ai.compute/vram``/``tflops-fp16`` in
  NodeResourcesFit, which is what ``ignoredByScheduler`` does for the extender.

Usable from pytest (tests/e2e) and by hand::

    .venv/bin/python e2e/local/harness.py up      # starts everything, prints the session dir; Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "helm"))

import helm_chart  # type: ignore[import-not-found]  # noqa: E402  (tests/helm/helm_chart.py: renders the chart with the real helm)

from hcs.kube import KubeError, KubeRest  # noqa: E402
from hcs.testing.cluster import Cluster  # noqa: E402

LOG = logging.getLogger("hcs.e2e")

PROFILE = REPO / "driver" / "profiles" / "mixed-a100-910b.json"
DRIVER_LIB = REPO / "driver" / "build" / "lib"
INTERCEPTOR_LIB = REPO / "interceptor" / "build" / "libhcs_interceptor.so"
HCS_BIN = REPO / ".venv" / "bin" / "hcs"
PYTHON = REPO / ".venv" / "bin" / "python"
SLOT = "ai.compute/slot"
DRA_DRIVER = "ai.compute"
ASCEND_DRIVER_ROOT = Path("/usr/local/Ascend/driver")
CDI_DIR = "/var/run/cdi"
COMPUTENODES = "/apis/hetero.zrs.io/v1alpha1/computenodes"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"


class HarnessError(Exception):
    """A component did not start or become ready; the message names it and quotes its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.3,
             on_timeout: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def allocator_available() -> bool:
    """True when this tree has the ``hcs allocator`` subcommand (issue 7)."""
    out = subprocess.run([str(HCS_BIN), "allocator", "--help"], capture_output=True, text=True, check=False,
                         timeout=60)
    return out.returncode == 0


@dataclass
class Proc:
    """One host process we started (its own process group), logging to ``log``."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        out.write(f"\n==== start {time.strftime('%H:%M:%S')}: {' '.join(self.cmd)}\n".encode())
        out.flush()
        self.popen = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
                                      start_new_session=True)
        out.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, no chance to clean up (crash simulation)."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self, timeout: float = 15) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Harness:
    cluster: Cluster
    rest: KubeRest
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hcs-e2e-", dir="/tmp")))
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    use_allocator: bool = False
    procs: dict[str, Proc] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)
    created_ascend_root: bool = False
    webhook_port: int = 0
    node_metrics_port: int = 0

    # ------------------------------------------------------------------ layout

    @property
    def node(self) -> str:
        return self.cluster.node_name

    @property
    def scheduler_name(self) -> str:
        """The chart's ``hcs-scheduler`` profile, suffixed per session: the shared cluster may run other
        hcs-scheduler instances (benchmarks, other suites) that must not take our pods, nor we theirs."""
        return f"hcs-scheduler-e2e-{self.session}"

    @property
    def namespace(self) -> str:
        return f"hcs-e2e-{self.session}"

    @property
    def profile(self) -> Path:
        return self.root / "sim" / "profile.json"

    @property
    def faults(self) -> Path:
        return self.root / "sim" / "profile.json.faults"

    @property
    def dra_plugin_dir(self) -> Path:
        return self.cluster.kubelet_dir / "plugins" / DRA_DRIVER

    @property
    def checkpoint(self) -> Path:
        return self.dra_plugin_dir / "checkpoint.json"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"HCS_SIM_PROFILE": str(self.profile), "HCS_DRIVER_PATH": str(DRIVER_LIB),
                    "NODE_NAME": self.node, "KUBECONFIG": str(self.cluster.kubeconfig), "PYTHONUNBUFFERED": "1"})
        env.pop("HCS_SIM_FAULTS", None)
        return env

    def tool(self, name: str) -> Path:
        """A cluster binary. The running cluster may use binaries from an older build key than the one
        ``hcs_cluster.py env`` names (a rebuild in progress): fall back to the newest build that has it."""
        try:
            return self.cluster.tool(name)
        except FileNotFoundError:
            found = sorted((p for p in self.cluster.bin_dir.parent.glob(f"*/{name}") if os.access(p, os.X_OK)),
                           key=lambda p: p.stat().st_mtime, reverse=True)
            if not found:
                raise
            return found[0]

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.tool("kubectl")), f"--kubeconfig={self.cluster.kubeconfig}", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text, check=False)
        if check and result.returncode != 0:
            raise HarnessError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    # ------------------------------------------------------------------ configuration (from the chart)

    def render(self) -> None:
        """``helm template`` the chart and write each component's config with host paths rewritten."""
        values: dict[str, Any] = {"mode": "both", "nodeAgent.simulated.enabled": True,
                                  "scheduler.enabled": self.use_allocator, "nodeAgent.logLevel": "debug"}
        docs = helm_chart.render(set_values=values)
        comps = helm_chart.component_configs(docs)
        node_cm = helm_chart.one(docs, "ConfigMap", "hcs-node-agent")
        kubelet = self.cluster.kubelet_dir
        state = self.root / "state"
        interceptor_dir = self.root / "interceptor"  # what the chart's init container installs
        interceptor_dir.mkdir(parents=True, exist_ok=True)
        if INTERCEPTOR_LIB.exists():
            shutil.copy2(INTERCEPTOR_LIB, interceptor_dir / INTERCEPTOR_LIB.name)
        self.node_metrics_port = free_port()

        node_cfg = comps["node"]
        n = node_cfg["node"]
        n.update({"devicePluginDir": str(kubelet / "device-plugins"),
                  "podResourcesSocket": str(kubelet / "pod-resources" / "kubelet.sock"),
                  "stateDir": str(state / "node"), "quotaDir": str(state / "quota"), "shmDir": str(state / "shm"),
                  "interceptorDir": str(interceptor_dir), "metricsPort": self.node_metrics_port,
                  # the chart's 30 s is for clusters; here a ComputeNode change should show within seconds
                  "reportInterval": 2})
        if self.use_allocator:
            n["allocatorAddress"] = f"127.0.0.1:{self._allocator_grpc}"
            # host processes have no projected ServiceAccount token: the allocator runs --insecure-dev here
            # (caller authentication is tested in tests/security/test_sec_auth_*.py)
            n.pop("allocatorTokenFile", None)
            n.pop("allocatorCAFile", None)
        self.configs["node"] = self._write("node.yaml", node_cfg)

        dra_cfg = yaml.safe_load(node_cm["data"]["dra.yaml"])
        d = dra_cfg["node"]["dra"]
        d.update({"pluginsRegistry": str(kubelet / "plugins_registry"), "pluginDir": str(self.dra_plugin_dir),
                  "interceptorHostDir": str(interceptor_dir)})
        self.configs["dra"] = self._write("dra.yaml", dra_cfg)

        certs = self._certs()
        self.webhook_port = free_port()
        w = comps["webhook"]["webhook"]
        w.update({"certFile": str(certs.cert), "keyFile": str(certs.key), "listen": f"127.0.0.1:{self.webhook_port}",
                  "kubeconfig": str(self.cluster.kubeconfig)})
        w.pop("failurePolicy", None)  # a chart value for the WebhookConfiguration, not a server setting
        w.pop("allocatorTokenFile", None)  # no projected token for a host process (allocator: --insecure-dev)
        w.pop("allocatorCAFile", None)
        w["schedulerName"] = self.scheduler_name
        # the allocator and node agent run with the admin kubeconfig here, so that identity (not the chart's
        # ServiceAccounts) is the one the webhook lets write hcs.io/assignment records
        who = self.rest.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        w["assignmentWriters"] = [who["status"]["userInfo"]["username"]]
        w["nodeAssignmentWriters"] = []
        self.configs["webhook"] = self._write("webhook.yaml", comps["webhook"])
        self.configs["webhook-ca"] = certs.ca

        self.configs["scheduler"] = self._write("kube-scheduler.yaml", self._scheduler_config(comps))
        if self.use_allocator:
            a = comps["allocator"]
            # the Lease goes to the session namespace (the chart's is the release namespace)
            a["allocator"].update({"grpcAddress": f"127.0.0.1:{self._allocator_grpc}",
                                   "extenderAddress": f"127.0.0.1:{self._allocator_extender}",
                                   "namespace": self.namespace, "kubeconfig": str(self.cluster.kubeconfig),
                                   # one replica on a loaded 2-core CI box: a late renewal must not drop the
                                   # leadership mid-scenario ("this replica is not the leader")
                                   "leaseSeconds": 60})
            srv, _client = self._extender_certs()
            a["allocator"]["extender"] = {"tls": {"certFile": str(srv.cert), "keyFile": str(srv.key),
                                                  "clientCAFile": str(srv.ca), "allowedSubjects": ["hcs-scheduler"]}}
            self.configs["allocator"] = self._write("allocator.yaml", a)
        self.device_classes = helm_chart.find(docs, "DeviceClass")

    _allocator_grpc: int = 0
    _allocator_extender: int = 0

    def _write(self, name: str, data: Mapping[str, Any]) -> Path:
        path = self.root / "config" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
        return path

    def _certs(self) -> Any:
        from hcs.webhook.certs import generate_certs

        return generate_certs(self.root / "tls", ("127.0.0.1", "localhost"), days=2)

    def _extender_certs(self) -> Any:
        """The extender's serving pair and the scheduler's client pair (CN hcs-scheduler), one CA."""
        from hcs.webhook.certs import generate_certs

        if getattr(self, "_ext_certs", None) is None:
            d = self.root / "extender-tls"
            srv = generate_certs(d, ("127.0.0.1", "localhost"), days=2, name="extender")
            client = generate_certs(d, ("hcs-scheduler",), days=2, name="scheduler-client", ca=srv,
                                    usage="clientAuth")
            self._ext_certs = (srv, client)
        return self._ext_certs

    def _scheduler_config(self, comps: Mapping[str, Any]) -> dict[str, Any]:
        kubeconfig = str(self.cluster.dir / "config" / "scheduler.kubeconfig")
        if not Path(kubeconfig).exists():
            kubeconfig = str(self.cluster.kubeconfig)
        if self.use_allocator:
            cfg = dict(comps["kube-scheduler"])
            srv, client = self._extender_certs()
            for ext in cfg.get("extenders", []):
                ext["urlPrefix"] = f"https://127.0.0.1:{self._allocator_extender}/scheduler"
                ext["enableHTTPS"] = True
                ext["tlsConfig"] = {"certFile": str(client.cert), "keyFile": str(client.key), "caFile": str(srv.ca)}
            for prof in cfg.get("profiles", []):
                prof["schedulerName"] = self.scheduler_name
        else:
            # Chart with scheduler.enabled=false renders no scheduler; the same profile without the extender.
            cfg = {"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
                   "profiles": [{"schedulerName": self.scheduler_name, "pluginConfig": [{
                       "name": "NodeResourcesFit",
                       "args": {"ignoredResources": ["ai.compute/vram", "ai.compute/tflops-fp16"]}}]}]}
        cfg["leaderElection"] = {"leaderElect": False}  # one replica here; the shared cluster's leases stay clean
        cfg["clientConnection"] = {"kubeconfig": kubeconfig}
        return cfg

    # ------------------------------------------------------------------ start / stop

    def up(self) -> Harness:
        # HCS_E2E_ALLOCATOR=0 forces the chart's scheduler.enabled=false rendering (node-local placement)
        self.use_allocator = os.environ.get("HCS_E2E_ALLOCATOR", "1") != "0" and allocator_available()
        if self.use_allocator:
            self._allocator_grpc, self._allocator_extender = free_port(), free_port()
        self.render()
        self.profile.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROFILE, self.profile)
        self.faults.write_text("")
        self._ascend_driver_root()
        self._remove_leftovers()
        self._namespace()
        self._apply_device_classes()
        self._wipe_node_objects()
        if self.use_allocator:
            self.start("allocator")
        self.start("node")
        self.start("dra")
        self.start("webhook")
        self.start("scheduler")
        self._register_webhook()
        self.wait_ready()
        return self

    def command(self, name: str) -> list[str]:
        hcs = [str(HCS_BIN), "--log-level=debug"]
        if name == "node":
            return [*hcs, "node", f"--config={self.configs['node']}", f"--node-name={self.node}",
                    f"--kubeconfig={self.cluster.kubeconfig}", "--install-crd"]
        if name == "dra":
            return [str(PYTHON), "-m", "hcs.node.dra", f"--config={self.configs['dra']}", f"--node-name={self.node}",
                    f"--kubeconfig={self.cluster.kubeconfig}", "--log-level=debug", "--simulated"]
        if name == "webhook":
            return [*hcs, "webhook", f"--config={self.configs['webhook']}"]
        if name == "allocator":
            # --insecure-dev: the agents here are host processes without a ServiceAccount token (see render)
            return [*hcs, "allocator", f"--config={self.configs['allocator']}", "--insecure-dev"]
        if name == "scheduler":
            port = free_port()
            return [str(self.tool("kube-scheduler")), f"--config={self.configs['scheduler']}",
                    f"--secure-port={port}", "--bind-address=127.0.0.1",
                    f"--cert-dir={self.root / 'scheduler-certs'}", "--v=2"]
        raise KeyError(name)

    def start(self, name: str) -> Proc:
        old = self.procs.get(name)
        if old is not None and old.alive:
            raise HarnessError(f"{name} is already running (pid {old.pid})")
        proc = Proc(name, self.command(name), self._env(), self.root / "logs" / f"{name}.log").start()
        self.procs[name] = proc
        return proc

    def down(self) -> None:
        with contextlib.suppress(Exception):
            self._unregister_webhook()
        with contextlib.suppress(Exception):
            # pods first, while the plugins still run: the kubelet unprepares claims through the DRA plugin
            self.rest.request("DELETE", f"/api/v1/namespaces/{self.namespace}")
            wait_for(lambda: not self._exists(f"/api/v1/namespaces/{self.namespace}"), 90,
                     f"namespace {self.namespace} to go")
        for name in ("scheduler", "webhook", "dra", "node", "allocator"):
            p = self.procs.get(name)
            if p is not None:
                p.stop()
        with contextlib.suppress(Exception):
            self._wipe_node_objects()
        if self.created_ascend_root:
            shutil.rmtree(ASCEND_DRIVER_ROOT, ignore_errors=True)
            with contextlib.suppress(OSError):
                ASCEND_DRIVER_ROOT.parent.rmdir()  # /usr/local/Ascend, only if we made it and it is empty

    # ------------------------------------------------------------------ cluster objects

    def _ascend_driver_root(self) -> None:
        """The Ascend driver directory the node agent mounts into Ascend containers. The agent only mounts
        host paths that exist; this host has no Ascend driver, so a stand-in with a marker file is made
        (removed again by ``down`` when we created it)."""
        if not ASCEND_DRIVER_ROOT.exists():
            (ASCEND_DRIVER_ROOT / "lib64").mkdir(parents=True)
            self.created_ascend_root = True
        marker = ASCEND_DRIVER_ROOT / "version.info"
        if not marker.exists():
            marker.write_text("Version=hcs-e2e-simulated\n")

    def _remove_leftovers(self) -> None:
        """Webhook configurations and namespaces of earlier sessions that could not clean up (API server
        restarted under them, SIGKILL). One e2e session per cluster at a time (the node is shared)."""
        for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            with contextlib.suppress(KubeError):
                items = self.rest.request("GET", f"/apis/admissionregistration.k8s.io/v1/{plural}").get("items") or []
                for item in items:
                    n = item["metadata"]["name"]
                    if n.startswith(("hcs-webhook-mutate-e2e-", "hcs-webhook-validate-e2e-")):
                        LOG.info("removing leftover %s %s", plural, n)
                        with contextlib.suppress(KubeError):
                            self.rest.request("DELETE", f"/apis/admissionregistration.k8s.io/v1/{plural}/{n}")
        with contextlib.suppress(KubeError):
            for ns in self.rest.request("GET", "/api/v1/namespaces").get("items") or []:
                n = ns["metadata"]["name"]
                if n.startswith("hcs-e2e-") and "hcs-e2e" in (ns["metadata"].get("labels") or {}):
                    LOG.info("removing leftover namespace %s", n)
                    with contextlib.suppress(KubeError):
                        self.rest.request("DELETE", f"/api/v1/namespaces/{n}")

    def _namespace(self) -> None:
        self.rest.request("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": {"hcs-e2e": self.session}}})
        # pods need the default service account to be admitted
        wait_for(lambda: self._exists(f"/api/v1/namespaces/{self.namespace}/serviceaccounts/default"), 60,
                 f"service account default in {self.namespace}")

    def _exists(self, path: str) -> bool:
        try:
            self.rest.request("GET", path)
            return True
        except KubeError:
            return False

    def _apply_device_classes(self) -> None:
        for dc in self.device_classes:
            body = {"apiVersion": dc["apiVersion"], "kind": dc["kind"],
                    "metadata": {"name": dc["metadata"]["name"], "labels": dc["metadata"].get("labels", {})},
                    "spec": dc["spec"]}
            path = f"/apis/resource.k8s.io/v1/deviceclasses/{dc['metadata']['name']}"
            try:
                self.rest.request("GET", path)
            except KubeError:
                self.rest.request("POST", "/apis/resource.k8s.io/v1/deviceclasses", body=body)

    def _wipe_node_objects(self) -> None:
        """ResourceSlices of our driver on this node and this node's ComputeNode (left by a crashed run)."""
        with contextlib.suppress(KubeError):
            data = self.rest.request("GET", SLICES, query={"fieldSelector": f"spec.nodeName={self.node}"})
            for s in data.get("items") or []:
                if s["spec"].get("driver") == DRA_DRIVER:
                    with contextlib.suppress(KubeError):
                        self.rest.request("DELETE", f"{SLICES}/{s['metadata']['name']}")
        with contextlib.suppress(KubeError):
            self.rest.request("DELETE", f"{COMPUTENODES}/{self.node}")

    def _register_webhook(self) -> None:
        import base64

        from hcs.webhook.manifests import webhook_configurations

        ca = base64.b64encode(self.configs["webhook-ca"].read_bytes()).decode()
        docs = webhook_configurations(ca_bundle=ca, url=f"https://127.0.0.1:{self.webhook_port}", failure_policy="Fail",
                                      name_suffix=f"-e2e-{self.session}",
                                      namespace_selector={"matchLabels": {"hcs-e2e": self.session}})
        for doc in docs:
            plural = "mutatingwebhookconfigurations" if doc["kind"].startswith("Mutating") else \
                "validatingwebhookconfigurations"
            self.rest.request("POST", f"/apis/admissionregistration.k8s.io/v1/{plural}", body=doc)
        self.webhook_names = [(d["kind"], d["metadata"]["name"]) for d in docs]

    webhook_names: list[tuple[str, str]] = field(default_factory=list)
    device_classes: list[dict[str, Any]] = field(default_factory=list)

    def _unregister_webhook(self) -> None:
        for kind, name in self.webhook_names:
            plural = ("mutatingwebhookconfigurations" if kind.startswith("Mutating")
                      else "validatingwebhookconfigurations")
            with contextlib.suppress(KubeError):
                self.rest.request("DELETE", f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}")

    # ------------------------------------------------------------------ readiness

    def _failed(self, name: str) -> str:
        p = self.procs[name]
        return f"\n--- {name} log ({p.log}) ---\n{p.tail()}"

    def _check_alive(self, name: str) -> None:
        p = self.procs[name]
        if not p.alive:
            rc = p.popen.returncode if p.popen is not None else "?"
            raise HarnessError(f"{name} exited (rc {rc}){self._failed(name)}")

    def slot_allocatable(self) -> int:
        n = self.rest.request("GET", f"/api/v1/nodes/{self.node}")
        return int(n["status"].get("allocatable", {}).get(SLOT, "0"))

    def wait_device_plugin(self, timeout: float = 90) -> None:
        def ready() -> bool:
            self._check_alive("node")
            return self.slot_allocatable() > 0

        wait_for(ready, timeout, f"{SLOT} allocatable on node {self.node}", on_timeout=lambda: self._failed("node"))

    def slices(self) -> list[dict[str, Any]]:
        data = self.rest.request("GET", SLICES, query={"fieldSelector": f"spec.nodeName={self.node}"})
        return [s for s in data.get("items") or [] if s["spec"].get("driver") == DRA_DRIVER]

    def wait_dra(self, timeout: float = 90) -> None:
        def ready() -> bool:
            self._check_alive("dra")
            return bool(self.slices()) and (self.dra_plugin_dir / "dra.sock").exists()

        wait_for(ready, timeout, f"ResourceSlices of {DRA_DRIVER} on {self.node}",
                 on_timeout=lambda: self._failed("dra"))

    def webhook_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.configs["webhook-ca"]))
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.webhook_port}/readyz", context=ctx, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_ready(self) -> None:
        self.wait_device_plugin()
        self.wait_dra()

        def webhook() -> bool:
            self._check_alive("webhook")
            return self.webhook_ready()

        wait_for(webhook, 60, "webhook /readyz", on_timeout=lambda: self._failed("webhook"))
        wait_for(lambda: self._exists(f"{COMPUTENODES}/{self.node}"), 60, f"ComputeNode {self.node}",
                 on_timeout=lambda: self._failed("node"))
        time.sleep(1.0)
        self._check_alive("scheduler")
        if self.use_allocator:
            self._check_alive("allocator")

    # ------------------------------------------------------------------ faults

    def set_faults(self, lines: Sequence[str]) -> None:
        """Replace the simulated drivers' fault file (write temp + rename: the libraries re-read it)."""
        tmp = self.faults.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp, self.faults)

    # ------------------------------------------------------------------ allocator sync points

    def _allocator(self) -> Any:
        import grpc

        from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg

        channel = grpc.insecure_channel(f"127.0.0.1:{self._allocator_grpc}")
        return channel, pbg.AllocatorStub(channel)  # type: ignore[no-untyped-call]

    def allocator_holds(self) -> list[str]:
        """Pods of the session namespace the allocator still reserves devices for on this node."""
        from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb

        channel, stub = self._allocator()
        try:
            resp = stub.GetNodeAssignments(pb.GetNodeAssignmentsRequest(node=self.node), timeout=10)
        finally:
            channel.close()
        return [a.pod.name for a in resp.assignments if a.pod.namespace == self.namespace]

    def wait_allocator_released(self, timeout: float = 300) -> None:
        """Deleted pods' reservations are freed by the allocator's sync loop (asynchronously): wait for it,
        so the next scenario starts from free devices. Without the allocator the node agent's local policy
        frees them when the kubelet's pod-resources no longer list the pod: wait for its ComputeNode to
        report nothing allocated."""
        if not self.use_allocator:
            wait_for(lambda: int(self.computenode().get("status", {}).get("vramAllocatedBytes", 0)) == 0, timeout,
                     "the node agent to release the session's devices (ComputeNode vramAllocatedBytes 0)",
                     interval=1.0)
            return
        wait_for(lambda: not self.allocator_holds(), timeout, "the allocator to release the session's pods",
                 interval=1.0, on_timeout=lambda: f": still holds {self.allocator_holds()}")

    def allocator_proposal(self, vram_bytes: int, vendors: Sequence[str] = ()) -> list[str]:
        """Devices (``vendor-index``) the allocator would give a one-container request on this node now."""
        from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb

        req = pb.PodRequest(pod=pb.PodRef(uid="hcs-e2e-probe", namespace=self.namespace, name="probe"),
                            containers=[pb.ContainerRequest(container="main", vram_bytes=vram_bytes)],
                            constraints=pb.Constraints(vendors=list(vendors)))
        channel, stub = self._allocator()
        try:
            resp = stub.Explain(pb.ExplainRequest(request=req, nodes=[self.node]), timeout=10)
        finally:
            channel.close()
        return [f"{d.vendor}-{d.index}" for v in resp.verdicts if v.fits for c in v.proposal for d in c.devices]

    def computenode(self) -> dict[str, Any]:
        result: dict[str, Any] = self.rest.request("GET", f"{COMPUTENODES}/{self.node}")
        return result

    def describe(self) -> str:
        return json.dumps({"root": str(self.root), "namespace": self.namespace, "allocator": self.use_allocator,
                           "logs": {k: str(p.log) for k, p in self.procs.items()},
                           "configs": {k: str(v) for k, v in self.configs.items()}}, indent=2)


def main(argv: Sequence[str]) -> int:
    from kubernetes import config as kconfig

    from hcs.testing.cluster import ensure_cluster

    logging.basicConfig(level=logging.INFO)
    if argv[1:] != ["up"]:
        print("usage: e2e/local/harness.py up   (starts HCS against the local cluster until Ctrl-C)", file=sys.stderr)
        return 2
    cluster = ensure_cluster()
    rest = KubeRest(kconfig.new_client_from_config(config_file=str(cluster.kubeconfig)))  # type: ignore[no-untyped-call]
    h = Harness(cluster, rest)
    try:
        h.up()
        print(h.describe(), flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        h.down()
    return 0



def restart_kubelet(timeout: float = 180) -> None:
    """Stop the local cluster's kubelet (SIGTERM through the cluster tool's own ``stop``; containerd and
    the pods keep running) and start it again with ``e2e/cluster/up`` (restarts what is missing)."""
    from hcs.testing.cluster import cluster_layout

    bin_dir = Path(cluster_layout()["bin_dir"])
    if not (bin_dir / "kubelet").exists():
        # `up` would have to build Kubernetes first (tens of minutes) while the node is down
        raise HarnessError(f"not restarting the kubelet: {bin_dir}/kubelet does not exist (the cluster runs binaries "
                           "of another build key; a rebuild is pending). Run e2e/cluster/up until it has built, "
                           "then rerun")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import hcs_cluster as c; "
            "c.stop(c.layout(), 'kubelet')")
    subprocess.run([sys.executable, "-c", code, str(REPO / "e2e" / "cluster")], check=True, timeout=60,
                   capture_output=True, text=True)
    up = subprocess.run([sys.executable, str(REPO / "e2e" / "cluster" / "hcs_cluster.py"), "up"], timeout=timeout,
                        capture_output=True, text=True, check=False)
    if up.returncode != 0:
        raise HarnessError(f"e2e/cluster/up after stopping the kubelet failed ({up.returncode}):\n"
                           f"{up.stdout[-2000:]}{up.stderr[-2000:]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
