"""Standalone runner for the DRA kubelet plugin: ``python -m hcs.node.dra --node-name N [...]``.

``hcs node`` starts the same DraPlugin in-process; this runner exists for tests, benchmarks and
running the DRA half alone. Runs until SIGTERM/SIGINT, then deregisters (slices stay published).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from hcs.config import load_config, section
from hcs.errors import HcsError
from hcs.logs import setup_logging
from hcs.node.dra.config import DraConfig
from hcs.node.dra.plugin import DraPlugin
from hcs.signals import StopSignals

log = logging.getLogger("hcs.node.dra")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hcs.node.dra", description="HCS DRA kubelet plugin")
    p.add_argument("--config", help="HCS YAML config; the node.dra section is used")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""), help="this node (env NODE_NAME)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: in-cluster config")
    p.add_argument("--plugins-registry", help="kubelet plugin registration dir")
    p.add_argument("--plugin-dir", help="driver data dir (dra.sock, checkpoint)")
    p.add_argument("--cdi-dir", help="CDI spec dir")
    p.add_argument("--simulated", action="store_true",
                   help="simulated drivers: host indices in *_VISIBLE_DEVICES (no device-node isolation)")
    p.add_argument("--no-publish", action="store_true", help="do not publish ResourceSlices")
    p.add_argument("--no-health", action="store_true", help="do not watch device health")
    p.add_argument("--no-claim-cache", action="store_true",
                   help="read every claim from the API server at prepare (no watch-fed claim cache)")
    p.add_argument("--log-level", default=None)
    return p


def make_config(args: argparse.Namespace) -> DraConfig:
    raw = load_config(args.config)
    node = section(raw, "node", source=args.config or "config")
    dra = section(node, "dra", source=f"{args.config or 'config'} node")
    cfg = DraConfig.from_mapping(dra, node_name=args.node_name, source=f"{args.config or 'config'} node.dra")
    over: dict[str, Any] = {}
    # the node agent's compute settings (node.computeDir / node.computePolicy, hcs/node/config.py)
    from hcs.node.config import node_config

    ncfg = node_config({k: node[k] for k in ("computeDir", "computePolicy") if k in node})
    over.update(compute_dir=ncfg.computeDir, compute_policy=ncfg.computePolicy)
    if args.plugins_registry:
        over["plugins_registry"] = args.plugins_registry
    if args.plugin_dir:
        over["plugin_dir"] = args.plugin_dir
    if args.cdi_dir:
        over["cdi_dir"] = args.cdi_dir
    if args.simulated:
        over["device_isolation"] = False
    if args.no_publish:
        over["publish_slices"] = False
    if args.no_claim_cache:
        over["claim_cache"] = False
    return cfg.with_overrides(**over) if over else cfg


def kube_client(kubeconfig: str | None) -> Any:
    # lazy: the kubernetes client takes ~0.5 s to import; --help and bad arguments answer without it
    from kubernetes import config as kconfig

    k: Any = kconfig
    if kubeconfig:
        return k.new_client_from_config(config_file=kubeconfig)
    k.load_incluster_config()
    from kubernetes import client

    return client.ApiClient()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = make_config(args)
    except HcsError as exc:
        print(f"hcs dra: error: {exc}", file=sys.stderr)
        return 2
    # lazy: --help and bad arguments answer without loading the vendor libraries
    from hcs.devices.inventory import discover

    inventory = discover()
    monitor = None
    if not args.no_health and inventory.devices:
        from hcs.devices.health import HealthMonitor

        monitor = HealthMonitor(inventory)
    try:
        api = kube_client(args.kubeconfig)
    except Exception as exc:  # noqa: BLE001 - kubernetes raises several types for a bad kubeconfig
        where = args.kubeconfig or "the in-cluster service account"
        print(f"hcs dra: error: cannot use {where} to reach the API server: {exc}; pass --kubeconfig",
              file=sys.stderr)
        return 2
    plugin = DraPlugin(cfg, inventory, api, health_source=monitor)
    stop = StopSignals()
    plugin.start()
    print(f"ready {cfg.dra_socket}", flush=True)
    stop.wait(stop_timeout_s=20)
    plugin.stop()
    if monitor is not None:
        monitor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
