"""``hcs webhook``: run the admission webhook (or print its WebhookConfigurations)."""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from hcs.config import env_override, load_config, section
from hcs.errors import ConfigError
from hcs.signals import StopSignals
from hcs.webhook.capacity import (
    AllocatorCapacity,
    CachedCapacity,
    ComputeNodeCapacity,
    FallbackCapacity,
    IslandCapacity,
    StaticCapacity,
)
from hcs.webhook.config import Mode, WebhookConfig, webhook_config
from hcs.webhook.kube import ClusterView
from hcs.webhook.manifests import webhook_configurations
from hcs.webhook.review import Admission
from hcs.webhook.server import WebhookServer

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "webhook",
        help="run the admission webhook (validate and mutate ai.compute requests)",
        description="Serve AdmissionReview v1 on /mutate and /validate over HTTPS, plus /healthz, /readyz "
        "and /metrics. Settings come from the 'webhook' section of --config; flags override it.",
    )
    p.add_argument("--config", default=env_override("config"), help="YAML config file (env HCS_CONFIG)")
    p.add_argument("--listen", help="HOST:PORT (default 0.0.0.0:9443)")
    p.add_argument("--cert-file", help="PEM serving certificate (reloaded when it changes)")
    p.add_argument("--key-file", help="PEM private key")
    p.add_argument("--kubeconfig", help="kubeconfig; default: in-cluster, then $KUBECONFIG")
    p.add_argument("--no-kube", action="store_true", help="run without API-server access (no namespace modes, "
                   "image map or DRA templates; the island check then needs webhook.allocatorAddress "
                   "or webhook.largestIsland)")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="cluster-wide mode (namespaces may override "
                   "with the hcs.io/mode label)")
    p.add_argument("--print-configurations", metavar="URL",
                   help="print Mutating/ValidatingWebhookConfiguration YAML for a webhook reachable at URL "
                   "(caBundle from --ca-file) and exit")
    p.add_argument("--ca-file", help="CA certificate for --print-configurations")
    p.add_argument("--failure-policy", default="Fail", choices=["Fail", "Ignore"],
                   help="failurePolicy for --print-configurations")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> WebhookConfig:
    raw = section(load_config(args.config), "webhook", source=str(args.config or "config"))
    if args.listen:
        raw["listen"] = args.listen
    for flag, key in (("cert_file", "certFile"), ("key_file", "keyFile"), ("kubeconfig", "kubeconfig"),
                      ("mode", "mode")):
        value = getattr(args, flag)
        if value:
            raw[key] = value
    return webhook_config(raw, source=str(args.config or "flags"))


def api_client_for(kubeconfig: str) -> Any:
    """A kubernetes ApiClient: explicit kubeconfig, else in-cluster, else $KUBECONFIG / ~/.kube/config."""
    client: Any = importlib.import_module("kubernetes.client")
    config: Any = importlib.import_module("kubernetes.config")
    if kubeconfig:
        if not Path(kubeconfig).is_file():
            raise ConfigError(f"webhook.kubeconfig: {kubeconfig}: no such file")
        return config.new_client_from_config(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    try:
        return config.new_client_from_config()
    except Exception as exc:
        raise ConfigError(f"webhook: no API-server credentials ({exc}); pass --kubeconfig, run in-cluster, "
                          "or use --no-kube") from exc


def build_capacity(cfg: WebhookConfig, api_client: Any) -> IslandCapacity | None:
    """Where the island check gets its answer: fixed ``largestIsland``, else the allocator (falling back
    to ComputeNode objects when it is unreachable and API access exists), else ComputeNode objects.

    The allocator and ComputeNode sources know each island's vendor and node (vendor-pinned pods are
    checked against their vendors' islands, denials say where the island is); a fixed ``largestIsland``
    is one number for every pod. The result is TTL-cached; ``None`` means no source (the check is
    skipped with a warning).
    """
    if cfg.largest_island_bytes is not None:
        return StaticCapacity(cfg.largest_island_bytes)
    inner: IslandCapacity | None = None
    if cfg.allocator_address:
        inner = AllocatorCapacity(cfg.allocator_address, token_file=cfg.allocator_token_file,
                                  ca_file=cfg.allocator_ca_file)
        if api_client is not None:
            inner = FallbackCapacity(inner, ComputeNodeCapacity(api_client), "ComputeNode objects")
        log.info("island capacity from the allocator at %s%s", cfg.allocator_address,
                 " (ComputeNode objects when it is unreachable)" if api_client is not None else "")
    elif api_client is not None:
        inner = ComputeNodeCapacity(api_client)
    return CachedCapacity(inner, cfg.cache_ttl_s) if inner is not None else None


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.print_configurations:
        if not args.ca_file:
            raise ConfigError("--print-configurations needs --ca-file (the CA that signed the serving certificate)")
        ca = base64.b64encode(Path(args.ca_file).read_bytes()).decode()
        docs = webhook_configurations(url=args.print_configurations, ca_bundle=ca,
                                      failure_policy=args.failure_policy)
        yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
        return 0
    if not cfg.cert_file or not cfg.key_file:
        raise ConfigError("webhook: a serving certificate is required: pass --cert-file and --key-file "
                          "(or webhook.certFile / webhook.keyFile); the API server only calls webhooks over TLS")
    api_client = None if args.no_kube else api_client_for(cfg.kubeconfig)
    capacity = build_capacity(cfg, api_client)
    admission = Admission(cfg, capacity, ClusterView(cfg, api_client))
    server = WebhookServer(cfg.host, cfg.port, cfg.cert_file, cfg.key_file, admission,
                           cert_check_s=cfg.cert_check_s, max_body_bytes=cfg.max_body_bytes)

    stop = StopSignals()
    log.info("webhook config: %s", json.dumps({"mode": cfg.mode.value, "port": server.port,
                                                "allocatorFailurePolicy": cfg.allocator_failure.value,
                                                "imageMap": cfg.image_map or None,
                                                "kube": api_client is not None}))
    claims = None
    if api_client is not None:  # DRA mode's ResourceClaimTemplates, from admitted pods (not from /mutate)
        # lazy: only in DRA mode with an API server
        from hcs.webhook.claims import ClaimTemplateController

        claims = ClaimTemplateController(cfg, api_client).start()
    server.start()
    try:
        stop.wait(stop_timeout_s=20)
    finally:
        server.stop()
        if claims is not None:
            claims.stop()
    return 0
