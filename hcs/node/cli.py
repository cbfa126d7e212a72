"""``hcs node``: run the per-node agent (DaemonSet entry point)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
from typing import Any

from hcs.config import load_config, section
from hcs.errors import ConfigError
from hcs.kube import KubeError, KubeRest
from hcs.signals import StopSignals

log = logging.getLogger(__name__)

#: Seconds a stop may take before the agent prints every thread's stack and exits (exit status 1).
STOP_TIMEOUT_S = 20

_FLAGS = {
    # flag -> NodeConfig field
    "device_plugin_dir": "devicePluginDir",
    "pod_resources_socket": "podResourcesSocket",
    "state_dir": "stateDir",
    "quota_dir": "quotaDir",
    "shm_dir": "shmDir",
    "cdi_dir": "cdiDir",
    "interceptor_dir": "interceptorDir",
    "metrics_port": "metricsPort",
    "report_interval": "reportInterval",
    "assignment_source": "assignmentSource",
    "allocator_address": "allocatorAddress",
    "slots_per_device": "slotsPerDevice",
    "cpu_affinity": "cpuAffinity",
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("node", help="run the node agent (device plugin, ComputeNode, health, metrics)",
                              description="Run the HCS node agent: kubelet device plugin for the slot "
                              "resource, ComputeNode reporter, health watch and /metrics.")
    p.add_argument("--config", help="HCS YAML config file (section `node`)")
    p.add_argument("--node-name", default=None, help="this node's name (env NODE_NAME, default: hostname)")
    p.add_argument("--kubeconfig", default=None,
                   help="kubeconfig for the API server (default: in-cluster, or none outside a cluster)")
    p.add_argument("--no-api-server", action="store_true",
                   help="run without the API server (no ComputeNode, local policy only sees no pods)")
    p.add_argument("--install-crd", action="store_true", help="create/update the ComputeNode CRD first")
    p.add_argument("--device-plugin-dir", help="kubelet device-plugins dir (/var/lib/kubelet/device-plugins)")
    p.add_argument("--pod-resources-socket", help="kubelet pod-resources socket")
    p.add_argument("--state-dir", help="agent state dir (/var/lib/hcs/node)")
    p.add_argument("--quota-dir", help="host dir for per-container quota files")
    p.add_argument("--shm-dir", help="host dir for per-pod shared accounting dirs")
    p.add_argument("--cdi-dir", help="CDI spec dir (/var/run/cdi)")
    p.add_argument("--interceptor-dir", help="host dir holding libhcs_interceptor.so ('' disables)")
    p.add_argument("--metrics-port", type=int, help="/metrics port (0 disables)")
    p.add_argument("--report-interval", type=float, help="ComputeNode report interval, seconds")
    p.add_argument("--assignment-source", choices=("local", "allocator"), help="who decides devices per pod")
    p.add_argument("--allocator-address", help="host:port of the allocator gRPC API")
    p.add_argument("--slots-per-device", type=int, help="slot IDs advertised per physical device")
    p.add_argument("--cpu-affinity", help="pin the agent to CPUs: 'auto' (one CPU), a list like '3' or '0-1,6', "
                   "or '' (default: not pinned); lowers the kubelet calls' tail, use a CPU free of workloads")
    p.add_argument("--dra", action="store_true",
                   help="also run the DRA kubelet plugin in this process (on by default when the config has a "
                   "node.dra section; needs the API server)")
    p.add_argument("--no-device-plugin", action="store_true",
                   help="do not serve the kubelet device plugin (DRA-only nodes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: `hcs <command> --help` and the other commands start without loading this stack
    from hcs.devices.health import HealthMonitor
    from hcs.devices.inventory import discover
    from hcs.node.affinity import pin_process
    from hcs.node.agent import NodeAgent
    from hcs.node.computenode import IslandInfo, install_crd, report_inventory_error
    from hcs.node.config import node_config

    raw = load_config(args.config)
    source = args.config or "config"
    node_section = section(raw, "node", source=source)
    dra_section = node_section.pop("dra", None)
    overrides: dict[str, Any] = {field: getattr(args, flag) for flag, field in _FLAGS.items()}
    if args.no_device_plugin:
        overrides["devicePlugin"] = False
    overrides["nodeName"] = args.node_name or os.environ.get("NODE_NAME") or raw.get("node", {}).get(
        "nodeName") or socket.gethostname()
    if args.kubeconfig:
        overrides["kubeconfig"] = args.kubeconfig
    config = node_config(node_section, source=source, **overrides)
    pin_process(config.cpuAffinity)  # before any thread starts, so every thread inherits it
    rest = None
    if not args.no_api_server:
        rest = _kube(config.kubeconfig)
        if rest is not None and args.install_crd:
            try:
                install_crd(rest)
            except KubeError as exc:  # the API server may come later: keep serving the kubelet
                log.warning("could not install the ComputeNode CRD (%s); continuing", exc)
    try:
        inventory = discover()
    except ConfigError as exc:  # a broken node profile / driver setup: say so on the ComputeNode, then exit
        log.error("cannot enumerate this node's devices: %s", exc)
        if rest is not None:
            try:
                report_inventory_error(rest, config.nodeName, str(exc))
            except KubeError as kexc:
                log.warning("could not report the error on ComputeNode %s: %s", config.nodeName, kexc)
        raise
    islands = [IslandInfo(i.id, str(i.vendor), str(i.link_type), tuple(i.members), i.min_gbps)
               for i in inventory.islands]
    for lib in inventory.libraries:
        log.info("library %s (%s): %s", lib.library, lib.vendor,
                 f"{lib.device_count} devices" if lib.loaded else f"not loaded: {lib.error}")
    # Latency: a kubelet call waiting for the GIL behind the health poller would wait up to the
    # default 5 ms switch interval; 0.5 ms keeps Allocate close to its own cost.
    sys.setswitchinterval(0.0005)
    stop = StopSignals()
    health = None
    if inventory.devices:
        try:
            from hcs.devices.workload import start_workload_signals

            # HCS_WORKLOAD_PROBES: ebpf (uprobes; needs bpftrace + privilege, else the fallback),
            # interceptor (default: the interceptor's synchronise timing in node.computeDir), off
            workload = start_workload_signals([(d.key, d.model) for d in inventory.devices],
                                              uuids={d.key: d.uuid for d in inventory.devices},
                                              compute_dir=config.computeDir)
            health = HealthMonitor(inventory, poll_interval_s=config.healthPollInterval, workload=workload)
        except Exception as exc:  # a vendor library that enumerates but cannot be watched
            log.error("health monitoring unavailable (%s); devices stay as discovered", exc)
    dra = None
    if args.dra or dra_section is not None:
        dra = _dra_plugin(dra_section or {}, config, inventory.devices, rest, source)
    agent = NodeAgent(config, inventory.devices, islands=islands, health=health, kube=rest, dra=dra).start()
    # Start-up objects (modules, protobuf descriptors, the kubernetes client) live for the whole run:
    # move them out of the collector's reach so a full collection never stalls a kubelet call.
    gc.freeze()
    stop.wait(stop_timeout_s=STOP_TIMEOUT_S)
    agent.stop()
    return 0


def _dra_plugin(dra_section: Any, config: Any, devices: Any, rest: Any, source: str) -> Any:
    """The DRA kubelet plugin for this node, started by the agent beside its device plugin."""
    # lazy: only nodes that run the DRA driver load it
    from hcs.node.dra.config import DraConfig
    from hcs.node.dra.plugin import DraPlugin

    if not isinstance(dra_section, dict):
        raise ConfigError(f"{source}: field 'node.dra' must be a mapping, got {type(dra_section).__name__}")
    if rest is None:
        raise ConfigError(f"{source}: node.dra needs the API server (ResourceClaims, ResourceSlices); pass "
                          "--kubeconfig or run in a cluster, or drop the node.dra section")
    cfg = DraConfig.from_mapping(dra_section, node_name=config.nodeName, source=f"{source} node.dra")
    if not config.deviceIsolation:
        cfg = cfg.with_overrides(device_isolation=False)
    cfg = cfg.with_overrides(compute_dir=config.computeDir, compute_policy=config.computePolicy)
    return DraPlugin(cfg, devices, rest.api_client)


def _kube(kubeconfig: str) -> Any:
    # lazy: the kubernetes client takes ~0.5 s to import; not needed with --no-api-server
    from kubernetes import client, config


    try:
        if kubeconfig:
            api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api = client.ApiClient()
        else:
            log.warning("no --kubeconfig and not in a cluster: running without the API server")
            return None
    except Exception as exc:
        raise ConfigError(f"kubeconfig {kubeconfig or '(in-cluster)'}: cannot load ({exc}); "
                          "pass a valid --kubeconfig or --no-api-server") from exc
    return KubeRest(api)
